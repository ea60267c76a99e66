"""Checkpoint safety: atomic saves survive a kill, corrupt files are refused, retention keeps the best."""
import os
import signal
import subprocess
import textwrap
import time

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn
from mindspore import amp

from fcn8s.checkpoint import CheckpointManager, load_weights, restore_training_state, training_state
from fcn8s.errors import UserError
from fcn8s.model import FCN8s
from tests.conftest import PYTHON, REPO, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module

POSITION = {"epoch": 0, "consumed": 0, "global_batch": 4, "ranks": 1}


def _state(seed=0):
    ms.set_seed(seed)
    net = nn.Dense(8, 3)
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    return net, optimizer, amp.DynamicLossScaler(1024, 2, 50)


def _flip_a_byte(path):
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_restore_brings_back_weights_momentum_step_and_loss_scaler(tmp_path):
    net, optimizer, scaler = _state()
    optimizer.moments[0].set_data(ms.Tensor(np.full((3, 8), 0.5, np.float32)))
    optimizer.global_step.set_data(ms.Tensor([7], ms.int32))
    scaler.scale_value.set_data(ms.Tensor(256.0, ms.float32))
    scaler.counter.set_data(ms.Tensor(13, ms.int32))
    path = CheckpointManager(str(tmp_path), 3, "digest").save(training_state(net, optimizer, scaler), 7,
                                                             {**POSITION, "consumed": 28})
    net2, optimizer2, scaler2 = _state(seed=1)
    meta = restore_training_state(path, net2, optimizer2, scaler2)
    assert meta["step"] == 7 and meta["consumed"] == 28 and meta["config_digest"] == "digest"
    np.testing.assert_array_equal(net2.weight.asnumpy(), net.weight.asnumpy())
    np.testing.assert_array_equal(optimizer2.moments[0].asnumpy(), 0.5)
    assert int(optimizer2.global_step.asnumpy()[0]) == 7
    assert float(scaler2.scale_value.asnumpy()) == 256.0 and int(scaler2.counter.asnumpy()) == 13


def test_restore_brings_back_batchnorm_running_statistics(tmp_path):
    def state():
        net = nn.SequentialCell(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        return net, nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9), amp.DynamicLossScaler(8, 2, 5)

    net, optimizer, scaler = state()
    bn = net[1]
    bn.moving_mean.set_data(ms.Tensor(np.array([1.0, -2.0, 3.0, 0.5], np.float32)))
    bn.moving_variance.set_data(ms.Tensor(np.array([0.25, 4.0, 9.0, 1.5], np.float32)))
    path = CheckpointManager(str(tmp_path), 1, "d").save(training_state(net, optimizer, scaler), 1, POSITION)
    fresh, fresh_optimizer, fresh_scaler = state()
    restore_training_state(path, fresh, fresh_optimizer, fresh_scaler)
    np.testing.assert_array_equal(fresh[1].moving_mean.asnumpy(), [1.0, -2.0, 3.0, 0.5])
    np.testing.assert_array_equal(fresh[1].moving_variance.asnumpy(), [0.25, 4.0, 9.0, 1.5])


