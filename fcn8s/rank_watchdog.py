"""In-process hang watchdog for ranks that no supervisor of ours watches (mpirun, srun, msrun).

Under ``fcn8s.launch`` / the pod entrypoint (``FCN8S_HEARTBEAT_FILE`` set) the launcher reads every
rank's heartbeat file (fcn8s/watchdog.py) and this module does nothing. Ranks started directly by
``mpirun -n N python -m fcn8s.train``, Slurm's ``srun`` or ``msrun`` have no such supervisor, so each
of them runs a daemon thread that reads its own trainer's in-memory heartbeat (``Heartbeat.last``)
under the same rules (:class:`HangLimits`: ``--hang-timeout``, the larger first-step allowance,
``eval``/``save`` are busy, ``done`` is finished). When the rank made no progress for too long the
thread writes ``failure.json`` (in ``LOG_DIR`` if set, else ``run.output_dir``; the first rank to
fire writes it), logs one ERROR line naming rank, host, phase, last finished step and where the
main thread is, dumps the Python stacks to stderr and ends the process with exit code 124
(``os._exit``: the main thread may be stuck in native code). mpirun then stops the other ranks;
Slurm does with ``srun --kill-on-bad-exit=1``, msrun with ``--join=True``.

A stopped process (SIGSTOP) cannot report itself, as its threads are stopped too. The other ranks
then wait for it in their next collective and their watchdogs fire; their message says the main
thread is inside MindSpore and that it may be waiting in a collective for another rank.
"""
from __future__ import annotations

import faulthandler
import fcntl
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from fcn8s.distributed import DistContext
from fcn8s.failure import write_failure_report
from fcn8s.heartbeat import HEARTBEAT_ENV, Heartbeat
from fcn8s.watchdog import EXIT_HUNG, HangLimits, position

LOG = logging.getLogger("fcn8s.rank_watchdog")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPORT_DIR_ENV = "LOG_DIR"  # failure.json goes there when set (as with the launcher), else run.output_dir


class RankWatchdog:
    """Watches one rank's own heartbeat from a daemon thread; ends the process when it is hung."""

    def __init__(self, rank: int, host: str, limits: HangLimits, report_dir: str, *,
                 clock: Callable[[], float] = time.time, exit_process: Callable[[int], Any] = os._exit,
                 poll_seconds: Optional[float] = None) -> None:
        self.rank, self.host, self.limits, self.report_dir = rank, host, limits, report_dir
        self.clock, self.exit_process = clock, exit_process
        self.poll_seconds = poll_seconds or max(0.1, min(5.0, limits.hang_timeout / 20))
        self.started = clock()
        self.created = time.time()  # a failure.json newer than this was written by a rank of this job
        self.watched_thread = threading.get_ident()  # the thread that trains (the one that made us)
        self.heartbeat: Optional[Heartbeat] = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fcn8s-rank-watchdog", daemon=True)

    @classmethod
    def for_rank(cls, ctx: DistContext, limits: HangLimits, output_dir: str, host: str) -> Optional["RankWatchdog"]:
        """A started watchdog for this rank, or None under our launcher or in a single-process run."""
        if os.environ.get(HEARTBEAT_ENV) or not ctx.distributed:
            return None
        report_dir = os.environ.get(REPORT_DIR_ENV) or output_dir
        dog = cls(int(ctx.rank or 0), host, limits, report_dir)
        dog.thread.start()
        LOG.info("hang watchdog: stop the job (exit %d) after %.0f s without progress (%.0f s before the first "
                 "step ends); failure report in %s", EXIT_HUNG, limits.hang_timeout, limits.first_step_timeout,
                 report_dir)
        return dog

    def watch(self, heartbeat: Heartbeat) -> None:
        """Follow the trainer's heartbeat (until then the rank counts as starting up)."""
        self.heartbeat = heartbeat

    def stop(self) -> None:
        self.stopped.set()

    def report(self) -> Dict[str, Any]:
        """The rank's last progress report ({"step", "phase", "time"})."""
        last = self.heartbeat.last if self.heartbeat is not None else None
        return last or {"step": 0, "phase": "start", "time": self.started}

    def check(self) -> Optional[str]:
        """The hang message when the rank made no progress for too long, else None."""
        return self.verdict(self.report(), self.clock())

    def verdict(self, report: Dict[str, Any], now: float) -> Optional[str]:
        if self.stopped.is_set() or not self.limits.exceeded(report, now):
            return None
        frame = sys._current_frames().get(self.watched_thread)
        where_main = describe_stack(traceback.extract_stack(frame) if frame is not None else [])
        return (f"rank {self.rank} on {self.host} hung: no progress for {now - float(report['time']):.0f} s "
                f"{position(report)} (phase {report['phase']}, last finished step {report['step']}); {where_main}")

    def _run(self) -> None:
        while not self.stopped.wait(self.poll_seconds):
            report = self.report()
            message = self.verdict(report, self.clock())
            if message:
                self.fire(message, int(report["step"]))
                return

    def fire(self, message: str, step: int) -> None:
        """Report the hang (one ERROR line, failure.json, stacks on stderr) and end the process with 124."""
        try:
            self._write_report(message, step)
        except OSError as err:
            LOG.error("%s (could not write failure.json in %s: %s)", message, self.report_dir, err)
        try:
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
        except (OSError, ValueError, AttributeError):
            pass  # stderr closed or replaced: the log line above is what matters
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit_process(EXIT_HUNG)

    def _write_report(self, message: str, step: int) -> None:
        """failure.json, unless another rank of this job wrote it first (it fired first)."""
        os.makedirs(self.report_dir, exist_ok=True)
        path = os.path.join(self.report_dir, "failure.json")
        lock = os.open(self.report_dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # ranks on this host: one writes at a time
            except OSError:
                pass  # a file system without locks: the last writer wins
            if os.path.exists(path) and os.path.getmtime(path) >= self.created:
                LOG.error("%s (%s was written by the rank that stopped first)", message, path)
                return
            write_failure_report(self.report_dir, message=message, exit_code=EXIT_HUNG, host=self.host,
                                 rank=self.rank, steps={self.rank: step}, log_path=None)
        finally:
            os.close(lock)


def describe_stack(stack: List[traceback.FrameSummary]) -> str:
    """Where a thread is: its innermost frame in fcn8s, and whether it is inside MindSpore below that."""
    if not stack:
        return "main thread not found"
    ours = [k for k, frame in enumerate(stack) if frame.filename.startswith(PACKAGE_DIR + os.sep)]
    at = ours[-1] if ours else len(stack) - 1
    frame = stack[at]
    name = os.path.relpath(frame.filename, os.path.dirname(PACKAGE_DIR)) if ours else frame.filename
    text = f"main thread at {name}:{frame.lineno} in {frame.name}"
    if any(f"{os.sep}mindspore{os.sep}" in deeper.filename for deeper in stack[at + 1:]):
        text += ", inside MindSpore (waiting in a collective? another rank may be stuck)"
    return text
