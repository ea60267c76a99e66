"""In-process hang watchdog of ranks started by mpirun/srun (fcn8s/rank_watchdog.py): units, then real mpirun jobs."""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback

import pytest

from fcn8s.distributed import DistContext
from fcn8s.faults import FaultInjector
from fcn8s.heartbeat import HEARTBEAT_ENV, Heartbeat
from fcn8s.rank_watchdog import PACKAGE_DIR, RankWatchdog, describe_stack
from fcn8s.watchdog import EXIT_HUNG, HangLimits
from tests.conftest import REPO, job_tag
from tests.test_distributed import MPI_ENV, VENV_BIN, _job_pids, _train_args

HOST = "srv1 (198.18.7.2)"


@pytest.fixture(autouse=True)
def no_supervisor(monkeypatch):
    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    monkeypatch.delenv("LOG_DIR", raising=False)


def test_phases_and_limits_follow_the_launchers_watchdog(tmp_path):
    now = [time.time()]
    dog = RankWatchdog(1, HOST, HangLimits(hang_timeout=5, first_step_timeout=60), str(tmp_path),
                       clock=lambda: now[0])
    heartbeat = Heartbeat()
    dog.watch(heartbeat)  # nothing reported yet: starting up, first-step allowance
    now[0] += 30
    assert dog.check() is None
    now[0] += 31
    assert dog.check().startswith(f"rank 1 on {HOST} hung: no progress for 61 s before its first step "
                                  "(phase start, last finished step 0); main thread at ")
    for phase, step, wait, expected in [
            ("compile", None, 59, None),  # the first step compiles the graph: allowed 60 s
            ("step", 1, 4, None),
            ("step", 1, 6, "no progress for 6 s after step 1 (phase step, last finished step 1)"),
            ("run", None, 6, "no progress for 6 s in step 2 (phase run, last finished step 1)"),
            ("eval", None, 600, None), ("save", None, 600, None), ("done", None, 6000, None)]:
        heartbeat.beat(phase, step)
        now[0] = heartbeat.last["time"] + wait
        message = dog.check()
        assert (message is None) if expected is None else (expected in message), (phase, message)
    assert list(tmp_path.iterdir()) == []  # the in-memory heartbeat writes no file


def test_a_stack_inside_mindspore_is_reported_as_possibly_waiting_for_another_rank():
    trainer = os.path.join(PACKAGE_DIR, "trainer.py")
    stack = [traceback.FrameSummary(os.path.join(PACKAGE_DIR, "train.py"), 120, "main"),
             traceback.FrameSummary(trainer, 286, "_train_one"),
             traceback.FrameSummary("/venv/lib/python3.11/site-packages/mindspore/common/api.py", 900, "__call__")]
    assert describe_stack(stack) == ("main thread at fcn8s/trainer.py:286 in _train_one, inside MindSpore "
                                     "(waiting in a collective? another rank may be stuck)")
    assert describe_stack(stack[:2]) == "main thread at fcn8s/trainer.py:286 in _train_one"
    assert describe_stack([]) == "main thread not found"


def _hang_in_a_thread(tmp_path, rank=1):
    """A 'training' thread that starts a watchdog (0.3 s limits) and then hangs in fault injection."""
    fired = threading.Event()
    codes = []

    def exit_process(code):
        codes.append(code)
        fired.set()

    def training():
        dog = RankWatchdog(rank, HOST, HangLimits(0.3, 0.3), str(tmp_path), exit_process=exit_process,
                           poll_seconds=0.05)
        heartbeat = Heartbeat()
        dog.watch(heartbeat)
        dog.thread.start()
        heartbeat.beat("run", 2)
        FaultInjector(rank, f"hang:rank={rank}:step=3").after_step(3)  # sleeps for good (a daemon thread)

    threading.Thread(target=training, daemon=True).start()
    return fired, codes


def test_the_thread_names_the_hung_rank_writes_the_report_and_exits_124(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    fired, codes = _hang_in_a_thread(tmp_path)
    assert fired.wait(10), "the watchdog never fired"
    assert codes == [EXIT_HUNG]
    report = json.load(open(tmp_path / "failure.json"))
    assert (report["rank"], report["host"], report["exit_code"], report["steps"]) == (1, HOST, EXIT_HUNG, {"1": 2})
    assert report["message"].startswith(f"rank 1 on {HOST} hung: no progress for 0 s in step 3 (phase run, last "
                                        "finished step 2); main thread at fcn8s/faults.py:")
    assert report["message"].endswith(" in after_step")  # stuck in our code, not in a collective
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("FAILED: rank 1 on ") and "exit code 124" in errors[0]


def test_the_first_rank_to_fire_keeps_its_report(tmp_path, caplog):
    stale = tmp_path / "failure.json"
    stale.write_text(json.dumps({"message": "a previous run"}))
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    codes = []
    other = RankWatchdog(0, HOST, HangLimits(0.3, 0.3), str(tmp_path), exit_process=codes.append)  # same job
    fired, _ = _hang_in_a_thread(tmp_path, rank=1)  # a previous run's report is replaced
    assert fired.wait(10)
    assert json.load(open(stale))["rank"] == 1
    caplog.clear()
    other.fire("rank 0 on srv1 hung: no progress for 1 s in step 3", 2)  # fires later
    assert codes == [EXIT_HUNG] and json.load(open(stale))["rank"] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"rank 0 on srv1 hung: no progress for 1 s in step 3 ({stale} was written by the rank that "
                      "stopped first)"]


