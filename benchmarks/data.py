"""Data benchmarks, each ratio measured side by side in one run.

    .venv/bin/python benchmarks/data.py [--images 120] [--batches 25]

1. Training pipeline images/s at crop 512, batch 4, 2 map workers: ours
   (``fcn8s.data.pipeline.create_train_dataset``) vs the tutorial's pyfunc pipeline, implemented
   faithfully below (resize whole image, numpy normalise over HWC, copyMakeBorder, crop, flip).
2. ``build_dataset`` throughput with 2 workers vs 1.
Data: synthetic VOC-layout JPEGs of 300-500 px (VOC images are at most 500 px).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import cv2
import numpy as np

import mindspore.dataset as ds

from common import REPO, images_per_second, synthetic_dataset

MEAN = [103.53, 116.28, 123.675]
STD = [57.375, 57.120, 58.395]


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
    """Wall time of ``fcn8s.build_dataset.build`` in this process (interpreter start-up excluded)."""
    from fcn8s.build_dataset import build
    started = time.perf_counter()
    build(voc, out, workers=workers)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240, help="synthetic training images (default 240)")
    parser.add_argument("--batches", type=int, default=25, help="batches timed per pipeline (default 25)")
    args = parser.parse_args()
    from fcn8s.data.mindrecord import dataset_files
    with tempfile.TemporaryDirectory() as work:
        voc = synthetic_dataset(work, args.images, 300, 500, build=False)
        one = build_seconds(voc, os.path.join(work, "mr1"), 1)
        two = build_seconds(voc, os.path.join(work, "mr2"), 2)
        dataset_dir = os.path.join(work, "mr2")
        seed = images_per_second(seed_dataset(dataset_files(dataset_dir, "train")), args.batches)
        ours = images_per_second(our_dataset(dataset_dir), args.batches)
    count = args.images + 4
    print(f"{'benchmark':<44}{'baseline':>12}{'ours':>12}{'ratio':>8}")
    print(f"{'train pipeline img/s (crop 512, 2 workers)':<44}{seed:>12.1f}{ours:>12.1f}{ours / seed:>7.2f}x")
    print(f"{'build_dataset img/s (1 vs 2 workers)':<44}{count / one:>12.1f}{count / two:>12.1f}{one / two:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
