"""The step's throughput features: gradient all-reduce buckets, the fixed loss scale of the zoo's recipe, host
reads at log/sync steps only, and the data-sink loop (its plan on every device, its loop through a CPU
stand-in for ``mindspore.data_sink``)."""
import glob
import json
import logging
import os
import re
import subprocess

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from fcn8s.config import ConfigError, load_config
from fcn8s.errors import UserError
from fcn8s.grad_buckets import MB, assign_buckets, plan_buckets, set_backend_fusion
from fcn8s.loss_scale import FixedLossScaler, build_loss_scaler
from fcn8s.losses import SegmentationCrossEntropy
from fcn8s.sink import sink_plan
from fcn8s.trainer import make_train_step
from tests.conftest import HEAVY, PYTHON, REPO, SMALL_FC_CHANNELS, SMALL_NETWORK


def test_buckets_fill_in_backward_order_and_a_large_gradient_is_a_bucket_of_its_own():
    sizes = [10, 10, 100, 10, 10, 10]
    assert plan_buckets(sizes, 25) == [[5, 4], [3], [2], [1, 0]]
    assert plan_buckets(sizes, 0) == [[5, 4, 3, 2, 1, 0]]  # 0: one bucket
    assert plan_buckets(sizes, 1000) == [[5, 4, 3, 2, 1, 0]]


@pytest.mark.parametrize("mode, device, fused", [("auto", "Ascend", True), ("auto", "GPU", True),
                                                  ("auto", "CPU", False), ("fused", "CPU", True),
                                                  ("unfused", "Ascend", False)])
def test_backend_fusion_is_on_for_accelerators_and_off_on_cpu_unless_asked(mode, device, fused):
    """MindSpore's kernel-by-kernel backends run their AllReduce fusion pass only with comm_fusion enabled in
    the parallel context (off by default): ``auto`` enables it on Ascend and GPU."""
    from mindspore.parallel._auto_parallel_context import auto_parallel_context

    try:
        assert set_backend_fusion(mode, device) is fused
        assert auto_parallel_context().get_enable_all_reduce_fusion() is fused
    finally:
        ms.reset_auto_parallel_context()


@HEAVY
def test_the_default_buckets_of_fcn8s_send_conv7_and_conv6_early_and_respect_the_size():
    """25 MB (dist.bucket_mb's default) on the tutorial's network: the score layers and conv7 go out first,
    conv6 (411 MB) alone, then the VGG backbone in buckets of at most 25 MB."""
    from fcn8s.model import FCN8s

    params = FCN8s(21, "matmul").trainable_params()
    count = assign_buckets(params, 25.0)
    by_bucket = {}
    for param in params:
        by_bucket.setdefault(param.comm_fusion, []).append(param)
    assert sorted(by_bucket) == list(range(1, count + 1)) and count > 4
    for members in by_bucket.values():
        size = sum(4 * int(np.prod(p.shape)) for p in members)
        assert size <= 25 * MB or len(members) == 1, [p.name for p in members]
    conv6 = next(p for p in params if p.name.startswith("conv6") and len(p.shape) > 1)
    assert by_bucket[conv6.comm_fusion] == [conv6]
    assert by_bucket[1][-1].name.startswith(("score", "upscore", "conv7"))  # the last layers are bucket 1
    first_conv = params[0]
    assert first_conv.comm_fusion == count  # the first layer's gradient, ready last, is in the last bucket


def _tiny_step(scaler):
    net = nn.SequentialCell(nn.Conv2d(3, 4, 3, has_bias=True), nn.ReLU(), nn.Conv2d(4, 21, 1, has_bias=True))
    optimizer = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    step = make_train_step(net, SegmentationCrossEntropy(21), optimizer, scaler, jit=False)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 21, (2, 8, 8)).astype(np.int32))
    return net, optimizer, step, images, labels


