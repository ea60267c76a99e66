"""Gradient all-reduce in buckets (``dist.bucket_mb``), as PyTorch DDP's ``bucket_cap_mb``.

Buckets are filled in backward order (the last layers' gradients, conv6/conv7 and the score layers, are
ready first); the AllReduce ops of one bucket are fused into one by the backend. A bucket's AllReduce depends
only on its own gradients, so it can run while the backward pass of the earlier layers still computes: with
one bucket (``bucket_mb: 0``, MindSpore's default fusion) nothing is sent until the whole backward pass is
done. The sum is elementwise, so the result does not depend on the bucketing.

MindSpore's kernel-by-kernel backends (CPU; Ascend at ``jit_level`` O0/O1; GPU) run their AllReduce fusion
pass only when ``comm_fusion`` is enabled in the parallel context, which it is not by default: without
:func:`set_backend_fusion` every gradient would be its own AllReduce whatever its fusion id.
"""
from __future__ import annotations

import logging
from typing import List, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn

LOG = logging.getLogger(__name__)

MB = 1 << 20
# MindSpore's data-parallel fusion pass also splits each fusion id's group at its size threshold (in units of
# at least 256 KB): at 4096 units no group of FCN-8s's 538 MB of gradients is split, so the buckets decide.
NO_SPLIT_THRESHOLD = 4096


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

    ``nn.DistributedGradReducer`` puts the id on the gradient's AllReduce; with :func:`set_backend_fusion` on,
    the backend fuses the AllReduce ops of one id into one, on a contiguous buffer.
    """
    sizes = [4 * int(np.prod(p.shape, dtype=np.int64)) for p in parameters]  # float32 on the wire
    buckets = plan_buckets(sizes, int(bucket_mb * MB))
    for fusion_id, bucket in enumerate(buckets, start=1):
        for index in bucket:
            parameters[index].comm_fusion = fusion_id
    return len(buckets)


def gradient_reducer(parameters: Sequence[ms.Parameter], ranks: int, bucket_mb: float) -> nn.Cell:
    """``reducer(grads) -> grads summed over the ranks`` in the buckets of :func:`assign_buckets`."""
    count = assign_buckets(parameters, bucket_mb)
    LOG.info("gradients are all-reduced in %d bucket(s) (dist.bucket_mb %g)", count, bucket_mb)
    return nn.DistributedGradReducer(parameters, mean=False, degree=ranks)


def set_backend_fusion(mode: str, device_target: str) -> bool:
    """Turn MindSpore's AllReduce fusion on or off for this process (``dist.comm_fusion``); returns whether on.

    ``auto`` is fused on Ascend and GPU, unfused on CPU: there MindSpore 2.10's AllReduce kernel reduces the fused
    inputs as one buffer from the first input's address, and the inputs are not contiguous on CPU (a 2-rank
    job trained with it ends with other weights than unfused; with larger buckets the kernel fails,
    "RingAllReduce Memcpy error"). ``fused`` on CPU compiles the fused graph but its gradients are wrong.
    """
    fused = device_target != "CPU" if mode == "auto" else mode == "fused"
    LOG.info("AllReduce fusion of each bucket: %s (dist.comm_fusion %s, %s)", "on" if fused else "off", mode,
             device_target)
    if fused:
        ms.set_auto_parallel_context(comm_fusion={"allreduce": {"mode": "size", "config": NO_SPLIT_THRESHOLD}})
        if device_target == "CPU":
            LOG.warning("dist.comm_fusion=fused on CPU: MindSpore's CPU AllReduce kernel sums fused buckets "
                        "wrongly; use it to inspect the compiled graph only")
    else:
        ms.set_auto_parallel_context(comm_fusion={"openstate": False})
    return fused
