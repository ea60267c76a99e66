"""Whole-image prediction at original resolution: pad to a fixed canvas, run, crop back.

Optional test-time augmentation (as the MindSpore model zoo's segmentation eval): several scales
and a horizontal flip, class probabilities averaged.
"""
from __future__ import annotations

import argparse
import math
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

import mindspore as ms
import mindspore.nn as nn

from fcn8s.checkpoint import load_weights
from fcn8s.config import Config
from fcn8s.data.transforms import prepare_eval_image, restore_prediction, restore_scores
from fcn8s.model import OUTPUT_STRIDE, build_model, resolve_conv_impl
from fcn8s.runtime import resolve_device_target

MAX_SCALE = 4.0  # beyond this the canvas (image_size * scale squared) is rarely worth its memory


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=2, keepdims=True))
    return shifted / shifted.sum(axis=2, keepdims=True)


def _rescale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def parse_scale(text: str) -> float:
    """argparse type for ``--scales``: a positive number (with a hint when an override lands here)."""
    try:
        scale = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid scale {text!r} (put KEY=VALUE overrides before --scales, or use --set)") from None
    if not 0 < scale <= MAX_SCALE:
        raise argparse.ArgumentTypeError(f"scale must be in (0, {MAX_SCALE}], got {text}")
    return scale


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scales`` and ``--flip`` for the eval and predict CLIs."""
    parser.add_argument("--scales", type=parse_scale, nargs="+", default=[1.0], metavar="S",
                        help="test-time scales, probabilities averaged (default 1.0; the model zoo's "
                             f"multi-scale eval uses 0.5 0.75 1.0 1.25 1.75; each in (0, {MAX_SCALE}])")
    parser.add_argument("--flip", action="store_true",
                        help="also run the horizontally mirrored image and average (doubles the work)")


def canvas_size(image_size: int, scale: float) -> int:
    """Canvas side for ``scale``: ``image_size * scale`` rounded up to a multiple of the output stride."""
    return max(OUTPUT_STRIDE, math.ceil(image_size * scale / OUTPUT_STRIDE) * OUTPUT_STRIDE)


class Predictor:
    """Predicts class maps for BGR images of any size with one compiled input shape per scale."""

    @classmethod
    def from_checkpoint(cls, cfg: Config, ckpt: str) -> "Predictor":
        """The configured network (kernels chosen for this device) with weights from ``ckpt``."""
        conv_impl = resolve_conv_impl(cfg.model.conv_impl, resolve_device_target(cfg.run.device_target))
        net = build_model(cfg.model, conv_impl)
        load_weights(net, ckpt)
        return cls(net, cfg.eval.image_size, cfg.data.image_mean, cfg.data.image_std)

    def __init__(self, net: nn.Cell, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.net = net
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.net.set_train(False)

    def _logits(self, images: Sequence[np.ndarray], batch_size: int, size: int
                ) -> Iterator[Tuple[np.ndarray, Tuple[int, int]]]:
        """(logits (C, size, size), valid (h, w)) per image; batches are padded to ``batch_size``."""
        for start in range(0, len(images), batch_size):
            prepared = [prepare_eval_image(img, size, self.mean, self.std) for img in images[start:start + batch_size]]
            batch = np.zeros((batch_size, 3, size, size), np.float32)
            for i, (canvas, _) in enumerate(prepared):
                batch[i] = canvas
            logits = self.net(ms.Tensor(batch)).asnumpy()
            for i, (_, valid) in enumerate(prepared):
                yield logits[i], valid

    def scaled_batch(self, batch_size: int, canvas: int) -> int:
        """Images per call on a ``canvas`` so that no call holds more pixels than ``batch_size`` at ``image_size``.

        Besides memory this keeps CPU convolutions on the fast matmul path (fast_conv's 'auto'
        bound is per call), e.g. batch 4 at 1.75x runs as batch 1 on the larger canvas.
        """
        return max(1, min(batch_size, batch_size * self.image_size ** 2 // canvas ** 2))

    def predict(self, images: Sequence[np.ndarray], batch_size: int) -> List[np.ndarray]:
        """Class-index maps (H, W) int64, one per image, same size as each input."""
        return [restore_prediction(logits, valid, img.shape[:2])
                for (logits, valid), img in zip(self._logits(images, batch_size, self.image_size), images)]

    def probabilities_tta(self, images: Sequence[np.ndarray], batch_size: int, scales: Sequence[float] = (1.0,),
                          flip: bool = False) -> List[np.ndarray]:
        """Class probabilities (H, W, C) float32 averaged over ``scales`` x (image, mirrored image).

        At scale s the image is resized by s and run on a canvas of ``image_size * s`` (rounded up
        to 32), so large scales are not shrunk back to ``image_size``. The mirror is taken before
        padding and its output mirrored back, so with ``flip`` the result for a mirrored input is
        exactly the mirrored result (at scale 1 nothing is resampled). Each output is resized
        once, from its valid region straight to the original size. Larger canvases run in smaller
        batches (:meth:`scaled_batch`) so memory per call stays that of ``batch_size`` at scale 1.
        """
        totals: List[Optional[np.ndarray]] = [None] * len(images)
        for scale in scales:
            variants = [_rescale(img, scale) for img in images]
            if flip:
                variants += [np.ascontiguousarray(img[:, ::-1]) for img in variants]
            canvas = canvas_size(self.image_size, scale)
            outputs = self._logits(variants, self.scaled_batch(batch_size, canvas), canvas)
            for k, (logits, valid) in enumerate(outputs):
                i = k % len(images)
                probs = _softmax(restore_scores(logits, valid, images[i].shape[:2]))
                if k >= len(images):
                    probs = probs[:, ::-1]
                totals[i] = probs if totals[i] is None else totals[i] + probs
        runs = len(scales) * (2 if flip else 1)
        return [total / np.float32(runs) for total in totals]

    def predict_tta(self, images: Sequence[np.ndarray], batch_size: int, scales: Sequence[float] = (1.0,),
                    flip: bool = False) -> List[np.ndarray]:
        """Class maps (H, W) int64 from :meth:`probabilities_tta`; plain :meth:`predict` for (1.0,) and no flip."""
        if tuple(scales) == (1.0,) and not flip:
            return self.predict(images, batch_size)
        return [probs.argmax(axis=2).astype(np.int64)
                for probs in self.probabilities_tta(images, batch_size, scales, flip)]