@pytest.mark.parametrize("loss_scale_type", ["dynamic", "fixed"])
def test_an_overflow_skips_the_update_only_with_dynamic_loss_scaling(loss_scale_type):
    """A non-finite loss handed to the step's second half (as the overflow drill does): dynamic scaling skips
    the update and halves the scale; the fixed scale (zoo recipe, no overflow check) applies it and keeps 1024.
    Both report the step as not finite, count it on the device, and move the schedule on."""
    cfg = load_config(None, [f"loss_scale.type={loss_scale_type}", "loss_scale.init_loss_scale=1024"]).loss_scale
    scaler = build_loss_scaler(cfg)
    assert isinstance(scaler, FixedLossScaler) == (loss_scale_type == "fixed")
    net, optimizer, step, images, labels = _tiny_step(scaler)
    before = [p.asnumpy().copy() for p in net.trainable_params()]
    scaled_loss, grads = step.local(images, labels)
    loss, finite, scale, _lr = step.apply(ms.Tensor(np.inf, ms.float32), grads)
    changed = any(not np.array_equal(b, p.asnumpy()) for b, p in zip(before, net.trainable_params()))
    assert not bool(finite.asnumpy()) and not np.isfinite(loss.asnumpy())
    assert changed == (loss_scale_type == "fixed")
    assert float(scale.asnumpy()) == (1024.0 if loss_scale_type == "fixed" else 512.0)
    assert int(optimizer.global_step.asnumpy()[0]) == 1
    assert step.stats.read() == (1, 1)
    assert np.isfinite(scaled_loss.asnumpy())


def test_the_zoo_recipe_config_is_the_published_one_and_the_tutorial_stays_the_default():
    zoo = load_config("configs/voc_fcn8s_zoo.yaml")
    assert (zoo.train.batch_size, zoo.train.lr, zoo.train.epochs, zoo.model.amp_level) == (32, 0.015, 500, "O3")
    assert (zoo.loss_scale.type, zoo.loss_scale.init_loss_scale) == ("fixed", 1024)
    tutorial = load_config("configs/voc_fcn8s.yaml")
    assert tutorial.loss_scale.type == "dynamic" and tutorial.train.batch_size != 32


@pytest.mark.parametrize("overrides, message", [
    (["loss_scale.type=static"], "loss_scale.type: must be one of dynamic, fixed"),
    (["train.sink_size=4", "train.log_interval=10"], "train.log_interval (10) must be a multiple of train.sink_size"),
    (["train.sink_size=5", "train.log_interval=5", "train.checkpoint_interval=12"], "train.checkpoint_interval (12)"),
    (["dist.bucket_mb=-1"], "dist.bucket_mb: must be >= 0"),
])
def test_bad_throughput_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def _sink_cfg(*overrides):
    return load_config(None, ["train.log_interval=10", "train.checkpoint_interval=500", *overrides])


@pytest.mark.parametrize("device, overrides, steps_per_epoch, distributed, expected, logged", [
    ("Ascend", [], 100, True, 0, "data sink: off"),
    ("CPU", ["train.sink_size=10"], 100, False, 0, "data sink: not on CPU"),
    ("Ascend", ["train.sink_size=10", "train.straggler_intervals=0"], 100, True, 10, "10 steps per call"),
    ("GPU", ["train.sink_size=10"], 100, False, 10, "10 steps per call"),
])
def test_the_sink_plan_is_logged(caplog, device, overrides, steps_per_epoch, distributed, expected, logged):
    with caplog.at_level(logging.INFO, logger="fcn8s.sink"):
        assert sink_plan(_sink_cfg(*overrides), device, steps_per_epoch, distributed) == expected
    assert logged in caplog.text


@pytest.mark.parametrize("overrides, steps_per_epoch, message", [
    (["train.sink_size=10", "train.straggler_intervals=0"], 95, "must divide the steps per epoch (95)"),
    (["train.sink_size=10"], 100, "needs train.straggler_intervals=0"),
])
def test_a_sink_that_cannot_work_is_refused_before_training(overrides, steps_per_epoch, message):
    with pytest.raises(UserError, match=re.escape(message)):
        sink_plan(_sink_cfg(*overrides), "Ascend", steps_per_epoch, distributed=True)


def test_mindspore_has_no_data_sink_on_cpu():
    """Why the CPU runs the per-step loop: mindspore.data_sink refuses the CPU."""
    import mindspore.dataset as ds

    dataset = ds.NumpySlicesDataset({"x": np.ones((4, 1), np.float32)}, shuffle=False)
    with pytest.raises(ValueError, match="supports ascend or gpu device target, but device target is CPU"):
        ms.data_sink(lambda x: x, dataset, sink_size=1)


