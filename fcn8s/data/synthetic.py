"""Generate a small dataset laid out exactly like PASCAL VOC 2012, with learnable content.

Each image has a noisy background and one to three shapes; every foreground class has its own
colour and shape, so a segmentation network can learn it in a few minutes on a CPU. Like VOC,
label PNGs are palette images and object outlines are marked 255 ("ignore").

    python -m fcn8s.data.synthetic --out data/synthetic_voc --train 200 --val 40 --classes 5
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import scipy.io

from fcn8s.data.voc import IGNORE_LABEL, NUM_VOC_CLASSES, write_label_png
from fcn8s.errors import UserError, run_cli
from fcn8s.logs import setup_logging

LOG = logging.getLogger(__name__)
SHAPES = ("rectangle", "ellipse", "triangle")


def class_colour(cls: int) -> Tuple[int, int, int]:
    """A distinct, saturated BGR colour per class (deterministic)."""
    hue = int(179 * ((cls * 0.381966) % 1.0))
    hsv = np.uint8([[[hue, 220, 230]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _draw_shape(canvas: np.ndarray, shape: str, box: Tuple[int, int, int, int], value, thickness: int) -> None:
    x0, y0, x1, y1 = box
    if shape == "rectangle":
        cv2.rectangle(canvas, (x0, y0), (x1, y1), value, thickness)
    elif shape == "ellipse":
        cv2.ellipse(canvas, ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360,
                    value, thickness)
    else:
        pts = np.array([[(x0 + x1) // 2, y0], [x0, y1], [x1, y1]], dtype=np.int32)
        if thickness < 0:
            cv2.fillPoly(canvas, [pts], value)
        else:
            cv2.polylines(canvas, [pts], True, value, thickness)


def make_sample(rng: np.random.Generator, classes: Sequence[int], min_size: int, max_size: int
                ) -> Tuple[np.ndarray, np.ndarray]:
    """One (BGR image uint8, label uint8) pair of random size in [min_size, max_size]."""
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    base = rng.integers(40, 120, size=3)
    image = np.clip(base + rng.normal(0, 18, size=(height, width, 3)), 0, 255).astype(np.uint8)
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.choice(classes))
        bw = int(rng.integers(width // 4, width // 2 + 1))
        bh = int(rng.integers(height // 4, height // 2 + 1))
        x0 = int(rng.integers(0, width - bw))
        y0 = int(rng.integers(0, height - bh))
        box = (x0, y0, x0 + bw, y0 + bh)
        shape = SHAPES[cls % len(SHAPES)]
        colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in class_colour(cls))
        _draw_shape(image, shape, box, colour, -1)
        _draw_shape(label, shape, box, cls, -1)
        _draw_shape(label, shape, box, IGNORE_LABEL, 1)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    return image, label


def generate(out_dir: str, num_train: int, num_val: int, num_classes: int = 5, seed: int = 0,
             min_size: int = 48, max_size: int = 96) -> None:
    """Write ``out_dir/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`` like VOC2012."""
    if not 1 <= num_classes <= NUM_VOC_CLASSES - 1:
        raise UserError(f"--classes must be in 1..{NUM_VOC_CLASSES - 1}, got {num_classes}")
    if num_train < 1 or num_val < 1:
        raise UserError("--train and --val must be >= 1")
    if not 16 <= min_size <= max_size:
        raise UserError(f"image sizes must satisfy 16 <= min ({min_size}) <= max ({max_size})")
    rng = np.random.default_rng(seed)
    classes = list(range(1, num_classes + 1))
    dirs = {name: os.path.join(out_dir, *name.split("/"))
            for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")}
    for path in dirs.values():
        os.makedirs(path, exist_ok=True)
    splits = {"train": [], "val": []}
    for index in range(num_train + num_val):
        split = "train" if index < num_train else "val"
        sample_id = f"2007_{index:06d}"
        image, label = make_sample(rng, classes, min_size, max_size)
        cv2.imwrite(os.path.join(dirs["JPEGImages"], f"{sample_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        write_label_png(os.path.join(dirs["SegmentationClass"], f"{sample_id}.png"), label)
        splits[split].append(sample_id)
    splits["trainval"] = splits["train"] + splits["val"]
    for split, ids in splits.items():
        with open(os.path.join(dirs["ImageSets/Segmentation"], f"{split}.txt"), "w", encoding="utf-8") as handle:
            handle.write("".join(f"{sid}\n" for sid in ids))
    LOG.info("wrote %d train + %d val synthetic VOC samples (%d classes) to %s",
             num_train, num_val, num_classes, out_dir)


def generate_sbd(out_dir: str, num_train: int, num_val: int, num_classes: int = 5, seed: int = 1,
                 reuse_ids: Sequence[str] = (), min_size: int = 48, max_size: int = 96) -> None:
    """Write an SBD-layout tree: ``dataset/img/*.jpg``, ``dataset/cls/*.mat`` (GTcls struct), lists.

    ``reuse_ids`` are added to SBD's train list (as real SBD overlaps VOC ids).
    """
    rng = np.random.default_rng(seed)
    classes = list(range(1, num_classes + 1))
    base = os.path.join(out_dir, "dataset")
    for sub in ("img", "cls"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    fresh = [f"2008_{i:06d}" for i in range(num_train + num_val)]
    lists = {"train": fresh[:num_train] + list(reuse_ids), "val": fresh[num_train:]}
    for sample_id in lists["train"] + lists["val"]:
        image, label = make_sample(rng, classes, min_size, max_size)
        cv2.imwrite(os.path.join(base, "img", f"{sample_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        write_sbd_label(os.path.join(base, "cls", f"{sample_id}.mat"), label)
    for split, ids in lists.items():
        with open(os.path.join(base, f"{split}.txt"), "w", encoding="utf-8") as handle:
            handle.write("".join(f"{sid}\n" for sid in ids))


def write_sbd_label(path: str, label: np.ndarray) -> None:
    """Save a label the way SBD does: struct ``GTcls`` with Segmentation, Boundaries, CategoriesPresent."""
    present = np.setdiff1d(np.unique(label), [0, IGNORE_LABEL]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": label.astype(np.uint8), "Boundaries": np.empty((0, 0)),
                                      "CategoriesPresent": present}})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.data.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (VOC2012 layout)")
    parser.add_argument("--train", type=int, default=200, help="number of training images (default 200)")
    parser.add_argument("--val", type=int, default=40, help="number of validation images (default 40)")
    parser.add_argument("--classes", type=int, default=5, help="foreground classes used, 1..20 (default 5)")
    parser.add_argument("--min-size", type=int, default=48, help="smallest image side in pixels (default 48)")
    parser.add_argument("--max-size", type=int, default=96, help="largest image side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    generate(args.out, args.train, args.val, args.classes, args.seed, args.min_size, args.max_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
