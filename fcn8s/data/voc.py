"""PASCAL VOC 2012 layout: split lists, JPEG images and palette PNG labels."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import numpy as np
from PIL import Image

from fcn8s.errors import UserError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_VOC_CLASSES = len(VOC_CLASSES)
IGNORE_LABEL = 255


def voc_palette() -> np.ndarray:
    """The (256, 3) uint8 RGB colour map VOC uses for its palette PNGs (index 255 = cream white)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        code, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette[index] = (red, green, blue)
    return palette


@dataclass(frozen=True)
class Sample:
    """One image id with its image and label files, and which dataset the label comes from."""

    sample_id: str
    image_path: str
    label_path: str
    source: str = "voc"


def split_file(voc_root: str, split: str) -> str:
    return os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")


def read_id_list(path: str) -> List[str]:
    """Ids from a split list (one per line, blank lines ignored)."""
    if not os.path.isfile(path):
        raise UserError(f"split list not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return [line.split()[0] for line in handle if line.strip()]


def list_voc_samples(voc_root: str, split: str) -> List[Sample]:
    """Samples of ``ImageSets/Segmentation/<split>.txt`` under a VOC2012 directory."""
    if not os.path.isdir(voc_root):
        raise UserError(f"VOC root not found: {voc_root}")
    return [
        Sample(sid, os.path.join(voc_root, "JPEGImages", f"{sid}.jpg"),
                  os.path.join(voc_root, "SegmentationClass", f"{sid}.png"))
        for sid in read_id_list(split_file(voc_root, split))
    ]


def read_label_png(path: str) -> np.ndarray:
    """Class-index map (H, W) uint8 from a palette, grayscale or VOC-coloured RGB PNG."""
    with Image.open(path) as img:
        if img.mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if img.mode == "RGB":
            return rgb_to_index(np.array(img), path)
        raise UserError(f"{path}: unsupported label image mode {img.mode}")


def rgb_to_index(rgb: np.ndarray, path: str) -> np.ndarray:
    """Map VOC palette colours back to indices; any other colour is an error naming the file."""
    palette = voc_palette().astype(np.int64)
    codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    valid = np.r_[np.arange(NUM_VOC_CLASSES), IGNORE_LABEL]
    lookup = {int(codes[i]): i for i in valid}
    pixels = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(pixels, return_inverse=True)
    unknown = [u for u in uniq if int(u) not in lookup]
    if unknown:
        colour = int(unknown[0])
        raise UserError(f"{path}: RGB label colour {(colour >> 16, (colour >> 8) & 255, colour & 255)} "
                        "is not in the VOC palette")
    mapped = np.array([lookup[int(u)] for u in uniq], dtype=np.uint8)
    return mapped[inverse].reshape(rgb.shape[:2])


def write_label_png(path: str, label: np.ndarray) -> None:
    """Write a class-index map as a VOC-style palette PNG."""
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    img.save(path)
