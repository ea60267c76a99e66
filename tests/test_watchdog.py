"""Hang watchdog, fault injection and failure reports: units, then real 2-rank CPU jobs."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from fcn8s.errors import UserError
from fcn8s.failure import signal_name, write_failure_report
from fcn8s.faults import Fault, FaultInjector, parse_fault
from fcn8s.heartbeat import Heartbeat, read_heartbeat
from fcn8s.watchdog import EXIT_HUNG, HangLimits, Watchdog, heartbeat_path
from tests.conftest import REPO, job_tag
from tests.test_distributed import _job_pids, _train_args


@pytest.mark.parametrize("text, fault", [
    ("hang:rank=1:step=3", Fault("hang", 1, 3)),
    ("exit:rank=0:step=2:code=7", Fault("exit", 0, 2, 7)),
    ("raise:step=5:rank=2", Fault("raise", 2, 5)),
    ("exit:rank=1:step=4:attempt=1", Fault("exit", 1, 4, 1, 1)),
    ("slow_eval:rank=1:step=2:seconds=20", Fault("slow_eval", 1, 2, seconds=20)),
])
def test_fault_settings_parse(text, fault):
    assert parse_fault(text) == fault


@pytest.mark.parametrize("text", ["hang", "hang:rank=1", "sleep:rank=1:step=2", "hang:rank=x:step=2",
                                  "hang:rank=1:step=2:when=now"])
def test_bad_fault_settings_are_one_line_errors(text):
    with pytest.raises(UserError, match="FCN8S_FAULT=.*expected KIND:rank=R:step=S"):
        parse_fault(text)


def test_fault_injection_is_off_by_default_and_loud_when_on(caplog):
    FaultInjector(1, "").after_step(3)  # nothing happens
    injector = FaultInjector(1, "raise:rank=1:step=3")
    assert "FAULT INJECTION ON" in caplog.text
    injector.after_step(2)
    FaultInjector(0, "raise:rank=1:step=3").after_step(3)  # another rank
    FaultInjector(1, "raise:rank=1:step=3", attempt=1).after_step(3)  # fires in the first run only
    with pytest.raises(RuntimeError, match="injected fault after step 3"):
        injector.after_step(3)
    with pytest.raises(RuntimeError, match="injected fault after step 3"):
        FaultInjector(1, "raise:rank=1:step=3:attempt=2", attempt=2).after_step(3)


def test_watchdog_names_a_silent_rank_and_spares_busy_ones(tmp_path):
    limits = HangLimits(hang_timeout=5, first_step_timeout=60)
    dog = Watchdog(str(tmp_path), [0, 1, 2, 3], limits, "srv0 (198.18.7.1)")
    for rank in range(4):
        os.makedirs(tmp_path / f"rank_{rank}")
    old = time.time() - 30
    beats = {0: ("step", 7, time.time()), 1: ("step", 6, old), 2: ("eval", 6, old), 3: ("start", 0, old)}
    for rank, (phase, step, when) in beats.items():
        with open(heartbeat_path(str(tmp_path), rank), "w") as handle:
            json.dump({"step": step, "phase": phase, "time": when}, handle)
    alive = {rank: os.getpid() for rank in range(4)}  # running, not stopped
    rank, verdict = dog.check(alive)
    assert rank == 1 and verdict.code == EXIT_HUNG
    assert verdict.message == "rank 1 on srv0 (198.18.7.1) hung: no progress for 30 s after step 6"
    assert dog.check({0: os.getpid(), 2: os.getpid(), 3: os.getpid()}) is None  # eval is busy; first step 60 s
    assert dog.last_steps() == {0: 7, 1: 6, 2: 6, 3: 0}
    Heartbeat(heartbeat_path(str(tmp_path), 1)).beat("step", 8)
    assert dog.check(alive) is None


def test_watchdog_names_the_rank_the_others_wait_for(tmp_path):
    """Rank 0 entered step 4 and waits in its all-reduce for rank 1, which never started it."""
    dog = Watchdog(str(tmp_path), [0, 1], HangLimits(hang_timeout=5, first_step_timeout=60), "srv0")
    for rank, (phase, age) in {0: ("run", 28), 1: ("step", 27)}.items():
        os.makedirs(tmp_path / f"rank_{rank}")
        with open(heartbeat_path(str(tmp_path), rank), "w") as handle:
            json.dump({"step": 3, "phase": phase, "time": time.time() - age}, handle)
    rank, verdict = dog.check({0: os.getpid(), 1: os.getpid()})
    assert rank == 1 and verdict.message.endswith("after step 3")  # behind, although not the oldest
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        sleeper.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        rank, verdict = dog.check({0: os.getpid(), 1: sleeper.pid})
        assert rank == 1 and "hung (process stopped)" in verdict.message
        rank, _ = dog.check({0: sleeper.pid, 1: os.getpid()})
        assert rank == 0  # a stopped process is the culprit whatever its heartbeat says
    finally:
        sleeper.kill()


def test_failure_report_picks_out_error_lines(tmp_path):
    log = tmp_path / "rank_1.log"
    log.write_text("".join(f"step {k}\n" for k in range(30)) +
                   "[ERROR] HCCL EI0006: Getting socket times out\nTraceback (most recent call last):\nok\n")
    path = write_failure_report(str(tmp_path), message="rank 1 exited with code 137", exit_code=137, host="srv1",
                                rank=1, steps={0: 12, 1: 11}, log_path=str(log))
    report = json.load(open(path))
    assert (report["rank"], report["host"], report["exit_code"], report["signal"]) == (1, "srv1", 137, "SIGKILL")
    assert report["steps"] == {"0": 12, "1": 11} and report["restarts_used"] == 0
    assert len(report["log_tail"]) == 20 and report["log_tail"][-1] == "ok"
    assert report["error_lines"] == ["[ERROR] HCCL EI0006: Getting socket times out", "Traceback (most recent call last):"]
    assert signal_name(1) is None and signal_name(143) == "SIGTERM"


def test_failure_summary_says_who_how_how_far_and_shows_the_log(tmp_path, caplog):
    log = tmp_path / "rank_1.log"
    log.write_text("[WARNING] DISTRIBUTED: BuildCluster] Topology build timed out., retry(1/3600).\nstep 11 done\n"
                   "[ERROR] DEVICE(1) EI0006: HcclAllReduce is timed out\r\nlast words\n")
    write_failure_report(str(tmp_path), message="rank 1 on srv1 (198.18.7.2) hung: no progress for 31 s after step 11",
                         exit_code=EXIT_HUNG, host="srv1 (198.18.7.2)", rank=1, steps={0: 12, 1: 11},
                         log_path=str(log), restarts_used=2)
    text = caplog.text
    assert "FAILED: rank 1 on srv1 (198.18.7.2) hung: no progress for 31 s after step 11 (exit code 124)" in text
    assert "steps reached: rank 0: 12, rank 1: 11; restarts used: 2" in text
    assert "error lines of rank_1.log:\n    [ERROR] DEVICE(1) EI0006: HcclAllReduce is timed out\n  last" in text
    assert "retry(1/3600).\n    step 11 done\n" in text and text.rstrip().endswith("timed out\n    last words")
    scheduler = tmp_path / "scheduler.log"
    scheduler.write_text("scheduler up\n")
    report = json.load(open(write_failure_report(
        str(tmp_path), message="the MindSpore scheduler on srv0 exited with SIGKILL (code 137)", exit_code=137,
        host="srv0", rank=None, steps={0: 3, 1: 3}, log_path=str(scheduler), process="scheduler")))
    assert (report["process"], report["signal"], report["log_tail"]) == ("scheduler", "SIGKILL", ["scheduler up"])
    assert "(exit code 137, SIGKILL)" in caplog.text and "last lines of scheduler.log:\n    scheduler up" in caplog.text


def test_evaluation_is_busy_until_every_rank_summed(tmp_path, monkeypatch):
    """The "eval" phase is renewed per batch and still reported while waiting for the others' matrices."""
    import numpy as np
    from types import SimpleNamespace

    from fcn8s import trainer

    path = str(tmp_path / "heartbeat.json")
    seen = []

    def evaluate(cfg, ctx, predictor, progress):
        for scored in (4, 8):
            time.sleep(0.01)
            before = read_heartbeat(path)["time"]
            progress(scored)
            assert read_heartbeat(path)["time"] > before  # renewed
        return np.eye(2, dtype=np.int64)

    def sum_across_ranks(hist, ctx):
        seen.append(read_heartbeat(path)["phase"])  # other ranks may still be scoring
        return hist * 2

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    monkeypatch.setattr(trainer, "sum_across_ranks", sum_across_ranks)
    monkeypatch.setattr(trainer, "Predictor", lambda *args: None)
    net = SimpleNamespace(set_train=lambda mode: None)
    cfg = SimpleNamespace(eval=SimpleNamespace(image_size=96), data=SimpleNamespace(image_mean=0, image_std=1))
    fake = SimpleNamespace(cfg=cfg, ctx=None, net=net, step=2, heartbeat=Heartbeat(path), tensorboard=None,
                           faults=FaultInjector(0, ""))
    metrics = trainer.Trainer._evaluate(fake)
    assert seen == ["eval"] and metrics["pixel_accuracy"] == 1.0
    assert read_heartbeat(path)["phase"] == "step"


