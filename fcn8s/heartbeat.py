"""Per-rank progress reports to the supervisor: a tiny file rewritten once per step, no collective.

The supervisor (``fcn8s.launch``, the pod entrypoint) sets ``FCN8S_HEARTBEAT_FILE`` for each rank;
the trainer writes ``{"step", "phase", "time"}`` there atomically. Phases: ``start`` (process up,
graph not compiled yet), ``compile`` (the first step, which compiles the graph, started),
``run`` (a later step started), ``step`` (a step finished), ``eval`` / ``save``
(long work that is not a hang), ``done``. Without the variable (a rank not started by our supervisor) nothing is written.
The last report is also kept in memory (``Heartbeat.last``) for the in-process watchdog
(fcn8s/rank_watchdog.py) of ranks that no supervisor of ours watches (mpirun, srun).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

HEARTBEAT_ENV = "FCN8S_HEARTBEAT_FILE"
FIRST_STEP_PHASES = ("start", "compile")  # allowed the (long) first-step time-out
BUSY_PHASES = ("eval", "save")  # long but alive: the watchdog does not count them as a hang


class Heartbeat:
    """Writes this rank's progress for its supervisor (a no-op when no file was asked for)."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path if path is not None else os.environ.get(HEARTBEAT_ENV) or None
        self.step = 0
        self.last: Optional[Dict[str, Any]] = None  # the last report, also when no file is written

    def beat(self, phase: str, step: Optional[int] = None) -> None:
        if step is not None:
            self.step = step
        self.last = report = {"step": self.step, "phase": phase, "time": time.time()}
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(report, handle)
        os.replace(tmp, self.path)


def read_heartbeat(path: str) -> Optional[Dict[str, Any]]:
    """The last report in ``path`` (None before the first one)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
