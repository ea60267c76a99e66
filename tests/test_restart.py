"""Bounded automatic restart (fcn8s/restarts.py, fcn8s.launch): the policy, then real 2-rank CPU jobs.

The chaos test is the figure that matters: SIGKILL at three seeded-random moments (the first
step, a checkpoint write, a later step) and the job still ends with the uninterrupted run's
weights and losses.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from fcn8s.errors import UserError
from fcn8s.launch import STOP_GRACE_ENV, LogTail, RankProcesses, SignalForwarder, decide
from fcn8s.rendezvous import Verdict
from fcn8s.restarts import RestartPolicy, restart_arguments
from fcn8s.watchdog import heartbeat_path
from tests.test_distributed import _job_pids, _train_args
from tests.test_watchdog import _finish, _start

CHAOS_SEED = 2033  # kills rank 1 in its first step, rank 0 writing step 4, rank 0 in step 8
CHAOS_STEPS = 12


@pytest.mark.parametrize("verdict, used, refusal", [
    (Verdict(137, "rank 1 exited with SIGKILL (code 137)"), 0, None),
    (Verdict(124, "rank 1 hung"), 2, None),
    (Verdict(1, "the MindSpore scheduler exited with code 1"), 1, None),
    (Verdict(137, "rank 1 exited with SIGKILL (code 137)"), 3, "all 3 restart(s) used"),
    (Verdict(2, "rank 0 exited with code 2"), 0, "exit code 2 (bad input) is not fixed by restarting"),
    (Verdict(3, "rank 0 exited with code 3"), 0, "exit code 3 (divergence) is not fixed by restarting"),
    (Verdict(143, "rank 0 exited with code 143"), 0, "exit code 143 (stopped by SIGTERM) is not fixed"),
    (Verdict(143, "the launcher received SIGTERM", restartable=False), 0, "cannot be fixed by restarting"),
    (Verdict(1, "lost node 1", restartable=False), 0, "cannot be fixed by restarting"),
])
def test_what_a_restart_can_fix(verdict, used, refusal):
    found = RestartPolicy(max_restarts=3).refusal(verdict, used)
    assert found == refusal if refusal is None else refusal in found


def test_backoff_doubles_up_to_a_cap_and_restarts_resume():
    policy = RestartPolicy(max_restarts=10, backoff=10)
    assert [policy.delay(n) for n in (1, 2, 3, 6, 9)] == [10, 20, 40, 300, 300]
    assert RestartPolicy().refusal(Verdict(137, "x"), 0) == "restarts are off"
    args = ["--config", "c.yaml", "train.max_steps=3"]
    assert restart_arguments(args) == ["--resume", "auto", *args]
    assert restart_arguments(["--resume", "/ckpt/a.ckpt"])[-2:] == ["--resume", "/ckpt/a.ckpt"]  # the user's wins


@pytest.mark.parametrize("grace", [1.0, 3.0])
def test_stopping_kills_what_ignores_sigterm_after_the_grace(monkeypatch, grace):
    """A rank blocked in a collective with a dead peer does not act on SIGTERM: it is killed once the grace
    (``FCN8S_STOP_GRACE_SECONDS``, default 10) is over, not before."""
    monkeypatch.setenv(STOP_GRACE_ENV, str(grace))
    procs = RankProcesses()
    procs.workers[0] = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60"], start_new_session=True)
    time.sleep(0.3)  # the trap is set
    started = time.monotonic()
    procs.stop()
    assert procs.workers[0].returncode == -signal.SIGKILL
    assert grace <= time.monotonic() - started < grace + 1.5


def test_a_bad_stop_grace_is_a_user_error(monkeypatch):
    monkeypatch.setenv(STOP_GRACE_ENV, "soon")
    with pytest.raises(UserError, match=STOP_GRACE_ENV):
        RankProcesses()


def test_a_single_server_decides_alone_and_a_signal_ends_the_job(caplog):
    with SignalForwarder() as signals:
        policy = RestartPolicy(max_restarts=2, backoff=0.2)
        started = time.monotonic()
        restart = decide(Verdict(137, "rank 1 exited with SIGKILL (code 137) after step 4", rank=1), 0, policy,
                         None, signals)
        assert restart.restart == 1 and time.monotonic() - started >= 0.2
        assert "restart 1/2 after rank 1 exited with SIGKILL (code 137) after step 4" in caplog.text
        final = decide(Verdict(2, "rank 0 exited with code 2", rank=0), 0, policy, None, signals)
        assert final.restart is None and "not restarting: exit code 2 (bad input)" in caplog.text
        signals.received.append(signal.SIGTERM)  # arrives during the back-off
        final = decide(Verdict(137, "rank 1 exited with SIGKILL (code 137)", rank=1), 1, policy, None, signals)
        assert final.restart is None and final.code == 143 and "received SIGTERM before the restart" in final.message


def _rank_pid(marker, rank, attempt, seconds=300):
    """PID of global rank ``rank``'s trainer in restart ``attempt`` of the job marked ``marker``."""
    wanted = (f"MS_NODE_ID={rank}\0".encode(), f"FCN8S_RESTART={attempt}\0".encode())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid in _job_pids(marker):
            try:
                environ, cmdline = open(f"/proc/{pid}/environ", "rb").read(), open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if all(w in environ for w in wanted) and b"fcn8s.train" in cmdline:
                return pid
        time.sleep(0.1)
    pytest.fail(f"rank {rank} of restart {attempt} never started")


