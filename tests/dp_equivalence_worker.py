"""Worker for the data-parallel equivalence test (run by the launcher or alone).

Trains a small BatchNorm-free convnet with the project's train step on a fixed global batch of 4:
alone it sees all 4 samples, as rank r of 2 it sees samples 2r, 2r+1. Rank 0 saves the weights.
Usage: python -m tests.dp_equivalence_worker OUT.npz
"""
import sys

import numpy as np

import mindspore as ms
import mindspore.nn as nn
from mindspore import amp

from fcn8s.config import load_config
from fcn8s.losses import SegmentationCrossEntropy
from fcn8s.runtime import start
from fcn8s.trainer import _no_reduction, make_train_step

GLOBAL_BATCH = 4


def main(out_path: str) -> int:
    ctx = start(load_config(None, ["run.device_target=CPU", "train.seed=7"]))
    net = nn.SequentialCell(nn.Conv2d(3, 8, 3, has_bias=True), nn.ReLU(), nn.Conv2d(8, 21, 1, has_bias=True))
    optimizer = nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=1e-4)
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=ctx.size) if ctx.distributed \
        else _no_reduction
    step = make_train_step(net, SegmentationCrossEntropy(21), optimizer, amp.DynamicLossScaler(1024, 2, 50), reducer)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(GLOBAL_BATCH, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 21, (GLOBAL_BATCH, 16, 16)).astype(np.int32)  # no ignored pixels: equal weights
    share = GLOBAL_BATCH // ctx.size
    mine = slice(ctx.rank * share, (ctx.rank + 1) * share)
    for _ in range(3):
        step(ms.Tensor(images[mine]), ms.Tensor(labels[mine]))
    weights = {p.name: p.asnumpy() for p in net.trainable_params()}
    np.savez(f"{out_path}.rank{ctx.rank}.npz", **weights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
