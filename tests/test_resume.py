"""Exact resume and preemption with real training processes (1 process and 2 ranks via run_distribute.sh)."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

import mindspore as ms

from fcn8s.checkpoint import read_sidecar
from fcn8s.faults import FAULT_ENV
from tests.conftest import HEAVY, PYTHON, REPO, SMALL_NETWORK, run_module

CONFIG = "configs/cpu_smoke.yaml"
STEPS = 6


def _args(mindrecord_dir, out, *extra, network=SMALL_NETWORK):
    return ["--config", CONFIG, f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={out}",
            "train.log_interval=1", f"train.max_steps={STEPS}", "train.batch_size=2", *network, *extra]


def _losses(out):
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in records}


def _checksums(text):
    return re.findall(r"parameter checksum (\w+) after (\d+) steps", text)


def _wait_for_step(out, step, proc, timeout=600):
    path = os.path.join(out, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended early with code {proc.returncode}")
        if os.path.exists(path) and len(open(path).read().splitlines()) >= step:
            return
        time.sleep(0.5)
    pytest.fail(f"step {step} never logged")


def _signal_during_training(proc, out, signum=signal.SIGTERM):
    """Send ``signum`` once step 2 is logged; returns the process output."""
    try:
        _wait_for_step(str(out), 2, proc)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, output[-3000:]
    return output


def _wait_for_text(path, text, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.2)


def _uninterrupted(mindrecord_dir, out, network):
    """(output dir, log) of STEPS uninterrupted steps, with a checkpoint at step 3."""
    result = run_module("fcn8s.train", *_args(mindrecord_dir, out, "train.checkpoint_interval=3", network=network),
                        check=True)
    return out, result.stderr


@pytest.mark.slow
@HEAVY
def test_resuming_a_checkpoint_repeats_the_uninterrupted_steps(mindrecord_dir, tmp_path):
    """The one resume of the tutorial's full network (the other resume tests train the small one)."""
    full, full_log = _uninterrupted(mindrecord_dir, str(tmp_path / "full"), network=())
    os.makedirs(tmp_path / "checkpoints")
    for name in ("fcn8s-step00000003.ckpt", "fcn8s-step00000003.json"):
        shutil.move(os.path.join(full, "checkpoints", name), tmp_path / "checkpoints")
    shutil.rmtree(os.path.join(full, "checkpoints"))  # 1 GB each: only the copy resumed from is kept
    result = run_module("fcn8s.train", *_args(mindrecord_dir, tmp_path, "--resume", "auto", network=()), check=True)
    assert "resumed from" in result.stderr and "at step 3 (epoch 0, 6 samples of it done)" in result.stderr
    resumed, expected = _losses(tmp_path), _losses(full)
    assert sorted(resumed) == [4, 5, 6]
    np.testing.assert_allclose([resumed[s] for s in (4, 5, 6)], [expected[s] for s in (4, 5, 6)], rtol=0, atol=1e-5)
    assert _checksums(result.stderr) == _checksums(full_log)  # same weights after 6 steps


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_auto_finishes_identically(mindrecord_dir, tmp_path):
    full, full_log = _uninterrupted(mindrecord_dir, str(tmp_path / "full"), SMALL_NETWORK)
    proc = subprocess.Popen([PYTHON, "-m", "fcn8s.train", *_args(mindrecord_dir, tmp_path, "train.checkpoint_interval=100")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = _signal_during_training(proc, tmp_path)
    stopped = re.search(r"stopped by SIGTERM after step (\d+); resumable checkpoint (\S+);", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert 2 <= step < STEPS and os.path.basename(stopped.group(2)) == f"fcn8s-step{step:08d}.ckpt"
    result = run_module("fcn8s.train", *_args(mindrecord_dir, tmp_path, "--resume", "auto"), check=True)
    assert f"at step {step}" in result.stderr
    losses, expected = _losses(tmp_path), _losses(full)
    assert sorted(losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [expected[s] for s in sorted(expected)],
                               rtol=0, atol=1e-5)
    assert _checksums(result.stderr) == _checksums(full_log)
    # BatchNorm running statistics (outside the checksum, unused by training-mode losses) continue too
    finals = [ms.load_checkpoint(os.path.join(out, "checkpoints", "fcn8s-final.ckpt")) for out in (full, tmp_path)]
    stats = [name for name in finals[0] if name.endswith((".moving_mean", ".moving_variance"))]
    assert len(stats) == 2 * 15  # 15 BatchNorm layers
    for name in stats:
        np.testing.assert_allclose(finals[1][name].asnumpy(), finals[0][name].asnumpy(), rtol=0, atol=1e-6,
                                   err_msg=name)


@pytest.mark.slow
def test_sigint_finishes_the_step_saves_and_exits_130(mindrecord_dir, tmp_path):
    args = _args(mindrecord_dir, tmp_path, "train.checkpoint_interval=100")
    proc = subprocess.Popen([PYTHON, "-m", "fcn8s.train", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = _signal_during_training(proc, tmp_path, signal.SIGINT)
    stopped = re.search(r"stopped by SIGINT after step (\d+); resumable checkpoint (\S+);", output)
    assert stopped and "Traceback" not in output, output[-3000:]
    meta = read_sidecar(stopped.group(2))
    assert meta is not None and meta["step"] == int(stopped.group(1)) >= 2


@pytest.mark.slow
def test_a_second_signal_stops_at_once(mindrecord_dir, tmp_path):
    """Rank 0 hangs inside step 3 (fault injection): the first SIGINT waits for the step, the second does not."""
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([PYTHON, "-m", "fcn8s.train", *_args(mindrecord_dir, tmp_path / "run")], cwd=REPO,
                                stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, FAULT_ENV: "hang:rank=0:step=2"})
    try:
        _wait_for_text(log, "FAULT INJECTION: hang now", proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(3)
        assert proc.poll() is None  # waits for the step to finish
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert returncode == 130, log.read_text()[-3000:]
    assert "received SIGINT again: stopping at once" in log.read_text()
    assert "stopped by SIGINT after step" not in log.read_text()
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # nothing saved: it stopped at once


def _distributed(mindrecord_dir, out, logs, *extra):
    env = {**os.environ, "LOG_DIR": str(logs), "PYTHON": PYTHON}
    args = _args(mindrecord_dir, out, *extra)[1:]  # run_distribute.sh takes the config positionally
    return subprocess.Popen(["bash", "launch/run_distribute.sh", "2", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_ranks_preempted_through_run_distribute_resume_identically(mindrecord_dir, tmp_path):
    full = tmp_path / "full"
    job = _distributed(mindrecord_dir, full, tmp_path / "logs_full")
    output, _ = job.communicate(timeout=900)
    assert job.returncode == 0, output[-3000:]
    full_checksums = [_checksums((tmp_path / "logs_full" / f"rank_{k}.log").read_text()) for k in range(2)]
    assert full_checksums[0] == full_checksums[1] != []

    out = tmp_path / "preempted"
    job = _distributed(mindrecord_dir, out, tmp_path / "logs_1", "train.checkpoint_interval=100")
    _signal_during_training(job, out)
    for k in range(2):
        assert "stopped by SIGTERM after step" in (tmp_path / "logs_1" / f"rank_{k}.log").read_text()
    saved = sorted(os.listdir(out / "checkpoints"))
    assert len(saved) == 2 and saved[0].startswith("fcn8s-step")  # one checkpoint + sidecar, from rank 0 only

    job = _distributed(mindrecord_dir, out, tmp_path / "logs_2", "--resume", "auto")
    output, _ = job.communicate(timeout=900)
    assert job.returncode == 0, output[-3000:]
    losses, expected = _losses(str(out)), _losses(str(full))
    assert sorted(losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [expected[s] for s in sorted(expected)],
                               rtol=0, atol=1e-5)
    resumed_checksums = [_checksums((tmp_path / "logs_2" / f"rank_{k}.log").read_text()) for k in range(2)]
    assert resumed_checksums == full_checksums


@pytest.mark.slow
def test_resume_auto_without_shared_storage_is_one_error_on_every_rank(mindrecord_dir, tmp_path):
    """Two ranks (mpirun, one command each) whose output dirs differ: rank 0 finds a checkpoint, rank 1 none.

    Both must take part in the check and stop with the documented error (exit 2), not hang in a collective.
    """
    run_module("fcn8s.train", *_args(mindrecord_dir, tmp_path / "node0", "train.max_steps=2"), check=True)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    rank = [PYTHON, "-m", "fcn8s.train", "--resume", "auto", "--first-step-timeout", "120"]
    mpirun = [os.path.join(os.path.dirname(PYTHON), "mpirun"), "--oversubscribe",
              "-n", "1", *rank, *_args(mindrecord_dir, tmp_path / "node0"), ":",
              "-n", "1", *rank, *_args(mindrecord_dir, tmp_path / "node1")]
    result = subprocess.run(mpirun, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert errors == ["error: ranks would resume from different checkpoints (rank 0: step 2, rank 1: none): "
                      "--resume needs run.output_dir on storage shared by all nodes, or the same checkpoint path "
                      "on every node"] * 2


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank_at_the_next_unseen_sample(mindrecord_dir, tmp_path):
    """Documented: resuming on another number of ranks continues with the next unseen samples of the epoch."""
    out = tmp_path / "run"
    job = _distributed(mindrecord_dir, out, tmp_path / "logs", "train.max_steps=3")
    output, _ = job.communicate(timeout=900)
    assert job.returncode == 0, output[-3000:]
    saved = str(out / "checkpoints" / "fcn8s-final.ckpt")
    assert {key: read_sidecar(saved)[key] for key in ("step", "epoch", "consumed", "ranks")} == \
        {"step": 3, "epoch": 0, "consumed": 12, "ranks": 2}  # 3 steps x 2 ranks x batch 2
    result = run_module("fcn8s.train", *_args(mindrecord_dir, out, "--resume", saved), check=True)
    assert "global batch changed from 4 to 2: continuing at sample 12 of epoch 0" in result.stderr
    assert "resumed from" in result.stderr and "at step 3 (epoch 0, 12 samples of it done)" in result.stderr
    losses = _losses(str(out))
    assert sorted(losses) == list(range(1, STEPS + 1)) and np.isfinite(list(losses.values())).all()
    final = read_sidecar(str(out / "checkpoints" / "fcn8s-final.ckpt"))
    assert {key: final[key] for key in ("step", "epoch", "consumed", "ranks", "global_batch")} == \
        {"step": STEPS, "epoch": 0, "consumed": 12 + 3 * 2, "ranks": 1, "global_batch": 2}