def _start(tmp_path, train_args, *overrides, **env):
    """run_distribute.sh with 2 CPU ranks; returns (launcher, logs dir, marker of its processes)."""
    logs, tag = tmp_path / "logs", job_tag()
    environ = {**os.environ, "LOG_DIR": str(logs), "FCN8S_TEST_MARKER": tag,
               **{k: str(v) for k, v in env.items()}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    with open(tmp_path / "launcher.out", "w") as output:  # a file: a full pipe would block the launcher
        launcher = subprocess.Popen(["bash", "launch/run_distribute.sh", "2", *train_args[1:], *overrides],
                                    cwd=REPO, env=environ, stdout=output, stderr=subprocess.STDOUT)
    launcher.output_path = tmp_path / "launcher.out"
    return launcher, logs, f"FCN8S_TEST_MARKER={tag}"


def _wait_for_step(logs, rank, step, launcher, seconds=300):
    log = logs / f"rank_{rank}.log"
    deadline = time.monotonic() + seconds
    while not (log.exists() and f"step {step}/" in log.read_text(errors="replace")):
        assert time.monotonic() < deadline and launcher.poll() is None, "training never got there"
        time.sleep(0.5)


def _finish(launcher, marker, timeout):
    """Wait for a launcher from :func:`_start`; returns (its output, PIDs of the job still alive, now killed)."""
    try:
        launcher.wait(timeout=timeout)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        leftovers = [pid for pid in _job_pids(marker) if pid != launcher.pid]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    return launcher.output_path.read_text(errors="replace"), leftovers


def _worker_pid(marker, rank):
    """PID of global rank ``rank``'s trainer in the job marked ``marker``."""
    return next(pid for pid in _job_pids(marker) if f"MS_NODE_ID={rank}\0".encode() in open(f"/proc/{pid}/environ", "rb").read()
                and b"fcn8s.train" in open(f"/proc/{pid}/cmdline", "rb").read())


HANG_TIMEOUT = 10  # a 2-rank CPU step of the small network takes ~1 s; MindSpore's own heartbeat acts after ~30 s


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigstop", "live_hang"])
def test_a_hung_rank_stops_the_job_naming_it(mindrecord_dir, tmp_path, how):
    fault = {"FCN8S_FAULT": "hang:rank=1:step=3"} if how == "live_hang" else {}
    launcher, logs, marker = _start(tmp_path, _train_args(mindrecord_dir, tmp_path / "out", 500),
                                    HANG_TIMEOUT=HANG_TIMEOUT, **fault)
    _wait_for_step(logs, 1, 3, launcher)
    if how == "sigstop":
        os.kill(_worker_pid(marker, 1), signal.SIGSTOP)
    hung_at = time.monotonic()
    output, leftovers = _finish(launcher, marker, HANG_TIMEOUT + 60)
    took = time.monotonic() - hung_at
    print(f"{how}: job stopped {took:.1f} s after the hang (hang timeout {HANG_TIMEOUT} s)")
    assert launcher.returncode == EXIT_HUNG, output[-3000:]
    assert took < HANG_TIMEOUT + 15, output[-3000:]
    assert leftovers == []
    assert "rank 1 on " in output and " hung" in output and ": no progress for " in output
    report = json.load(open(logs / "failure.json"))
    assert report["rank"] == 1 and report["exit_code"] == EXIT_HUNG and "hung" in report["message"]
    if how == "live_hang":  # it hangs in step 3's bookkeeping: step 3 never completes
        assert report["steps"]["1"] == 2 and "no progress for" in report["message"] and "in step 3" in report["message"]
    else:
        assert report["steps"]["1"] >= 3 and "(process stopped)" in report["message"]
    if how == "live_hang":
        assert "FAULT INJECTION ON" in (logs / "rank_1.log").read_text()


@pytest.mark.slow
def test_a_failing_rank_writes_the_failure_report(mindrecord_dir, tmp_path):
    launcher, logs, marker = _start(tmp_path, _train_args(mindrecord_dir, tmp_path / "out", 500),
                                    FCN8S_FAULT="raise:rank=1:step=2")
    output, leftovers = _finish(launcher, marker, 300)
    assert launcher.returncode == 1 and leftovers == [], output[-3000:]
    report = json.load(open(logs / "failure.json"))
    assert report["rank"] == 1 and report["exit_code"] == 1 and report["signal"] is None
    assert report["message"].startswith("rank 1 on ") and report["message"].endswith("exited with code 1 after step 1")
    assert any("RuntimeError: injected fault after step 2" in line for line in report["error_lines"])
    assert "steps reached: rank 0: " in output and "restarts used: 0" in output  # the printed summary
    assert "error lines of rank_1.log:" in output and "last lines of rank_1.log:" in output


@pytest.mark.slow
def test_a_killed_rank_writes_the_failure_report(mindrecord_dir, tmp_path):
    launcher, logs, marker = _start(tmp_path, _train_args(mindrecord_dir, tmp_path / "out", 500))
    _wait_for_step(logs, 1, 2, launcher)
    os.kill(_worker_pid(marker, 1), signal.SIGKILL)
    output, leftovers = _finish(launcher, marker, 120)
    assert launcher.returncode != 0 and leftovers == [], output[-3000:]
    report = json.load(open(logs / "failure.json"))
    assert (report["rank"], report["exit_code"], report["signal"]) == (1, 137, "SIGKILL"), report
    assert report["message"].startswith("rank 1 on ") and "SIGKILL" in report["message"], report["message"]
    assert report["steps"]["1"] >= 2 and "restarts used: 0" in output and "last lines of rank_1.log:" in output


SLOW_EVAL_SECONDS = 20  # rank 1's evaluation, without a heartbeat; rank 0 waits for it in the final sum, and
# MindSpore's CPU collectives give up after ~30 s (measured: at 25 s, rank 0 failed once under load, waiting 30 s)


def _log_time(log, pattern):
    """Seconds since midnight of the first line of ``log`` matching ``pattern`` (HH:MM:SS stamps)."""
    found = re.search(rf"^(\d\d):(\d\d):(\d\d) .*{pattern}", log, re.M)
    assert found, f"no line matching {pattern!r}"
    hours, minutes, seconds = map(int, found.groups())
    return hours * 3600 + minutes * 60 + seconds


@pytest.mark.slow
def test_a_long_evaluation_is_busy_not_hung(mindrecord_dir, tmp_path):
    """Periodic evaluation (waiting for the other rank included) may take longer than the hang timeout.

    The ``slow_eval`` drill keeps rank 1 in its evaluation for 20 s without a heartbeat, as a large
    val split would (a real one that long costs minutes of CPU here).
    """
    launcher, logs, marker = _start(tmp_path, _train_args(mindrecord_dir, tmp_path / "out", 3), "train.eval_interval=2",
                                    HANG_TIMEOUT=HANG_TIMEOUT,
                                    FCN8S_FAULT=f"slow_eval:rank=1:step=2:seconds={SLOW_EVAL_SECONDS}")
    output, leftovers = _finish(launcher, marker, 900)
    assert launcher.returncode == 0 and leftovers == [], output[-3000:]
    assert not (logs / "failure.json").exists()
    for rank in (0, 1):
        log = (logs / f"rank_{rank}.log").read_text(errors="replace")
        took = (_log_time(log, "val at step 2: ") - _log_time(log, "evaluating at step 2 ")) % 86400
        print(f"rank {rank}: evaluation took {took} s (hang timeout {HANG_TIMEOUT} s)")
        assert SLOW_EVAL_SECONDS <= took < SLOW_EVAL_SECONDS + 60 and took > HANG_TIMEOUT + 5, log[-3000:]
        assert "step 3/3" in log


@pytest.mark.slow
def test_a_killed_scheduler_stops_the_job_naming_it(mindrecord_dir, tmp_path):
    launcher, logs, marker = _start(tmp_path, _train_args(mindrecord_dir, tmp_path / "out", 500),
                                    HANG_TIMEOUT=HANG_TIMEOUT)
    _wait_for_step(logs, 0, 2, launcher)
    scheduler = [pid for pid in _job_pids(marker) if b"MS_ROLE=MS_SCHED\0" in open(f"/proc/{pid}/environ", "rb").read()]
    assert len(scheduler) == 1
    os.kill(scheduler[0], signal.SIGKILL)
    killed_at = time.monotonic()
    output, leftovers = _finish(launcher, marker, 120)
    took = time.monotonic() - killed_at
    print(f"scheduler SIGKILLed: launcher exited {took:.1f} s later with code {launcher.returncode}")
    assert launcher.returncode == 128 + signal.SIGKILL, output[-3000:]
    assert took < 20 and leftovers == [], output[-3000:]  # 10 s grace for the ranks' SIGTERM
    report = json.load(open(logs / "failure.json"))
    assert report["message"].startswith("the MindSpore scheduler on ") and report["host"] in report["message"]
    assert "exited with SIGKILL (code 137)" in report["message"]
    assert (report["process"], report["rank"], report["exit_code"], report["signal"]) == \
        ("scheduler", None, 137, "SIGKILL")
    assert set(report["steps"]) == {"0", "1"} and min(report["steps"].values()) >= 1
    assert report["log"] == str(logs / "scheduler.log") and report["log_tail"]
    assert "FAILED: the MindSpore scheduler on " in output and "last lines of scheduler.log:" in output
    assert "steps reached: rank 0: " in output and "restarts used: 0" in output
