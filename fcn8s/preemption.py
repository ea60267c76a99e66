"""Graceful stop on SIGTERM/SIGINT: finish the current step, save, exit 128 + signal.

Schedulers preempt jobs with SIGTERM (Kubernetes, Slurm ``scancel``/preemption) and users press
Ctrl-C. The first signal only sets a flag; the trainer checks it between steps, agrees with the
other ranks (so every rank stops after the same step), has rank 0 write a resumable checkpoint and
exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT). A second signal stops at once.

MindSpore replaces the SIGINT handler while it runs graphs with one that sends the process SIGTERM
(``SignalGuard`` in its runtime), so Ctrl-C would look like a scheduler's SIGTERM: :func:`route_sigint`
keeps SIGINT away from signal handlers and hands it to the main thread's Python handler instead.
"""
from __future__ import annotations

import _thread
import ctypes
import logging
import os
import signal
import threading
from types import FrameType
from typing import Dict, Optional

import numpy as np

from fcn8s.distributed import DistContext, sum_across_ranks

LOG = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


SIGINT_THREAD = "sigint-forwarder"


def route_sigint() -> None:
    """Block SIGINT in this thread (and the threads it starts later); a daemon thread waits for it and
    delivers it to the main thread's Python handler. Call once, before MindSpore starts its threads.

    A thread started earlier would still take SIGINT (and run MindSpore's handler): numpy's OpenBLAS
    starts its workers at import, so they are stopped here (OpenBLAS restarts them on demand).
    """
    if any(thread.name == SIGINT_THREAD for thread in threading.enumerate()):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    _stop_openblas_threads()
    threading.Thread(target=_forward_sigint, name=SIGINT_THREAD, daemon=True).start()


def _stop_openblas_threads() -> None:
    with open("/proc/self/maps", encoding="utf-8") as maps:
        libraries = {line.split()[-1] for line in maps if "libopenblas" in line}
    for path in sorted(libraries):
        shutdown = getattr(ctypes.CDLL(path), "blas_thread_shutdown_", None)
        if shutdown is not None:
            shutdown()


def _forward_sigint() -> None:
    """The first SIGINT goes to the main thread's Python handler (run at its next Python instruction); a second
    one exits at once, also when the main thread is stuck in native code, where Python handlers never run."""
    signal.sigwait({signal.SIGINT})
    _thread.interrupt_main(signal.SIGINT)
    signal.sigwait({signal.SIGINT})
    LOG.warning("received SIGINT again: stopping at once")
    os._exit(128 + signal.SIGINT)


class TrainingInterrupted(RuntimeError):
    """Training stopped on request after a complete step (a resumable checkpoint was written)."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}"
                         + (f"; resumable checkpoint {checkpoint}" if checkpoint else "")
                         + "; continue with --resume auto")
        self.exit_code = 128 + signum


class StopRequest:
    """Context manager that turns the first SIGTERM/SIGINT into a stop request."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: Optional[FrameType]) -> None:
        if self.signum is not None:
            raise SystemExit(128 + signum)
        self.signum = signum
        LOG.warning("received %s: stopping after the current step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def agreed(self, ctx: DistContext) -> Optional[int]:
        """The stop signal if any rank received one (all ranks get the same answer), else None."""
        votes = np.array([self.signum or 0], np.int64)
        if not sum_across_ranks(votes, ctx)[0]:
            return None
        return self.signum or signal.SIGTERM