def _wait_for_beat(logs, rank, launcher, done, seconds=600):
    """The first heartbeat report of ``rank`` for which ``done(report)`` holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert launcher.poll() is None, "the job ended early"
        try:
            report = json.load(open(heartbeat_path(str(logs), rank)))
        except (OSError, ValueError):
            report = None
        if report and done(report):
            return report
        time.sleep(0.02)
    pytest.fail(f"rank {rank} never got there")


def _losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if r}


def _final_checksums(logs):
    found = {}
    for rank in (0, 1):
        sums = re.findall(r"parameter checksum (\w+) after (\d+) steps", (logs / f"rank_{rank}.log").read_text())
        found[rank] = sums[-1]
    return found


def _temp_files(out):
    """Checkpoints being written (or abandoned) in ``out``."""
    return [n for n in os.listdir(out / "checkpoints") if n.startswith(".tmp-")]


def _chaos_args(mindrecord_dir, out):
    return [*_train_args(mindrecord_dir, out, CHAOS_STEPS), "train.checkpoint_interval=2", "train.keep_checkpoints=2"]


@pytest.mark.slow
def test_chaos_three_kills_and_the_job_ends_as_if_nothing_happened(mindrecord_dir, tmp_path):
    """2 ranks, 12 steps, a checkpoint every 2; SIGKILL during the first step, during rank 0's
    checkpoint write and during a later step; --max-restarts 3 -> the uninterrupted result."""
    reference = tmp_path / "reference"
    started = time.monotonic()
    launcher, logs, marker = _start(reference, _chaos_args(mindrecord_dir, reference / "out"))
    output, leftovers = _finish(launcher, marker, 900)
    reference_seconds = time.monotonic() - started
    assert launcher.returncode == 0 and not leftovers, output[-3000:]
    expected_sums, expected_losses = _final_checksums(logs), _losses(reference / "out")
    assert sorted(expected_losses) == list(range(1, CHAOS_STEPS + 1))
    for path in (reference / "out" / "checkpoints").iterdir():
        path.unlink()  # only the figures are needed

    rng = random.Random(CHAOS_SEED)
    chaos = tmp_path / "chaos"
    out = chaos / "out"
    started = time.monotonic()
    launcher, logs, marker = _start(chaos, _chaos_args(mindrecord_dir, out), MAX_RESTARTS=3, RESTART_BACKOFF=1)
    kills = []
    try:
        # 1. during the first step (graph compile + run) of the first run
        victim = rng.randrange(2)
        pid = _rank_pid(marker, victim, 0)
        _wait_for_beat(logs, victim, launcher, lambda r: r["phase"] == "compile")
        time.sleep(rng.uniform(0.5, 3.0))
        phase = json.load(open(heartbeat_path(str(logs), victim)))["phase"]
        os.kill(pid, signal.SIGKILL)
        kills.append((victim, f"first step ({phase})"))
        # 2. rank 0 while it writes a checkpoint (the others wait for it in the "save" phase)
        save_step = rng.choice([4, 6, 8])
        pid = _rank_pid(marker, 0, 1)
        _wait_for_beat(logs, 0, launcher, lambda r: r["phase"] == "save" and r["step"] >= save_step - 1)
        deadline = time.monotonic() + 30
        while not _temp_files(out) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))  # the small network's checkpoint takes ~0.5 s to write
        writing = _temp_files(out)
        os.kill(pid, signal.SIGKILL)
        kills.append((0, f"checkpoint write of step {save_step} (temp file: {writing})"))
        assert writing, "the kill missed the checkpoint write"
        # 3. a random rank in a random later step
        victim, step = rng.randrange(2), rng.randrange(save_step, CHAOS_STEPS - 1)
        pid = _rank_pid(marker, victim, 2)
        _wait_for_beat(logs, victim, launcher, lambda r: r["phase"] == "run" and r["step"] >= step)
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(pid, signal.SIGKILL)
        kills.append((victim, f"step {step + 1}"))
    finally:
        output, leftovers = _finish(launcher, marker, 1800)
    chaos_seconds = time.monotonic() - started
    print(f"kills: {kills}; uninterrupted {reference_seconds:.0f} s, with 3 kills {chaos_seconds:.0f} s: "
          f"{(chaos_seconds - reference_seconds) / 3:.0f} s lost per failure")
    assert launcher.returncode == 0, output[-5000:]
    assert leftovers == []
    for n, (victim, _) in enumerate(kills, start=1):
        assert re.search(rf"restart {n}/3 after rank {victim} on .* exited with SIGKILL \(code 137\)", output), output
    assert "restart 4/3" not in output and "job finished (exit code 0, after 3 restart(s))" in output
    rank0 = (logs / "rank_0.log").read_text()
    assert rank0.count("===== restart ") == 3 and "resumed from " in rank0  # logs of every run kept
    assert _final_checksums(logs) == expected_sums  # same weights as the uninterrupted run
    losses = _losses(out)
    assert sorted(losses) == list(range(1, CHAOS_STEPS + 1))  # every step exactly once ...
    assert len([line for line in open(out / "metrics.jsonl") if line.strip()]) == CHAOS_STEPS
    for step, loss in expected_losses.items():  # ... with the uninterrupted run's loss
        assert abs(losses[step] - loss) <= 1e-5, (step, losses[step], loss)
    assert not _temp_files(out)  # no abandoned checkpoint file


@pytest.mark.slow
def test_a_hung_rank_is_restarted_and_the_job_completes(mindrecord_dir, tmp_path):
    """The drill hangs rank 1 after step 3 of the first run only: the restart gets past it."""
    args = [*_train_args(mindrecord_dir, tmp_path / "out", 5), "train.checkpoint_interval=2"]
    launcher, logs, marker = _start(tmp_path, args, HANG_TIMEOUT=10, MAX_RESTARTS=1, RESTART_BACKOFF=1,
                                    FCN8S_FAULT="hang:rank=1:step=3")
    output, leftovers = _finish(launcher, marker, 900)
    assert launcher.returncode == 0 and leftovers == [], output[-5000:]
    assert re.search(r"restart 1/1 after rank 1 on .* hung: no progress for \d+ s in step 3", output), output
    assert "resumed from " in (logs / "rank_1.log").read_text() and not (logs / "failure.json").exists()


@pytest.mark.slow
def test_bad_input_is_not_restarted(mindrecord_dir, tmp_path):
    launcher, logs, marker = _start(tmp_path, _train_args(mindrecord_dir, tmp_path / "out", 5), MAX_RESTARTS=2,
                                    RESTART_BACKOFF=1, FCN8S_FAULT="exit:rank=1:step=1:code=2")
    output, leftovers = _finish(launcher, marker, 600)
    assert launcher.returncode == 2 and leftovers == [], output[-5000:]
    assert "not restarting: exit code 2 (bad input) is not fixed by restarting" in output
    assert "restart 1/" not in output
    report = json.load(open(logs / "failure.json"))
    assert report["rank"] == 1 and report["exit_code"] == 2 and report["restarts_used"] == 0


def test_max_restarts_is_refused_for_modules_that_cannot_resume(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fcn8s.launch", "--nproc", "1", "--max-restarts", "2",
                             "--log-dir", str(tmp_path / "logs"), "--module", "fcn8s.eval", "--", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error: --max-restarts restarts fcn8s.train with --resume auto; --module fcn8s.eval cannot be resumed" \
        in result.stderr


def test_the_terminal_shows_rank_0_without_mindspore_warnings_even_multi_line_ones(tmp_path, capsys):
    log = tmp_path / "rank_0.log"
    log.write_text("03:28:55 [rank 0/2] INFO fcn8s.runtime: started\n"
                   "[WARNING] ME(1:2,MainProcess): Constant value tensor are detected in tuple or list: (Tensor(\n"
                   "[[[-4.85e+01, -7.02e+01],\n   [-2.27e+02, -7.14e+01]]]),)\n"
                   "03:29:22 [rank 0/2] INFO fcn8s.trainer: epoch 0 step 1/12 loss 5.1224\n"
                   "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: boom\n"
                   "===== restart 1 =====\n")
    LogTail(str(log)).pump()
    assert capsys.readouterr().out.splitlines() == [
        "03:28:55 [rank 0/2] INFO fcn8s.runtime: started",
        "03:29:22 [rank 0/2] INFO fcn8s.trainer: epoch 0 step 1/12 loss 5.1224",
        "Traceback (most recent call last):", "  File \"x.py\", line 1", "RuntimeError: boom", "===== restart 1 ====="]


def test_the_watchdog_acts_before_hccl(monkeypatch, caplog):
    """Default hang time-out: 2/3 of the HCCL_EXEC_TIMEOUT the ranks will use (environment, else config)."""
    from fcn8s.launch import build_parser, hang_limits

    monkeypatch.delenv("HANG_TIMEOUT", raising=False)
    monkeypatch.delenv("HCCL_EXEC_TIMEOUT", raising=False)
    train = ["--config", "configs/cpu_smoke.yaml"]
    assert hang_limits(build_parser().parse_args(["--nproc", "2", "--", *train]), train).hang_timeout == 1200
    train.append("dist.hccl_exec_timeout=612")
    assert hang_limits(build_parser().parse_args(["--nproc", "2", "--", *train]), train).hang_timeout == 408
    monkeypatch.setenv("HCCL_EXEC_TIMEOUT", "340")
    assert hang_limits(build_parser().parse_args(["--nproc", "2", "--", *train]), train).hang_timeout == 227
    given = hang_limits(build_parser().parse_args(["--nproc", "2", "--hang-timeout", "400", "--", *train]), train)
    assert given.hang_timeout == 400 and "hang time-out 400 s is not below HCCL_EXEC_TIMEOUT 340 s" in caplog.text
    assert hang_limits(build_parser().parse_args(["--nproc", "1", "--module", "fcn8s.eval"]), []) is None
