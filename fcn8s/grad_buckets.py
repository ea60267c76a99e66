"""Gradient all-reduce in buckets (``dist.bucket_mb``), as PyTorch DDP's ``bucket_cap_mb``.

Buckets are filled in backward order (the last layers' gradients, conv6/conv7 and the score layers, are
ready first); the AllReduce ops of one bucket are fused into one by the backend. A bucket's AllReduce depends
only on its own gradients, so it can run while the backward pass of the earlier layers still computes: with
one bucket (``bucket_mb: 0``, MindSpore's default fusion) nothing is sent until the whole backward pass is
done. The sum is elementwise, so the result does not depend on the bucketing.
"""
from __future__ import annotations

from typing import List, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn

MB = 1 << 20


def plan_buckets(sizes: Sequence[int], bucket_bytes: int) -> List[List[int]]:
    """Indices of the gradients in each bucket, in backward order (the last gradient first).

    A bucket is closed before it would exceed ``bucket_bytes``; a gradient larger than that is a bucket of its
    own. ``bucket_bytes`` 0 = one bucket for everything.
    """
    buckets: List[List[int]] = []
    current: List[int] = []
    filled = 0
    for index in reversed(range(len(sizes))):
        if current and bucket_bytes and filled + sizes[index] > bucket_bytes:
            buckets.append(current)
            current, filled = [], 0
        current.append(index)
        filled += sizes[index]
    if current:
        buckets.append(current)
    return buckets


def assign_buckets(parameters: Sequence[ms.Parameter], bucket_mb: float) -> int:
    """Give each parameter the fusion id of its bucket (``Parameter.comm_fusion``, 1 = the first bucket
    filled); returns the number of buckets.

    ``nn.DistributedGradReducer`` puts the id on the gradient's AllReduce and the Ascend and GPU backends fuse
    the AllReduce ops of one id into one, on a contiguous buffer; MindSpore's CPU backend does not fuse (each
    gradient is its own AllReduce there).
    """
    sizes = [4 * int(np.prod(p.shape, dtype=np.int64)) for p in parameters]  # float32 on the wire
    buckets = plan_buckets(sizes, int(bucket_mb * MB))
    for fusion_id, bucket in enumerate(buckets, start=1):
        for index in bucket:
            parameters[index].comm_fusion = fusion_id
    return len(buckets)


def gradient_reducer(parameters: Sequence[ms.Parameter], ranks: int, bucket_mb: float) -> nn.Cell:
    """``reducer(grads) -> grads summed over the ranks`` in the buckets of :func:`assign_buckets`."""
    assign_buckets(parameters, bucket_mb)
    return nn.DistributedGradReducer(parameters, mean=False, degree=ranks)
