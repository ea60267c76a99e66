"""Input pipeline vs training step: images/s each can sustain, measured side by side in one run.

    .venv/bin/python benchmarks/pipeline.py [--images 64] [--batches 30]

The pipeline is ``fcn8s.data.pipeline.create_train_dataset`` (decode, random scale/crop/flip,
CHW uint8 crops, batch 4) over VOC-sized synthetic JPEGs (300-500 px) at crop 64 (CPU config) and
512 (the VOC recipe). Its normalisation runs in the train step (``fcn8s.data.normalize.TrainInput``),
timed here alone, jitted, on uint8 batches of 4 x 512 px. The step is one CPU training step of
FCN-8s at crop 64, batch 4.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import REPO, pipeline_rate, synthetic_dataset


def train_pipeline_rate(dataset_dir: str, crop: int, batches: int) -> float:
    """Images/s of the training pipeline (after its first batch)."""
    from fcn8s.config import load_config
    from fcn8s.data.pipeline import create_train_dataset

    cfg = load_config(os.path.join(REPO, "configs", "cpu_smoke.yaml"),
                      [f"data.mindrecord_dir={dataset_dir}", f"data.crop_size={crop}", "train.batch_size=4"])
    return pipeline_rate(create_train_dataset(cfg), batches)[0]


def train_input_rate(crop: int = 512, batch: int = 4, calls: int = 20) -> float:
    """Images/s of the in-graph normalisation alone (``TrainInput``, jitted) on uint8 batches."""
    import numpy as np

    import mindspore as ms

    from fcn8s.data.normalize import TrainInput
    from fcn8s.data.transforms import PAD_LABEL

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    prepare = TrainInput((103.53, 116.28, 123.675), (57.375, 57.120, 58.395))

    @ms.jit
    def run(images: ms.Tensor, labels: ms.Tensor):
        return prepare(images, labels)

    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.integers(0, 256, (batch, 3, crop, crop), dtype=np.uint8))
    labels = ms.Tensor(rng.choice(np.array([0, 1, 255, PAD_LABEL], np.uint8), (batch, crop, crop)))
    run(images, labels)[0].asnumpy()
    started = time.perf_counter()
    for _ in range(calls):
        run(images, labels)[0].asnumpy()
    return batch * calls / (time.perf_counter() - started)


def step_rate(steps: int = 4) -> float:
    """Images/s of FCN-8s training steps at batch 4 x 64 px on CPU (after compile)."""
    import numpy as np

    import mindspore as ms
    import mindspore.nn as nn
    from mindspore import amp

    from fcn8s.losses import SegmentationCrossEntropy
    from fcn8s.model import FCN8s
    from fcn8s.trainer import make_train_step

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    net = FCN8s(21, "auto")
    net.set_train(True)
    optimizer = nn.Momentum(net.trainable_params(), 0.01, 0.9, weight_decay=1e-4)
    step = make_train_step(net, SegmentationCrossEntropy(21), optimizer, amp.DynamicLossScaler(1024, 2, 50))
    images = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32))
    labels = ms.Tensor(np.random.default_rng(0).integers(0, 21, (4, 64, 64)).astype(np.int32))
    step(images, labels)[0].asnumpy()
    started = time.perf_counter()
    for _ in range(steps):
        step(images, labels)[0].asnumpy()
    return 4 * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="synthetic training images (default 64)")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per crop size (default 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        dataset = synthetic_dataset(work, args.images, 300, 500)
        rates = {crop: train_pipeline_rate(dataset, crop, args.batches) for crop in (64, 512)}
    normalise = train_input_rate()
    train = step_rate()
    print(f"{'stage':<40}{'images/s':>10}")
    print(f"{'pipeline, crop 64 (2 workers)':<40}{rates[64]:>10.1f}")
    print(f"{'pipeline, crop 512 (2 workers)':<40}{rates[512]:>10.1f}")
    print(f"{'in-graph TrainInput, 512 px, batch 4 (CPU)':<40}{normalise:>10.1f}")
    print(f"{'train step, 64 px, batch 4 (CPU)':<40}{train:>10.1f}")
    print(f"pipeline / step at 64 px: {rates[64] / train:.1f}x (data is not the bottleneck when > 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
