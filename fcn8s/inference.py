"""Whole-image prediction at original resolution: pad to a fixed canvas, run, crop back.

Optional test-time augmentation: several scales and a horizontal flip, class probabilities summed.
"""
from __future__ import annotations

from typing import List, Sequence

import cv2
import numpy as np

import mindspore as ms
import mindspore.nn as nn

from fcn8s.checkpoint import load_weights
from fcn8s.config import Config
from fcn8s.data.transforms import prepare_eval_image, restore_prediction, restore_scores
from fcn8s.model import build_model, resolve_conv_impl
from fcn8s.runtime import resolve_device_target


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=2, keepdims=True))
    return shifted / shifted.sum(axis=2, keepdims=True)


class Predictor:
    """Predicts class maps for BGR images of any size with one compiled input shape."""

    @classmethod
    def from_checkpoint(cls, cfg: Config, ckpt: str) -> "Predictor":
        """The configured network (kernels chosen for this device) with weights from ``ckpt``."""
        conv_impl = resolve_conv_impl(cfg.model.conv_impl, resolve_device_target(cfg.run.device_target))
        net = build_model(cfg.model.num_classes, conv_impl, cfg.model.amp_level)
        load_weights(net, ckpt)
        return cls(net, cfg.eval.image_size, cfg.data.image_mean, cfg.data.image_std)

    def __init__(self, net: nn.Cell, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.net = net
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.net.set_train(False)

    def _run(self, images: Sequence[np.ndarray], batch_size: int, restore) -> List[np.ndarray]:
        results: List[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            prepared = [prepare_eval_image(img, self.image_size, self.mean, self.std) for img in chunk]
            batch = np.zeros((batch_size, 3, self.image_size, self.image_size), np.float32)
            for i, (canvas, _) in enumerate(prepared):
                batch[i] = canvas
            logits = self.net(ms.Tensor(batch)).asnumpy()
            results += [restore(logits[i], valid, img.shape[:2])
                        for i, ((_, valid), img) in enumerate(zip(prepared, chunk))]
        return results

    def predict(self, images: Sequence[np.ndarray], batch_size: int) -> List[np.ndarray]:
        """Class-index maps (H, W) int64, one per image, same size as each input."""
        return self._run(images, batch_size, restore_prediction)

    def predict_tta(self, images: Sequence[np.ndarray], batch_size: int, scales: Sequence[float] = (1.0,),
                    flip: bool = False) -> List[np.ndarray]:
        """Class maps from class probabilities summed over ``scales`` and (optionally) a mirror image."""
        totals = [np.zeros(img.shape[:2] + (0,), np.float32) for img in images]
        for scale in scales:
            for mirrored in ((False, True) if flip else (False,)):
                variants = [cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
                            if scale != 1.0 else img for img in images]
                if mirrored:
                    variants = [np.ascontiguousarray(img[:, ::-1]) for img in variants]
                for i, scores in enumerate(self._run(variants, batch_size, restore_scores)):
                    if mirrored:
                        scores = scores[:, ::-1]
                    height, width = images[i].shape[:2]
                    probs = _softmax(cv2.resize(np.ascontiguousarray(scores), (width, height),
                                                interpolation=cv2.INTER_LINEAR).reshape(height, width, -1))
                    totals[i] = probs if totals[i].shape[2] == 0 else totals[i] + probs
        return [total.argmax(axis=2).astype(np.int64) for total in totals]
