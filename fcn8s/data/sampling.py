"""Which samples each rank reads (train: step by step): reproducible, disjoint and resumable.

Epoch ``e`` visits the split in one global order, a permutation seeded by ``(seed, e)`` and equal on
every rank. Each step consumes the next ``batch x ranks`` samples of that order and rank ``r`` takes
positions ``r, r + ranks, ...`` of them, so after ``k`` steps exactly the first ``k x batch x ranks``
samples of the epoch are consumed, whatever the rank count. Resuming (even on a different number
of ranks) skips that many and continues; the tail that does not fill a global batch is left out of
the epoch (a different tail every epoch). Evaluation reads every sample once: rank ``r`` scores
samples ``r, r + ranks, ...`` of the split (:func:`eval_indices`).
"""
from __future__ import annotations

import zlib
from typing import List

import numpy as np


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The global visiting order of epoch ``epoch`` (a permutation of ``range(num_samples)``)."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def steps_in_epoch(num_samples: int, consumed: int, batch_size: int, num_ranks: int) -> int:
    """Full global batches left in an epoch after ``consumed`` samples."""
    return max(num_samples - consumed, 0) // (batch_size * num_ranks)


def rank_indices(num_samples: int, seed: int, epoch: int, consumed: int, batch_size: int,
                 rank: int, num_ranks: int) -> np.ndarray:
    """Sample indices rank ``rank`` reads, in order, for the rest of epoch ``epoch``."""
    remaining = epoch_order(num_samples, seed, epoch)[consumed:]
    usable = steps_in_epoch(num_samples, consumed, batch_size, num_ranks) * batch_size * num_ranks
    return remaining[:usable][rank::num_ranks]


def eval_indices(num_samples: int, rank: int, num_ranks: int) -> List[int]:
    """Sample indices rank ``rank`` scores in evaluation: every sample exactly once over the ranks, in file order."""
    return list(range(rank, num_samples, num_ranks))


def sample_rng(seed: int, epoch: int, file_name: str) -> np.random.Generator:
    """The augmentation random stream of one sample in one epoch (independent of rank and worker)."""
    return np.random.default_rng([seed, epoch, zlib.crc32(file_name.encode())])