def test_the_watchdog_runs_only_for_ranks_without_our_launcher(tmp_path, monkeypatch):
    limits = HangLimits(1200, 3600)
    two = DistContext(rank=1, size=2, local_rank=1, device_id=1, launcher="openmpi")
    assert RankWatchdog.for_rank(DistContext(), limits, str(tmp_path), HOST) is None  # one process
    dog = RankWatchdog.for_rank(two, limits, str(tmp_path), HOST)
    try:
        assert dog.thread.is_alive() and dog.thread.daemon and dog.report_dir == str(tmp_path) and dog.rank == 1
    finally:
        dog.stop()
    dog.thread.join(10)
    assert not dog.thread.is_alive()
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    dog = RankWatchdog.for_rank(two, limits, str(tmp_path), HOST)
    dog.stop()
    assert dog.report_dir == str(tmp_path / "logs")
    monkeypatch.setenv(HEARTBEAT_ENV, str(tmp_path / "heartbeat.json"))  # fcn8s.launch watches this rank
    assert RankWatchdog.for_rank(two, limits, str(tmp_path), HOST) is None


HANG_TIMEOUT = 10  # a 2-rank CPU step of the small network takes ~1 s


def _rank_pid(marker, rank):
    for pid in _job_pids(marker):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}\0".encode() in env and b"fcn8s.train" in cmdline \
                and b"MS_ROLE=MS_SCHED" not in env:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.parametrize("how", ["live_hang", "sigstop"])
def test_mpirun_job_with_a_hung_rank_stops_naming_it(mindrecord_dir, tmp_path, how):
    out, log = tmp_path / "out", tmp_path / "job.log"
    tag = job_tag()
    marker = f"FCN8S_TEST_MARKER={tag}"
    env = {**os.environ, **MPI_ENV, "HANG_TIMEOUT": str(HANG_TIMEOUT), "FCN8S_TEST_MARKER": tag,
           **({"FCN8S_FAULT": "hang:rank=1:step=3"} if how == "live_hang" else {})}
    with open(log, "w") as handle:
        job = subprocess.Popen([os.path.join(VENV_BIN, "mpirun"), "-n", "2", "--oversubscribe", sys.executable, "-m",
                                "fcn8s.train", *_train_args(mindrecord_dir, out, 500)],
                               cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not re.search(r"\[rank 1/2\] INFO fcn8s.trainer: epoch \d+ step 3/500", log.read_text(errors="replace")):
            assert time.monotonic() < deadline and job.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        if how == "sigstop":
            os.kill(_rank_pid(marker, 1), signal.SIGSTOP)
        hung_at = time.monotonic()
        job.wait(HANG_TIMEOUT + 60)
        took = time.monotonic() - hung_at
        for _ in range(10):  # anything still running (a stopped rank, the MindSpore scheduler)?
            leftovers = _job_pids(marker)
            if not leftovers:
                break
            time.sleep(0.3)
    finally:
        if job.poll() is None:
            job.kill()
        for pid in _job_pids(marker):
            os.kill(pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    print(f"{how}: mpirun exited {job.returncode} {took:.1f} s after the hang (hang timeout {HANG_TIMEOUT} s)")
    assert job.returncode != 0 and took < HANG_TIMEOUT + 15, output[-3000:]
    assert leftovers == [], output[-3000:]
    report = json.load(open(out / "failure.json"))
    assert report["exit_code"] == EXIT_HUNG and "hung: no progress for" in report["message"]
    if how == "live_hang":  # rank 1 itself notices: stuck after step 3's work, before reporting it done
        assert report["rank"] == 1 and report["steps"] == {"1": 2}
        assert "in step 3 (phase run, last finished step 2); main thread at fcn8s/faults.py:" in report["message"]
    else:  # rank 1 is stopped with its thread: rank 0, waiting for it in a collective, notices
        assert report["rank"] == 0 and "another rank may be stuck" in report["message"], report["message"]
    assert f"FAILED: {report['message']}" in output
