"""Data benchmarks, each ratio measured side by side in one run (repetitions interleaved).

    .venv/bin/python benchmarks/data.py [--images 1200] [--batches 100] [--repeats 3]

1. Training pipeline images/s at crop 512, batch 4, 2 map workers: ours
   (``fcn8s.data.pipeline.create_train_dataset``: uint8 crops, normalisation left to the train
   step's ``TrainInput``) vs the tutorial's pyfunc pipeline, implemented faithfully below (resize
   the whole image, numpy normalise over HWC, copyMakeBorder, crop, flip, float32 CHW out).
   Both read the same MindRecord files; seed and ours alternate, ``--repeats`` times each, and
   each run is timed after 20 untimed batches.
2. ``build_dataset`` throughput with 2 workers vs 1 (also alternated).
Data: synthetic VOC-layout JPEGs of 300-500 px (VOC images are at most 500 px).
Also printed: CPU ms per image (process user + system time over all threads), which other jobs
on a shared machine disturb much less than wall time, and the 1-minute load average.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from typing import Dict, List, Tuple

import cv2
import numpy as np

import mindspore.dataset as ds

from common import REPO, pipeline_rate, synthetic_dataset

MEAN = [103.53, 116.28, 123.675]
STD = [57.375, 57.120, 58.395]
WARMUP_BATCHES = 20  # untimed: drains the seed's 40-sample shuffle buffer and the engine's queues


def seed_preprocess(image, label, crop=512, min_scale=0.5, max_scale=2.0, ignore_label=255):
    """The tutorial's SegDataset.preprocess_dataset, unchanged in substance."""
    image_out = cv2.imdecode(np.frombuffer(image, dtype=np.uint8), cv2.IMREAD_COLOR)
    label_out = cv2.imdecode(np.frombuffer(label, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    sc = np.random.uniform(min_scale, max_scale)
    new_h, new_w = int(sc * image_out.shape[0]), int(sc * image_out.shape[1])
    image_out = cv2.resize(image_out, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    label_out = cv2.resize(label_out, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    image_out = (image_out - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    out_h, out_w = max(new_h, crop), max(new_w, crop)
    pad_h, pad_w = out_h - new_h, out_w - new_w
    if pad_h > 0 or pad_w > 0:
        image_out = cv2.copyMakeBorder(image_out, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        label_out = cv2.copyMakeBorder(label_out, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=ignore_label)
    offset_h = np.random.randint(0, out_h - crop + 1)
    offset_w = np.random.randint(0, out_w - crop + 1)
    image_out = image_out[offset_h: offset_h + crop, offset_w: offset_w + crop, :]
    label_out = label_out[offset_h: offset_h + crop, offset_w: offset_w + crop]
    if np.random.uniform(0.0, 1.0) > 0.5:
        image_out = image_out[:, ::-1, :]
        label_out = label_out[:, ::-1]
    return image_out.transpose((2, 0, 1)).copy(), label_out.copy().astype("int32")


def seed_dataset(files):
    dataset = ds.MindDataset(files, columns_list=["data", "label"], shuffle=True, num_parallel_workers=2)
    dataset = dataset.map(operations=seed_preprocess, input_columns=["data", "label"],
                          output_columns=["data", "label"], num_parallel_workers=2)
    return dataset.shuffle(buffer_size=40).batch(4, drop_remainder=True)


def our_dataset(dataset_dir):
    from fcn8s.config import load_config
    from fcn8s.data.pipeline import create_train_dataset
    cfg = load_config(os.path.join(REPO, "configs", "voc_fcn8s.yaml"),
                      [f"data.mindrecord_dir={dataset_dir}", "data.num_workers=2"])
    return create_train_dataset(cfg)


def build_seconds(voc: str, out: str, workers: int) -> float:
    """Wall time of ``fcn8s.build_dataset.build`` in this process (start-up excluded, output silenced)."""
    from fcn8s.build_dataset import build
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        build(voc, out, workers=workers)
    return time.perf_counter() - started


def load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1200,
                        help="synthetic training images (default 1200; fewer lets the build's fixed start-up cost weigh)")
    parser.add_argument("--batches", type=int, default=100, help="batches timed per pipeline run (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved (default 3)")
    args = parser.parse_args()
    from fcn8s.data.mindrecord import dataset_files
    pipeline: Dict[str, List[Tuple[float, float]]] = {"seed": [], "ours": []}
    build_s: Dict[int, List[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as work:
        voc = synthetic_dataset(work, args.images, 300, 500, build=False)
        dataset_dir = os.path.join(work, "mr")
        for rep in range(args.repeats):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                build_s[workers].append(build_seconds(voc, os.path.join(work, f"mr{workers}"), workers))
            print(f"build rep {rep + 1}: 1 worker {build_s[1][-1]:.2f} s, 2 workers {build_s[2][-1]:.2f} s, "
                  f"load {load():.2f}", flush=True)
        os.rename(os.path.join(work, "mr2"), dataset_dir)
        for rep in range(args.repeats):
            for side in ("seed", "ours") if rep % 2 == 0 else ("ours", "seed"):
                files = dataset_files(dataset_dir, "train")
                dataset = seed_dataset(files) if side == "seed" else our_dataset(dataset_dir)
                pipeline[side].append(pipeline_rate(dataset, args.batches, warmup=WARMUP_BATCHES))
            (seed_rate, seed_cpu), (our_rate, our_cpu) = pipeline["seed"][-1], pipeline["ours"][-1]
            print(f"pipeline rep {rep + 1}: seed {seed_rate:.1f} img/s ({seed_cpu:.2f} CPU ms/img), "
                  f"ours {our_rate:.1f} img/s ({our_cpu:.2f} CPU ms/img), ratio {our_rate / seed_rate:.2f}x, "
                  f"load {load():.2f}", flush=True)
    count = args.images + 4
    seed, ours = (statistics.median(rate for rate, _ in pipeline[side]) for side in ("seed", "ours"))
    seed_cpu, our_cpu = (statistics.median(cpu for _, cpu in pipeline[side]) for side in ("seed", "ours"))
    one, two = statistics.median(build_s[1]), statistics.median(build_s[2])
    print(f"\nmedians of {args.repeats} interleaved runs; load average now {load():.2f}")
    print(f"{'benchmark':<44}{'baseline':>10}{'ours':>10}{'ratio':>8}{'goal':>7}")
    print(f"{'train pipeline img/s (crop 512, 2 workers)':<44}{seed:>10.1f}{ours:>10.1f}{ours / seed:>7.2f}x{'3x':>7}")
    print(f"{'train pipeline CPU ms per image':<44}{seed_cpu:>10.2f}{our_cpu:>10.2f}{seed_cpu / our_cpu:>7.2f}x{'':>7}")
    print(f"{'build_dataset img/s (1 vs 2 workers)':<44}{count / one:>10.1f}{count / two:>10.1f}{one / two:>7.2f}x"
          f"{'1.8x':>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
