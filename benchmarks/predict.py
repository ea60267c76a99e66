"""Prediction one image per network call vs in batches: images/s of each, measured side by side in one run.

    .venv/bin/python benchmarks/predict.py [--config configs/cpu_smoke.yaml] [--images 8] [--batch-size 4] [--rounds 3]

The full FCN-8s (conv6/conv7 4096 wide, untrained: speed does not depend on the weights) predicts
synthetic VOC-shaped JPEGs of mixed sizes on the config's eval canvas (``eval.image_size``),
through ``fcn8s.inference.Predictor.predict_tta`` as ``fcn8s.predict`` calls it: before,
one image per call (batch 1, what the CLI did); after, ``--batch-size`` images per call (what it
does now). Both shapes are compiled before timing; rounds alternate between the two so machine
noise hits both; the median round is reported, in wall time and in this process's CPU time per
image (which other jobs on a shared machine disturb much less). Images are decoded beforehand (the
same cost either way). Also checks that both give the same masks.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time
from typing import Callable, List, Tuple

from common import REPO, synthetic_dataset


def timed_rate(run: Callable[[], List], images: int) -> Tuple[float, float]:
    """(images/s wall time, CPU s per image of this process, all threads) of one ``run()``."""
    cpu_started, started = _cpu_seconds(), time.perf_counter()
    run()
    return images / (time.perf_counter() - started), (_cpu_seconds() - cpu_started) / images


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "cpu_smoke.yaml"),
                        help="config whose model, canvas (eval.image_size) and device are used")
    parser.add_argument("--images", type=int, default=8, help="synthetic images to predict (default 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per call when batched (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per mode (default 3)")
    args = parser.parse_args()

    import cv2
    import numpy as np

    from fcn8s.config import load_config
    from fcn8s.inference import Predictor
    from fcn8s.model import build_model, resolve_conv_impl
    from fcn8s.runtime import resolve_device_target, start

    cfg = load_config(args.config)
    start(cfg)
    with tempfile.TemporaryDirectory() as work:
        voc = synthetic_dataset(work, args.images, 48, 2 * cfg.eval.image_size, build=False)
        paths = sorted(glob.glob(os.path.join(voc, "JPEGImages", "*.jpg")))[:args.images]
        images = [cv2.imread(path) for path in paths]
    conv_impl = resolve_conv_impl(cfg.model.conv_impl, resolve_device_target(cfg.run.device_target))
    predictor = Predictor(build_model(cfg.model, conv_impl), cfg.eval.image_size, cfg.data.image_mean,
                          cfg.data.image_std)

    def one_at_a_time() -> List:
        return [predictor.predict_tta([image], 1)[0] for image in images]

    def batched() -> List:
        return [mask for first in range(0, len(images), args.batch_size)
                for mask in predictor.predict_tta(images[first:first + args.batch_size], args.batch_size)]

    same = all(np.array_equal(a, b) for a, b in zip(one_at_a_time(), batched()))  # also compiles both shapes
    rounds = {"one": [], "batched": []}
    for _ in range(args.rounds):
        rounds["one"].append(timed_rate(one_at_a_time, len(images)))
        rounds["batched"].append(timed_rate(batched, len(images)))
    rate = {mode: statistics.median(r for r, _ in results) for mode, results in rounds.items()}
    cpu = {mode: statistics.median(c for _, c in results) for mode, results in rounds.items()}
    sides = [side for image in images for side in image.shape[:2]]
    print(f"{len(images)} images (sides {min(sides)}-{max(sides)} px), canvas {cfg.eval.image_size}, "
          f"fc_channels {cfg.model.fc_channels}, conv_impl {conv_impl}, median of {args.rounds} rounds")
    print(f"{'mode':<24}{'images/s':>10}{'s/image':>10}{'CPU s/image':>13}   rounds (images/s)")
    for mode, label in (("one", "one image per call"), ("batched", f"batch {args.batch_size} per call")):
        print(f"{label:<24}{rate[mode]:>10.2f}{1 / rate[mode]:>10.3f}{cpu[mode]:>13.3f}   "
              f"{' '.join(f'{r:.2f}' for r, _ in rounds[mode])}")
    print(f"batched / one at a time: {rate['batched'] / rate['one']:.2f}x images/s, "
          f"{cpu['one'] / cpu['batched']:.2f}x less CPU per image; masks identical: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
