"""Predict segmentation masks for images of any size.

    python -m fcn8s.predict --config configs/cpu_smoke.yaml --ckpt runs/demo/checkpoints/fcn8s-final.ckpt \\
        --input photo.jpg|DIR --out predictions/ [--scales 0.75 1.0 1.25] [--flip]

Writes ``<name>.png`` (VOC palette label map) and ``<name>_overlay.png`` (the input beside the
input blended with the coloured mask) for every image.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from fcn8s.config import add_config_arguments, config_from_args, resolve_path
from fcn8s.data.voc import voc_palette, write_label_png
from fcn8s.errors import UserError, run_cli
from fcn8s.inference import Predictor, add_tta_arguments
from fcn8s.runtime import start

LOG = logging.getLogger("fcn8s.predict")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(path: str) -> List[str]:
    """The image at ``path`` or the images directly inside the directory ``path``, sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"input not found: {path}")
    images = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        raise UserError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: not a readable image")
    return image


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (as given, not normalised) beside the image blended with the coloured mask."""
    colours = voc_palette()[label][:, :, ::-1]  # RGB palette -> BGR
    blended = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)
    return np.concatenate([image, blended], axis=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=resolve_path, help="checkpoint (.ckpt)")
    parser.add_argument("--input", required=True, type=resolve_path, help="an image file or a directory of images")
    parser.add_argument("--out", required=True, type=resolve_path, help="output directory")
    add_tta_arguments(parser)
    add_config_arguments(parser, default_config="configs/voc_fcn8s.yaml")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    paths = list_images(args.input)
    start(cfg)
    predictor = Predictor.from_checkpoint(cfg, args.ckpt)
    os.makedirs(args.out, exist_ok=True)
    for path in tqdm(paths, desc="predict", unit="img"):
        image = read_image(path)
        label = predictor.predict_tta([image], 1, args.scales, args.flip)[0].astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        write_label_png(os.path.join(args.out, f"{stem}.png"), label)
        cv2.imwrite(os.path.join(args.out, f"{stem}_overlay.png"), overlay(image, label))
    LOG.info("wrote %d mask(s) and overlay(s) to %s", len(paths), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
