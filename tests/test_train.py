"""End-to-end on CPU with real processes: train, checkpoint, evaluate, diverge."""
import json
import math
import re
import os
import shutil

import cv2
import numpy as np
import pytest

import mindspore as ms

from fcn8s.checkpoint import load_weights
from fcn8s.model import FCN8s
from fcn8s.trainer import cosine_lr
from tests.conftest import HEAVY, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module

CONFIG = "configs/cpu_smoke.yaml"


def _overrides(mindrecord_dir, out, *extra):
    return [f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={out}", "train.log_interval=1", *SMALL_NETWORK,
            *extra]


@pytest.fixture(scope="module")
def trained_run(mindrecord_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    result = run_module("fcn8s.train", "--config", CONFIG,
                        *_overrides(mindrecord_dir, out, "train.max_steps=14", "train.checkpoint_interval=5",
                                    "train.keep_checkpoints=1"))
    assert result.returncode == 0, result.stderr[-4000:]
    yield out, result
    shutil.rmtree(out)  # its checkpoints: ~0.4 GB


def test_short_training_run_learns(trained_run):
    out, result = trained_run
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in records] == list(range(1, 15))
    losses = np.array([r["loss"] for r in records])
    assert np.isfinite(losses).all()
    assert losses[-4:].mean() < 0.7 * losses[:2].mean(), losses
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.0005)  # per-step cosine, not constant
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert "[rank 0/1]" in result.stderr and "img/s" in result.stderr
    for name in ("loss", "lr", "loss_scale", "images_per_second"):  # curves written at the end by rank 0
        image = cv2.imread(os.path.join(out, "plots", f"{name}.png"))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_checkpoints_atomic_pruned_and_loadable(trained_run):
    out, _ = trained_run
    ckpt_dir = os.path.join(out, "checkpoints")
    names = sorted(os.listdir(ckpt_dir))
    # keep_checkpoints=1: step 5 was pruned, step 10 kept, plus the final one; no temp files left
    assert names == ["fcn8s-final.ckpt", "fcn8s-final.json", "fcn8s-step00000010.ckpt", "fcn8s-step00000010.json"]
    meta = json.load(open(os.path.join(ckpt_dir, "fcn8s-final.json")))
    assert meta["step"] == 14 and meta["final"] and len(meta["sha256"]) == 64
    params = ms.load_checkpoint(os.path.join(ckpt_dir, "fcn8s-final.ckpt"))
    assert "moments.conv6.0.weight" in params and "loss_scale" in params
    net = FCN8s(21, fc_channels=SMALL_FC_CHANNELS)
    load_weights(net, os.path.join(ckpt_dir, "fcn8s-final.ckpt"))
    np.testing.assert_array_equal(net.score_fr.weight.asnumpy(), params["score_fr.weight"].asnumpy())
    assert os.path.isfile(os.path.join(out, "config.yaml"))


def test_eval_cli_prints_table_and_writes_json(trained_run, mindrecord_dir):
    out, _ = trained_run
    ckpt = os.path.join(out, "checkpoints", "fcn8s-final.ckpt")
    result = run_module("fcn8s.eval", "--config", CONFIG, "--ckpt", ckpt, f"data.mindrecord_dir={mindrecord_dir}",
                        "eval.image_size=96", "eval.batch_size=4", *SMALL_NETWORK)
    assert result.returncode == 0, result.stderr[-4000:]
    for line in ("pixel accuracy", "mean accuracy", "mean IoU", "frequency weighted IoU", "background"):
        assert line in result.stdout
    metrics = json.load(open(os.path.join(out, "checkpoints", "fcn8s-final.eval.json")))
    assert metrics["pixels"] > 0 and 0 <= metrics["mean_iou"] <= 1 and len(metrics["class_iou"]) == 21
    assert metrics["checkpoint"] == os.path.abspath(ckpt)


def test_eval_missing_checkpoint_is_a_clear_error(mindrecord_dir, tmp_path):
    result = run_module("fcn8s.eval", "--config", CONFIG, "--ckpt", str(tmp_path / "none.ckpt"),
                        f"data.mindrecord_dir={mindrecord_dir}", *SMALL_NETWORK)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: checkpoint not found" in result.stderr


