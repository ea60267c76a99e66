"""Fault injection for resilience drills: ``FCN8S_FAULT=KIND:rank=R:step=S[:code=C][:attempt=A][:seconds=N]``
(off by default).

After finishing step S, rank R (global rank) then
  hang   stops making progress while its process stays alive (Python sleeps; MindSpore's own
         threads keep running, so its cluster heartbeat does not notice),
  exit   exits at once with code C (default 1), without cleanup,
  raise  raises RuntimeError (an ordinary crash: traceback, exit code 1).
``overflow`` acts during step S instead: rank R reports a non-finite loss for that step (as a float16
overflow on one NPU is seen only by that NPU), so every rank must skip the update and shrink the loss
scale together. Every rank runs that step as its two halves, the faulty rank replacing its loss in between.
``slow_eval`` makes rank R's evaluation after step S take N seconds longer (default 30) without a
heartbeat, as a large val split would; the other ranks wait for it in the evaluation's final sum. The
hang watchdog must let it finish.
The fault fires in the job's first run only, or in restart A with ``attempt=A`` (the launcher
gives ranks ``FCN8S_RESTART``), so an automatic restart (fcn8s/restarts.py) can recover from it.
Every rank logs a warning at start when the variable is set, so a drill is never mistaken for a
real failure.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from fcn8s.errors import UserError
from fcn8s.restarts import RESTART_ENV

LOG = logging.getLogger(__name__)
FAULT_ENV = "FCN8S_FAULT"
KINDS = ("hang", "exit", "raise", "overflow", "slow_eval")


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    step: int
    code: int = 1
    attempt: int = 0
    seconds: int = 30


def parse_fault(text: str) -> Fault:
    """``hang:rank=1:step=3`` -> Fault; a UserError naming the variable otherwise."""
    kind, *fields = text.strip().split(":")
    values = dict(field.split("=", 1) for field in fields if "=" in field)
    if kind not in KINDS or len(values) != len(fields) or not {"rank", "step"} <= set(values) \
            or set(values) - {"rank", "step", "code", "attempt", "seconds"} \
            or not all(v.isdigit() for v in values.values()):
        raise UserError(f"{FAULT_ENV}={text!r}: expected KIND:rank=R:step=S[:code=C][:attempt=A][:seconds=N] with "
                        f"KIND one of {', '.join(KINDS)}, e.g. hang:rank=1:step=3")
    return Fault(kind, **{key: int(value) for key, value in values.items()})


class FaultInjector:
    """Triggers the configured fault on its rank and step (nothing when FCN8S_FAULT is unset)."""

    def __init__(self, rank: int, text: Optional[str] = None, attempt: Optional[int] = None) -> None:
        text = os.environ.get(FAULT_ENV, "") if text is None else text
        self.fault = parse_fault(text) if text.strip() else None
        self.rank = rank
        self.attempt = int(os.environ.get(RESTART_ENV) or 0) if attempt is None else attempt
        if self.fault:
            LOG.warning("FAULT INJECTION ON (%s=%s): rank %d will %s %s step %d in %s", FAULT_ENV, text,
                        self.fault.rank, self.fault.kind, "in" if self.fault.kind == "overflow" else "after",
                        self.fault.step,
                        f"restart {self.fault.attempt}" if self.fault.attempt else "the first run")

    def _due(self, step: int, kinds: Tuple[str, ...]) -> bool:
        fault = self.fault
        return bool(fault) and fault.kind in kinds and fault.step == step and fault.attempt == self.attempt

    def overflow_drill(self, step: int) -> bool:
        """Whether the ``overflow`` drill is due at ``step`` in this run (True on every rank)."""
        return self._due(step, ("overflow",))

    def _due_here(self, step: int, kinds: Tuple[str, ...]) -> bool:
        """Whether a fault of ``kinds`` is due at ``step`` and this is its rank."""
        return self._due(step, kinds) and self.fault is not None and self.fault.rank == self.rank

    def overflows_here(self, step: int) -> bool:
        """Whether this rank reports the drill's overflow at ``step``."""
        return self._due_here(step, ("overflow",))

    def slow_evaluation(self, step: int) -> None:
        """The ``slow_eval`` drill: sleep ``seconds`` in the evaluation after ``step`` on the faulty rank."""
        fault = self.fault
        if self._due_here(step, ("slow_eval",)) and fault is not None:
            LOG.warning("FAULT INJECTION: evaluation %d s longer (after step %d)", fault.seconds, step)
            time.sleep(fault.seconds)

    def after_step(self, step: int) -> None:
        fault = self.fault
        if not self._due_here(step, ("hang", "exit", "raise")) or fault is None:
            return
        LOG.warning("FAULT INJECTION: %s now (after step %d)", fault.kind, step)
        if fault.kind == "exit":
            os._exit(fault.code)
        if fault.kind == "raise":
            raise RuntimeError(f"injected fault after step {step} ({FAULT_ENV})")
        while True:  # hang: alive, no progress
            time.sleep(3600)
