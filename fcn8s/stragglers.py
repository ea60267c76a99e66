"""Stragglers: per-rank step times at each log interval and the rank that keeps the others waiting.

In synchronous data parallel every rank's wall time per step is the same: fast ranks wait for the
slow one inside the gradient all-reduce. What differs is a rank's *own work* per step, the time
before it reaches the collective: fetching its batch plus its forward + backward (the trainer times
them apart from the all-reduce and update on one step per log interval, see
``fcn8s.trainer.TrainStep``). A straggler never waits, so its own work is close to the wall step
time; the others' is shorter by their wait.

At each log interval every rank contributes its own-work seconds per step with one small
collective (:func:`gather_seconds`); :class:`StragglerDetector` then names a rank whose figure is
above ``factor`` x the median of the *other* ranks for ``intervals`` consecutive intervals. The
median of the others (not of all ranks) makes the rule work with two ranks too, where the median
of both would be their mean and a rank could never exceed 2x it.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from fcn8s.distributed import DistContext, sum_across_ranks

MICROSECONDS = 1_000_000
HOST_BYTES = 64


@dataclass(frozen=True)
class Spread:
    """Min / median / max of one interval's per-rank figures, with the ranks at the extremes."""

    min_seconds: float
    min_rank: int
    median_seconds: float
    max_seconds: float
    max_rank: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Spread":
        values = np.asarray(seconds, np.float64)
        low, high = int(np.argmin(values)), int(np.argmax(values))
        return cls(float(values[low]), low, float(np.median(values)), float(values[high]), high)

    def describe(self) -> str:
        return (f"min {self.min_seconds:.3f} s (rank {self.min_rank}) median {self.median_seconds:.3f} s "
                f"max {self.max_seconds:.3f} s (rank {self.max_rank})")


def others_median(seconds: Sequence[float], rank: int) -> float:
    """Median of every rank's figure except ``rank``'s."""
    values = np.asarray(seconds, np.float64)
    return float(np.median(np.delete(values, rank)))


@dataclass(frozen=True)
class Straggler:
    """A rank slower than ``factor`` x the others' median for ``intervals`` (or more) intervals in a row."""

    rank: int
    seconds: float
    others_median: float
    intervals: int

    @property
    def ratio(self) -> float:
        return self.seconds / self.others_median if self.others_median > 0 else float("inf")


@dataclass
class StragglerDetector:
    """Counts, per rank, the consecutive intervals it was slower than ``factor`` x the others' median."""

    factor: float
    intervals: int
    streaks: Dict[int, int] = field(default_factory=dict)

    def update(self, seconds: Sequence[float]) -> List[Straggler]:
        """Feed one interval's per-rank figures; returns the ranks slow for ``intervals`` intervals in a row.

        A rank stays reported every interval while it remains slow; one normal interval resets it.
        With fewer than two ranks there is nothing to compare and nothing is reported.
        """
        if len(seconds) < 2:
            return []
        found = []
        for rank, value in enumerate(seconds):
            reference = others_median(seconds, rank)
            if value > self.factor * reference:
                self.streaks[rank] = self.streaks.get(rank, 0) + 1
            else:
                self.streaks.pop(rank, None)
            if self.streaks.get(rank, 0) >= self.intervals:
                found.append(Straggler(rank, float(value), reference, self.streaks[rank]))
        return found


def gather_seconds(seconds: float, ctx: DistContext) -> np.ndarray:
    """Every rank's ``seconds`` (index = rank), with one collective: rank r fills slot r of a zero vector.

    Sent as whole microseconds (``sum_across_ranks`` is exact for non-negative integers), so the
    result is identical on every rank.
    """
    slots = np.zeros(ctx.size, np.int64)
    slots[int(ctx.rank or 0)] = max(0, int(round(seconds * MICROSECONDS)))
    return sum_across_ranks(slots, ctx).astype(np.float64) / MICROSECONDS


def gather_hosts(ctx: DistContext, host: Optional[str] = None) -> List[str]:
    """Every rank's host name (index = rank), truncated to 64 bytes; one collective, called once."""
    name = (host if host is not None else socket.gethostname()).encode("utf-8", "replace")[:HOST_BYTES]
    table = np.zeros((ctx.size, HOST_BYTES), np.int64)
    table[int(ctx.rank or 0), :len(name)] = np.frombuffer(name, np.uint8)
    table = sum_across_ranks(table, ctx)
    return [bytes(row[row > 0].astype(np.uint8)).decode("utf-8", "replace") for row in table]


class StragglerMonitor:
    """One rank's side of the per-interval comparison; :meth:`interval` is a collective (call on every rank).

    Rank 0 logs the spread line and a warning for each straggler; a straggler also warns in its own log.
    """

    def __init__(self, ctx: DistContext, factor: float, intervals: int, logger: logging.Logger) -> None:
        self.ctx = ctx
        self.detector = StragglerDetector(factor, intervals)
        self.log = logger
        self.hosts: Optional[List[str]] = None

    def interval(self, own_seconds: float) -> Dict[str, object]:
        """Compare this interval's mean own-work seconds per step across ranks; returns metrics.jsonl fields."""
        if self.hosts is None:
            self.hosts = gather_hosts(self.ctx)
        seconds = gather_seconds(own_seconds, self.ctx)
        found = self.detector.update(seconds)
        rank = int(self.ctx.rank or 0)
        if self.ctx.is_main:
            self.log.info("step time across ranks (own work: data + forward/backward, no waiting): %s",
                          Spread.of(seconds).describe())
        for slow in found:
            if self.ctx.is_main or slow.rank == rank:
                self.log.warning(
                    "straggler: rank %d on %s%s is slower than the others for %d log interval(s) in a row: own work "
                    "%.3f s per step = %.1fx the other ranks' median %.3f s (limit %gx); every rank waits for it "
                    "in the gradient all-reduce", slow.rank, self.hosts[slow.rank],
                    " (this rank)" if slow.rank == rank else "", slow.intervals, slow.seconds, slow.ratio,
                    slow.others_median, self.detector.factor)
        return {"rank_step_seconds": [round(float(value), 6) for value in seconds],
                "stragglers": [slow.rank for slow in found]}