@pytest.mark.slow
def test_the_host_reads_the_device_only_at_log_steps_and_the_sink_loop_trains_the_same_steps(mindrecord_dir, tmp_path):
    """8 steps, log every 4 (6 steps per epoch): the per-step loop reads the step's outputs after the compile
    step and at steps 4 and 8 only; the sink loop (2 steps per call, across the epoch boundary) reads after its
    first call and at 4 and 8, logs the same losses and ends with the same weights."""
    result = subprocess.run([PYTHON, "-m", "tests.host_sync_worker", mindrecord_dir, str(tmp_path), "2",
                             "train.max_steps=8", "train.log_interval=4", "train.straggler_intervals=0",
                             *SMALL_NETWORK], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    loop, sunk = runs["loop"], runs["sink"]
    assert loop["reads"] == [1, 4, 8]
    assert sunk["reads"] == [2, 4, 8]
    assert loop["losses"] == sunk["losses"] and sorted(loop["losses"]) == ["4", "8"]
    assert loop["checksum"] == sunk["checksum"]
    assert "data sink: 2 steps per call" in result.stderr and "data sink: off" in result.stderr


def _compiled_allreduces(ir_dir):
    """(fusion id, number of inputs) of every AllReduce in rank 0's compiled train-step graph (the graph the
    kernels are built from, after the backend's fusion pass)."""
    graphs = [path for path in glob.glob(os.path.join(ir_dir, "rank_0", "graph_build_*.ir"))
              if "= AllReduce(" in open(path, encoding="utf-8").read()]
    assert len(graphs) == 1, graphs
    text = open(graphs[0], encoding="utf-8").read()
    return [(int(fusion), len(inputs.split(",")))
            for inputs, fusion in re.findall(r"= AllReduce\(([^)]*)\).*?fusion: I64\((\d+)\)", text)]


def _two_rank_job(tmp_path, mindrecord_dir, name, *overrides, env=None):
    """Run a 2-rank small-network job; return its final weights (the checkpoint is deleted) and rank 0's log."""
    out, logs = tmp_path / f"out_{name}", tmp_path / f"logs_{name}"
    result = subprocess.run(["bash", "launch/run_distribute.sh", "2", "configs/cpu_smoke.yaml",
                             f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={out}", "train.max_steps=3",
                             "train.log_interval=1", "train.batch_size=2", "run.tensorboard=false", *SMALL_NETWORK,
                             *overrides],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "LOG_DIR": str(logs), **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(out, "checkpoints", "fcn8s-final.ckpt")
    weights = {name: p.asnumpy() for name, p in ms.load_checkpoint(path).items()}
    os.remove(path)
    return weights, (logs / "rank_0.log").read_text(encoding="utf-8")


@pytest.mark.slow
def test_bucketed_gradients_fuse_to_one_allreduce_per_bucket_and_train_as_one_bucket(mindrecord_dir, tmp_path):
    """Three 2-rank jobs. With ``dist.comm_fusion=fused`` and 1 MB buckets the compiled graph (MindSpore's IR
    dump) has one AllReduce per bucket, holding exactly that bucket's gradients, plus the overflow flag's. On
    CPU fusion is off by default (its AllReduce kernel sums fused buckets wrongly), and 1 MB buckets end with
    the weights of one bucket (``dist.bucket_mb=0``) within 1e-6."""
    from fcn8s.model import FCN8s

    params = FCN8s(21, "matmul", fc_channels=SMALL_FC_CHANNELS).trainable_params()
    expected = assign_buckets(params, 1.0)
    members = {fusion_id: 0 for fusion_id in range(1, expected + 1)}  # gradients per bucket
    for param in params:
        members[param.comm_fusion] += 1
    _, fused_log = _two_rank_job(tmp_path, mindrecord_dir, "fused", "dist.bucket_mb=1", "dist.comm_fusion=fused",
                                 "train.max_steps=1", env={"MS_DEV_SAVE_GRAPHS": "1",
                                                           "MS_DEV_SAVE_GRAPHS_PATH": str(tmp_path / "ir")})
    assert "AllReduce fusion of each bucket: on (dist.comm_fusion fused, CPU)" in fused_log
    assert sorted(_compiled_allreduces(str(tmp_path / "ir"))) == [(0, 1)] + sorted(members.items()) and expected > 3
    one, one_log = _two_rank_job(tmp_path, mindrecord_dir, "one", "dist.bucket_mb=0")
    buckets, buckets_log = _two_rank_job(tmp_path, mindrecord_dir, "buckets", "dist.bucket_mb=1")
    assert "AllReduce fusion of each bucket: off (dist.comm_fusion auto, CPU)" in buckets_log
    assert f"all-reduced in {expected} bucket(s)" in buckets_log and "all-reduced in 1 bucket(s)" in one_log
    assert one.keys() == buckets.keys()
    worst = max(float(np.max(np.abs(one[name] - buckets[name]))) for name in one)
    assert worst <= 1e-6, worst