def test_corrupt_checkpoint_is_skipped_by_auto_and_refused_by_path(tmp_path):
    net, optimizer, scaler = _state()
    manager = CheckpointManager(str(tmp_path), 3, "d")
    older = manager.save(training_state(net, optimizer, scaler), 1, POSITION)
    newer = manager.save(training_state(net, optimizer, scaler), 2, POSITION)
    _flip_a_byte(newer)
    assert manager.latest() == older
    with pytest.raises(UserError, match=f"{newer}: corrupt checkpoint"):
        restore_training_state(newer, *_state())
    os.remove(newer[:-5] + ".json")
    with pytest.raises(UserError, match="no readable sidecar"):
        restore_training_state(newer, *_state())
    with pytest.raises(UserError, match="checkpoint not found"):
        restore_training_state(str(tmp_path / "nope.ckpt"), *_state())


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, mindspore as ms
        from fcn8s.checkpoint import CheckpointManager
        manager = CheckpointManager({str(tmp_path)!r}, 2, "d")
        big = ms.Tensor(np.random.default_rng(0).random((64, 1024, 1024), dtype=np.float32))  # 256 MB
        for step in range(1, 1000):
            manager.save([{{"name": "w", "data": big}}], step, {POSITION!r})
    """)
    proc = subprocess.Popen([PYTHON, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait for the second save to be half-way through
            names = os.listdir(tmp_path)
            if any(n.startswith(".tmp-") for n in names) and "fcn8s-step00000001.json" in names:
                break
            assert proc.poll() is None, "saver died"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    manager = CheckpointManager(str(tmp_path), 2, "d")
    path = manager.latest()
    assert path is not None and os.path.basename(path).startswith("fcn8s-step")
    assert ms.load_checkpoint(path)["w"].shape == (64, 1024, 1024)
    abandoned = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert abandoned  # the killed writer's half-written file (hundreds of MB)...
    net, optimizer, scaler = _state()
    manager.save(training_state(net, optimizer, scaler), 5, POSITION)  # ...is removed by the next save
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_retention_keeps_the_last_k_and_the_best_miou(tmp_path):
    net, optimizer, scaler = _state()
    manager = CheckpointManager(str(tmp_path), 2, "d")
    for step, miou in enumerate([0.1, 0.9, 0.2, 0.3, 0.4], start=1):
        manager.save(training_state(net, optimizer, scaler), step, POSITION, metrics={"mean_iou": miou})
    assert [meta["step"] for meta in manager.complete()] == [2, 4, 5]  # the best is older than the newest 2
    best = os.path.join(str(tmp_path), "fcn8s-step00000002.ckpt")
    assert restore_training_state(best, *_state())["metrics"]["mean_iou"] == 0.9  # intact and resumable
    manager.save(training_state(net, optimizer, scaler), 6, POSITION, metrics={"mean_iou": 0.95})
    assert [meta["step"] for meta in manager.complete()] == [5, 6]  # a better one replaces it


def test_wrong_class_count_or_architecture_is_a_clear_error(tmp_path):
    path = str(tmp_path / "voc.ckpt")
    ms.save_checkpoint(FCN8s(21, "matmul", fc_channels=SMALL_FC_CHANNELS), path)
    with pytest.raises(UserError, match=r"voc.ckpt: parameter score_fr.weight has shape \(21, 16, 1, 1\)"):
        load_weights(FCN8s(5, "matmul", fc_channels=SMALL_FC_CHANNELS), path)
    with pytest.raises(UserError, match=r"voc.ckpt: parameter conv6.0.weight has shape \(16, 512, 7, 7\)"):
        load_weights(FCN8s(21, "matmul", fc_channels=8), path)  # another model.fc_channels
    other = str(tmp_path / "dense.ckpt")
    ms.save_checkpoint(nn.Dense(3, 2), other)
    with pytest.raises(UserError, match="dense.ckpt: missing .* network parameter"):
        load_weights(FCN8s(21, "matmul", fc_channels=SMALL_FC_CHANNELS), other)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(UserError, match="garbage.ckpt: not a readable MindSpore checkpoint"):
        load_weights(FCN8s(21, "matmul", fc_channels=SMALL_FC_CHANNELS), str(garbage))


def test_resume_from_a_corrupt_checkpoint_is_a_one_line_error(mindrecord_dir, tmp_path):
    net, optimizer, scaler = _state()
    ckpt = CheckpointManager(str(tmp_path), 2, "d").save(training_state(net, optimizer, scaler), 1, POSITION)
    _flip_a_byte(ckpt)
    result = run_module("fcn8s.train", "--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={mindrecord_dir}",
                        f"run.output_dir={tmp_path / 'run'}", *SMALL_NETWORK, "--resume", ckpt)
    assert result.returncode == 2
    assert f"error: {ckpt}: corrupt checkpoint" in result.stderr and "Traceback" not in result.stderr
