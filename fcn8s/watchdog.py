"""Hang detection by the supervisor, from the ranks' heartbeat files (fcn8s/heartbeat.py).

A rank is hung when its last report is older than ``hang_timeout`` seconds, or, before its first
step finished (start-up, graph compilation), older than ``first_step_timeout``. A rank in the
``eval`` or ``save`` phase is busy, not hung (ranks waiting for rank 0's checkpoint report
``save`` too). Ranks also report ``run`` when a step starts, so the rank that stopped first
can be told from those that then wait for it. A rank that exited is the supervisor's other check.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

from fcn8s.errors import UserError
from fcn8s.heartbeat import BUSY_PHASES, FIRST_STEP_PHASES, read_heartbeat
from fcn8s.rendezvous import Verdict

EXIT_HUNG = 124  # as timeout(1)
DEFAULT_HANG_TIMEOUT = 1200.0  # below HCCL_EXEC_TIMEOUT's 1836 s default: the watchdog acts first and explains
DEFAULT_FIRST_STEP_TIMEOUT = 3600.0
HCCL_SHARE = 2 / 3  # default hang time-out as a share of HCCL_EXEC_TIMEOUT (a hung step's collective starts late)
LOG = logging.getLogger("fcn8s.watchdog")


@dataclass(frozen=True)
class HangLimits:
    """Seconds without progress after which a rank counts as hung."""

    hang_timeout: float
    first_step_timeout: float

    @classmethod
    def below_hccl(cls, hang_timeout: Optional[float], first_step_timeout: float,
                   hccl_exec_timeout: float) -> "HangLimits":
        """The limits for HCCL_EXEC_TIMEOUT ``hccl_exec_timeout``: by default 2/3 of it (at most 1200 s),
        so on Ascend the watchdog names the hung rank before HCCL fails the collective; a
        ``hang_timeout`` the user gave is kept, with a warning when it is not below HCCL's."""
        if hang_timeout is None:
            return cls(min(DEFAULT_HANG_TIMEOUT, round(hccl_exec_timeout * HCCL_SHARE)), first_step_timeout)
        if hang_timeout >= hccl_exec_timeout:
            LOG.warning("hang time-out %.0f s is not below HCCL_EXEC_TIMEOUT %.0f s: on Ascend a hung collective "
                        "fails with HCCL's error first, without naming the rank (lower HANG_TIMEOUT)",
                        hang_timeout, hccl_exec_timeout)
        return cls(hang_timeout, first_step_timeout)

    def exceeded(self, report: Dict, now: float) -> bool:
        """Whether the rank of heartbeat ``report`` has been silent for too long at time ``now``."""
        if report["phase"] in BUSY_PHASES or report["phase"] == "done":
            return False
        limit = self.first_step_timeout if report["phase"] in FIRST_STEP_PHASES else self.hang_timeout
        return now - float(report["time"]) > limit


def hccl_exec_timeout(env: Mapping[str, str], configured: float) -> float:
    """The HCCL_EXEC_TIMEOUT ranks run with: the environment's (it wins, fcn8s/distributed.py), else ``configured``."""
    text = env.get("HCCL_EXEC_TIMEOUT") or str(configured)
    try:
        return float(text)
    except ValueError:
        raise UserError(f"HCCL_EXEC_TIMEOUT={text!r}: expected a number of seconds") from None


def position(report: Dict) -> str:
    """Where in training the rank of heartbeat ``report`` is, e.g. "in step 4"."""
    return {"start": "before its first step", "compile": "in its first step (graph compile)",
            "run": f"in step {report['step'] + 1}"}.get(report["phase"], f"after step {report['step']}")


class Watchdog:
    """Reads each local rank's heartbeat file and names the first hung rank."""

    def __init__(self, log_dir: str, ranks: Iterable[int], limits: HangLimits, host: str) -> None:
        self.paths = {rank: heartbeat_path(log_dir, rank) for rank in ranks}
        self.limits = limits
        self.host = host
        self.started = time.time()

    def last_steps(self) -> Dict[int, int]:
        """Last finished step of every local rank (0 before the first)."""
        return {rank: int((read_heartbeat(path) or {}).get("step", 0)) for rank, path in self.paths.items()}

    def check(self, running: Mapping[int, int]) -> Optional[Tuple[int, Verdict]]:
        """(rank, verdict) when a rank among ``running`` (rank -> pid) is hung, else None.

        When one rank hangs, the others soon wait for it in a collective and go silent too; the
        one named is a stopped process (SIGSTOP), else the one furthest behind, else the oldest.
        """
        now = time.time()
        reports = {rank: read_heartbeat(self.paths[rank]) or {"step": 0, "phase": "start", "time": self.started}
                   for rank in running}
        over = [rank for rank, report in reports.items() if self.limits.exceeded(report, now)]
        if not over:
            return None
        stopped = [rank for rank, pid in running.items() if process_state(pid) == "T"]
        rank = stopped[0] if stopped else min(over, key=lambda r: (_progress(reports[r]), reports[r]["time"]))
        report = reports[rank]
        silent = now - float(report["time"])
        state = " (process stopped)" if stopped else ""
        return rank, Verdict(EXIT_HUNG, f"rank {rank} on {self.host} hung{state}: no progress for {silent:.0f} s "
                                        f"{position(report)}")


def _progress(report: Dict) -> Tuple[int, int]:
    """Order of how far a rank got: its last finished step, then whether it entered the next one."""
    return int(report["step"]), int(report["phase"] in ("run", "compile"))


def process_state(pid: int) -> str:
    """One-letter state of a process from /proc (``T`` = stopped), "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def heartbeat_path(log_dir: str, rank: int) -> str:
    """Where rank ``rank`` started in ``log_dir`` reports its progress (its working directory)."""
    return os.path.join(log_dir, f"rank_{rank}", "heartbeat.json")
