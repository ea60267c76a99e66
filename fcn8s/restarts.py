"""Bounded automatic restart: which failures a restart can fix, the back-off, the arguments.

The supervisor (``fcn8s.launch``, the pod entrypoint) restarts the whole group of ranks after a
rank died (any exit code but the ones below), hung (exit 124) or the scheduler died, at most
``--max-restarts`` times per job, waiting a back-off that doubles from ``--restart-backoff``.
Restarted ranks run with ``--resume auto`` (newest complete checkpoint) and get
``FCN8S_RESTART=<n>`` (0 on the first start), so drills (fcn8s/faults.py) fire once.
Never restarted: bad input (exit 2), divergence (exit 3), ranks that stopped because they were
asked to (exit 130/143), a signal sent to the launcher, a lost node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence

from fcn8s.errors import EXIT_DIVERGED, EXIT_USER_ERROR

if TYPE_CHECKING:
    from fcn8s.rendezvous import Verdict

RESTART_ENV = "FCN8S_RESTART"
MAX_BACKOFF_SECONDS = 300.0
# Exit codes a restart cannot fix, and why.
FINAL_CODES = {EXIT_USER_ERROR: "bad input", EXIT_DIVERGED: "divergence",
               130: "stopped by SIGINT", 143: "stopped by SIGTERM"}


def final_reason(verdict: "Verdict") -> Optional[str]:
    """Why no restart can fix this failure (None: a restart may)."""
    if not verdict.restartable:
        return "it cannot be fixed by restarting"
    if verdict.code in FINAL_CODES:
        return f"exit code {verdict.code} ({FINAL_CODES[verdict.code]}) is not fixed by restarting"
    return None


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``max_restarts`` restarts per job, the n-th after ``backoff * 2**(n-1)`` seconds."""

    max_restarts: int = 0
    backoff: float = 10.0

    def refusal(self, verdict: "Verdict", used: int) -> Optional[str]:
        """Why ``verdict`` ends the job after ``used`` restarts (None: restart)."""
        if used >= self.max_restarts:
            return f"all {self.max_restarts} restart(s) used" if self.max_restarts else "restarts are off"
        return final_reason(verdict)

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number ``restart`` (1-based)."""
        return min(self.backoff * 2 ** (restart - 1), MAX_BACKOFF_SECONDS)


def restart_arguments(module_args: Sequence[str]) -> List[str]:
    """fcn8s.train arguments for a restart: ``--resume auto`` first, so a ``--resume`` the user gave wins."""
    return ["--resume", "auto", *module_args]