def test_divergence_stops_with_clear_message_and_keeps_the_last_good_checkpoint(mindrecord_dir, tmp_path):
    """lr 10: a few finite steps, then overflowing ones; a checkpoint every step, only the newest kept.

    Checkpoints of steps in the bad streak would push the last good one out (keep_checkpoints=1).
    """
    out = str(tmp_path / "diverge")
    result = run_module("fcn8s.train", "--config", CONFIG,
                        *_overrides(mindrecord_dir, out, "train.lr=10", "train.min_lr=10", "train.max_steps=12",
                                    "train.max_bad_steps=2", "loss_scale.init_loss_scale=1",
                                    "train.checkpoint_interval=1", "train.keep_checkpoints=1"))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "training diverged at step" in result.stderr
    steps = re.findall(r"step (\d+)/12 loss (\S+) lr \S+ loss_scale \S+( \(overflow)?", result.stderr)
    good = [int(step) for step, loss, overflow in steps if np.isfinite(float(loss)) and not overflow]
    assert good and good == list(range(1, len(good) + 1)) and len(steps) > len(good), steps
    ckpt_dir = os.path.join(out, "checkpoints")
    assert sorted(os.listdir(ckpt_dir)) == [f"fcn8s-step{good[-1]:08d}.ckpt", f"fcn8s-step{good[-1]:08d}.json"]
    params = ms.load_checkpoint(os.path.join(ckpt_dir, f"fcn8s-step{good[-1]:08d}.ckpt"))
    assert all(np.isfinite(p.asnumpy()).all() for p in params.values())


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = run_module("fcn8s.train", "--config", CONFIG, f"data.mindrecord_dir={tmp_path / 'none'}",
                        f"run.output_dir={tmp_path / 'o'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: dataset not found" in result.stderr


def test_only_rank_zero_writes_checkpoints(mindrecord_dir, tmp_path):
    from fcn8s.config import load_config
    from fcn8s.data.pipeline import count_samples
    from fcn8s.distributed import DistContext
    from fcn8s.trainer import Trainer

    cfg = load_config(CONFIG, [f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={tmp_path}"])
    trainer = Trainer(cfg, DistContext(rank=1, size=1, launcher="test"),
                      FCN8s(21, "matmul", fc_channels=SMALL_FC_CHANNELS), count_samples(mindrecord_dir))
    assert trainer._save() is None
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))
    main = Trainer(cfg, DistContext(), FCN8s(21, "matmul", fc_channels=SMALL_FC_CHANNELS),
                   count_samples(mindrecord_dir))
    assert os.path.isfile(main._save())


@pytest.mark.slow
def test_periodic_evaluation_records_miou_and_retention_keeps_the_best(mindrecord_dir, tmp_path):
    result = run_module("fcn8s.train", "--config", CONFIG,
                        *_overrides(mindrecord_dir, tmp_path, "train.max_steps=7", "train.eval_interval=2",
                                    "train.checkpoint_interval=100", "train.keep_checkpoints=1"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert all(f"val at step {step}: pixel_accuracy" in result.stderr for step in (2, 4, 6))
    logged = {int(step): float(miou) for step, miou in re.findall(r"val at step (\d+): .*mean_iou ([\d.]+)",
                                                                   result.stderr)}
    best = max(logged, key=logged.get)
    ckpt_dir = os.path.join(tmp_path, "checkpoints")
    kept = {json.load(open(os.path.join(ckpt_dir, name)))["step"]: json.load(open(os.path.join(ckpt_dir, name)))
            for name in os.listdir(ckpt_dir) if name.startswith("fcn8s-step") and name.endswith(".json")}
    assert set(kept) == {6, best}  # the newest plus the best by mIoU
    for step, meta in kept.items():
        assert meta["metrics"]["mean_iou"] == pytest.approx(logged[step], abs=1e-4)
    # step times count the step only: not the evaluation and checkpoint write before it
    eval_seconds = {int(step): float(s) for step, s in re.findall(r"val at step (\d+): .*eval took ([\d.]+) s",
                                                                  result.stderr)}
    records = {r["step"]: r for r in map(json.loads, open(os.path.join(tmp_path, "metrics.jsonl")))}
    for step in (3, 5, 7):
        assert records[step]["step_seconds"] < eval_seconds[step - 1], (records[step], eval_seconds)


def _applied_lr(before, after):
    """The learning rate a Momentum step applied, from two consecutive checkpoints: w -= lr * moment.

    Least squares over every weight (float32 rounding of single elements averages out).
    """
    num = den = 0.0
    for name in (key for key in after if key.startswith("moments.")):
        moment = after[name].asnumpy().astype(np.float64)
        weight = name[len("moments."):]
        num += float(np.sum((before[weight].asnumpy().astype(np.float64) - after[weight].asnumpy()) * moment))
        den += float(np.sum(moment * moment))
    return num / den


@pytest.mark.slow
@HEAVY  # seven checkpoints
def test_applied_learning_rate_follows_the_schedule_and_the_loss_scale_the_config(mindrecord_dir, tmp_path):
    """Reads what the optimizer applied, step by step, from checkpoints, with an overflow at step 3.

    Guards the tutorial's constant lr (``Tensor(lr[-1])``), a schedule that lags after a skipped update
    (``nn.Momentum`` only counts applied updates), and ``DynamicLossScaleManager(scale_factor, scale_window)``
    taking its settings by position.
    """
    steps = 6
    result = run_module("fcn8s.train", "--config", CONFIG,
                        *_overrides(mindrecord_dir, tmp_path, f"train.max_steps={steps}", "train.checkpoint_interval=1",
                                    "train.keep_checkpoints=10", "loss_scale.init_loss_scale=64",
                                    "loss_scale.scale_factor=4", "loss_scale.scale_window=2"),
                        env={"FCN8S_FAULT": "overflow:rank=0:step=3"})
    assert result.returncode == 0, result.stderr[-4000:]
    records = {r["step"]: r for r in map(json.loads, open(os.path.join(tmp_path, "metrics.jsonl")))}
    # init 64; x4 after every 2 clean steps; /4 on the overflow at step 3 (which also restarts the count)
    assert [records[s]["loss_scale"] for s in range(1, steps + 1)] == [64, 256, 64, 64, 256, 256]
    assert "step 3/6 loss inf lr" in result.stderr and "(overflow: update skipped)" in result.stderr
    ckpt_dir = os.path.join(tmp_path, "checkpoints")
    # the overflow step is not saved (a bad step keeps the last good checkpoint); its update was skipped, so
    # checkpoint 2 -> 4 is exactly one update, step 4's
    assert not os.path.exists(os.path.join(ckpt_dir, "fcn8s-step00000003.ckpt"))
    ckpts = {s: ms.load_checkpoint(os.path.join(ckpt_dir, f"fcn8s-step{s:08d}.ckpt")) for s in (1, 2, 4, 5)}
    ckpts[steps] = ms.load_checkpoint(os.path.join(ckpt_dir, "fcn8s-final.ckpt"))
    assert float(ckpts[1]["loss_scale"].asnumpy()) == 64
    schedule = cosine_lr(0.01, 0.0005, steps)
    for step in range(1, steps + 1):
        assert records[step]["lr"] == pytest.approx(float(schedule[step - 1]), rel=1e-6)
    previous = {2: 1, 4: 2, 5: 4, 6: 5}
    applied = {step: _applied_lr(ckpts[before], ckpts[step]) for step, before in previous.items()}
    for step, lr in applied.items():  # the logged lr is the applied one, at the training step's position
        assert lr == pytest.approx(records[step]["lr"], rel=1e-4), (step, applied)
    assert len({round(lr, 6) for lr in applied.values()}) == 4 and not math.isclose(applied[2], applied[6])


@pytest.mark.slow
def test_pynative_mode_trains_the_same_steps_as_graph_mode(mindrecord_dir, tmp_path):
    losses, logs = {}, {}
    for mode in ("graph", "pynative"):
        out = tmp_path / mode
        result = run_module("fcn8s.train", "--config", CONFIG, *_overrides(
            mindrecord_dir, out, "train.max_steps=3", "train.batch_size=2", f"run.mode={mode}"))
        assert result.returncode == 0, result.stderr[-3000:]
        losses[mode] = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
        logs[mode] = result.stderr
    assert "CPU:0, pynative mode" in logs["pynative"] and "CPU:0, graph mode" in logs["graph"]  # as MindSpore runs it
    assert len(losses["pynative"]) == 3 and np.isfinite(losses["pynative"]).all()
    np.testing.assert_allclose(losses["pynative"], losses["graph"], rtol=0, atol=1e-5)
