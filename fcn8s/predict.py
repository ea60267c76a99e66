"""Predict segmentation masks for images of any size.

    python -m fcn8s.predict --config configs/cpu_smoke.yaml --ckpt runs/demo/checkpoints/fcn8s-final.ckpt \\
        --input photo.jpg|DIR --out predictions/ [--scales 0.75 1.0 1.25] [--flip] [--batch-size 4]

Writes ``<name>.png`` (VOC palette label map) and ``<name>_overlay.png`` (the input beside the
input blended with the coloured mask) for every image. The images of a directory run in batches
(default: the config's eval.batch_size), each padded to the same canvas as eval does, so any mix of
sizes batches; the masks equal those of one image per call while each layer runs the same kernel
for both (``conv_impl: auto`` chooses per call size, see fcn8s/fast_conv.py).
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


def batch_size_arg(text: str) -> int:
    """argparse type for ``--batch-size``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (as given, not normalised) beside the image blended with the coloured mask."""
    colours = voc_palette()[label][:, :, ::-1]  # RGB palette -> BGR
    blended = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)
    return np.concatenate([image, blended], axis=1)


def write_outputs(out_dir: str, path: str, image: np.ndarray, label: np.ndarray) -> None:
    """``<name>.png`` (palette mask) and ``<name>_overlay.png`` for the image read from ``path``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    write_label_png(os.path.join(out_dir, f"{stem}.png"), label)
    cv2.imwrite(os.path.join(out_dir, f"{stem}_overlay.png"), overlay(image, label))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=resolve_path, help="checkpoint (.ckpt)")
    parser.add_argument("--input", required=True, type=resolve_path, help="an image file or a directory of images")
    parser.add_argument("--out", required=True, type=resolve_path, help="output directory")
    parser.add_argument("--batch-size", type=batch_size_arg, metavar="N",
                        help="images per network call (default: the config's eval.batch_size)")
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
    batch_size = min(args.batch_size or cfg.eval.batch_size, len(paths))  # one image: no padding images
    LOG.info("%d image(s), %d per network call", len(paths), batch_size)
    with tqdm(total=len(paths), desc="predict", unit="img") as bar:
        for first in range(0, len(paths), batch_size):
            batch = paths[first:first + batch_size]
            images = [read_image(path) for path in batch]
            labels = predictor.predict_tta(images, batch_size, args.scales, args.flip)
            for path, image, label in zip(batch, images, labels):
                write_outputs(args.out, path, image, label.astype(np.uint8))
            bar.update(len(batch))
    LOG.info("wrote %d mask(s) and overlay(s) to %s", len(paths), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
