"""Worker for the data-parallel equivalence test (run by the launcher or alone).

Trains a small BatchNorm-free convnet with the project's train step (``make_train_step``, the trainer's
gradient reduction) on a fixed global batch of 4 whose two halves ignore different numbers of pixels
(label 255). As rank r of 2 it trains on samples 2r, 2r+1. Alone it is the reference: per step it takes the
gradient of each half's mean loss (the step's local half), averages the two, and applies that (the step's
second half, no reduction) - the DDP rule: mean over ranks of each rank's mean-loss gradient. Rank 0 saves
the weights. Usage: python -m tests.dp_equivalence_worker OUT
"""
import sys

import numpy as np

import mindspore as ms
import mindspore.nn as nn
from mindspore import amp

from fcn8s.config import load_config
from fcn8s.losses import SegmentationCrossEntropy
from fcn8s.runtime import start
from fcn8s.trainer import make_train_step

GLOBAL_BATCH = 4
IGNORED_ROWS = (2, 2, 9, 12)  # per sample: its first rows are ignored, so the halves have unequal valid pixels


def batch() -> tuple:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(GLOBAL_BATCH, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 21, (GLOBAL_BATCH, 16, 16)).astype(np.int32)
    for sample, rows in enumerate(IGNORED_ROWS):
        labels[sample, :rows] = 255
    return images, labels


def main(out_path: str) -> int:
    ctx = start(load_config(None, ["run.device_target=CPU", "train.seed=7"]))
    net = nn.SequentialCell(nn.Conv2d(3, 8, 3, has_bias=True), nn.ReLU(), nn.Conv2d(8, 21, 1, has_bias=True))
    optimizer = nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=1e-4)
    step = make_train_step(net, SegmentationCrossEntropy(21), optimizer, amp.DynamicLossScaler(1024, 2, 50),
                           ctx.size)
    images, labels = batch()
    share = GLOBAL_BATCH // 2
    halves = [(ms.Tensor(images[k * share:(k + 1) * share]), ms.Tensor(labels[k * share:(k + 1) * share]))
              for k in range(2)]
    for _ in range(3):
        if ctx.distributed:
            step(*halves[ctx.rank])
            continue
        (loss0, grads0), (loss1, grads1) = (step.local(*half) for half in halves)
        step.apply((loss0 + loss1) / 2, ms.mutable(tuple((a + b) / 2 for a, b in zip(grads0, grads1))))
    weights = {p.name: p.asnumpy() for p in net.trainable_params()}
    np.savez(f"{out_path}.rank{ctx.rank}.npz", **weights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
