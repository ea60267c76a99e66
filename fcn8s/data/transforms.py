"""Per-sample transforms: decode, the seed's training augmentation, and eval preparation.

Training (the tutorial's semantics): random scale in [min, max] (cubic for the image, nearest for
the label), pad bottom/right to the crop size (image with the mean, label with the ignore
label), random crop, random horizontal flip, HWC -> CHW; the normalisation ``(x - mean) / std``
in BGR order runs in the train step (``fcn8s.data.normalize``). Implemented with cv2 so a worker
spends its time in C, not Python.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from fcn8s.data.sampling import sample_rng

PAD_LABEL = 254  # label of padded pixels in a train crop: neither a class nor the ignore label


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> BGR uint8 (H, W, 3)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode image bytes")
    return image


def decode_label(data: bytes) -> np.ndarray:
    """Single-channel PNG bytes -> class indices uint8 (H, W)."""
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if label is None:
        raise ValueError("cannot decode label bytes")
    return label


def normalize_into(dst: np.ndarray, image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """Write ``(image - mean) / std`` plane by plane into ``dst`` (3, h, w) float32 (CHW)."""
    for channel in range(3):
        plane = dst[channel]
        np.subtract(image[:, :, channel], mean[channel], out=plane, dtype=np.float32)
        plane *= np.float32(1.0 / std[channel])


class TrainTransform:
    """Random scale, pad, crop, flip, HWC->CHW; returns (image CHW uint8, label uint8).

    Normalisation is left to the train step (``fcn8s.data.normalize.TrainInput``): uint8 crops are
    4x fewer bytes through the data engine. Padding is marked in the label with ``PAD_LABEL``; the
    step gives it the mean colour (0 after normalisation) and the ignore label, exactly the seed's
    padding. Called on a dataset row, the random draws come from ``sample_rng(seed, epoch,
    file_name)``, so a sample is augmented the same way whichever rank or worker thread reads it
    (exact resume).
    """

    def __init__(self, crop_size: int, min_scale: float, max_scale: float, seed: int = 0, epoch: int = 0) -> None:
        if crop_size <= 0:
            raise ValueError(f"crop_size must be > 0, got {crop_size}")
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.crop_size = crop_size
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.seed = seed
        self.epoch = epoch
        self.rng = np.random.default_rng([seed, epoch])

    def __call__(self, data: bytes, label: bytes, file_name: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        rng = sample_rng(self.seed, self.epoch, str(file_name.item() if isinstance(file_name, np.ndarray)
                                                     else file_name))
        return self.augment(decode_image(data), decode_label(label), rng)

    def augment(self, image: np.ndarray, label: np.ndarray, rng: Optional[np.random.Generator] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
        """Augment decoded arrays (BGR uint8 HWC, uint8 HW) with ``rng`` (default: the transform's own)."""
        rng = rng or self.rng
        crop = self.crop_size
        scale = rng.uniform(self.min_scale, self.max_scale)
        new_h, new_w = int(scale * image.shape[0]), int(scale * image.shape[1])
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
        label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        top = int(rng.integers(0, max(new_h, crop) - crop + 1))
        left = int(rng.integers(0, max(new_w, crop) - crop + 1))
        rows, cols = min(crop, new_h - top), min(crop, new_w - left)
        image = image[top:top + rows, left:left + cols]
        label = label[top:top + rows, left:left + cols]
        start = 0
        if rng.uniform() > 0.5:  # flipping the padded crop puts the padding on the left
            image, label, start = cv2.flip(image, 1), cv2.flip(label, 1), crop - cols
        image_out = np.zeros((3, crop, crop), np.uint8)
        label_out = np.full((crop, crop), PAD_LABEL, np.uint8)
        for channel, plane in enumerate(cv2.split(image)):
            image_out[channel, :rows, start:start + cols] = plane
        label_out[:rows, start:start + cols] = label
        return image_out, label_out


def prepare_eval_image(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
                       ) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Fit an image into a (3, size, size) normalised canvas without augmentation.

    The long side is shrunk to ``size`` if larger (never enlarged); the rest is padded with the
    mean. Returns the canvas and the (height, width) of the valid region.
    """
    height, width = image.shape[:2]
    ratio = min(1.0, size / max(height, width))
    if ratio < 1.0:
        height, width = max(1, round(height * ratio)), max(1, round(width * ratio))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((3, size, size), np.float32)
    normalize_into(canvas[:, :height, :width], image, np.asarray(mean, np.float32), np.asarray(std, np.float32))
    return canvas, (height, width)


def restore_scores(logits: np.ndarray, valid: Tuple[int, int], original: Tuple[int, int]) -> np.ndarray:
    """Crop (C, S, S) logits to the valid region and resize to the original size -> (H, W, C)."""
    height, width = valid
    scores = np.ascontiguousarray(logits[:, :height, :width].transpose(1, 2, 0))
    if (height, width) != tuple(original):
        scores = cv2.resize(scores, (original[1], original[0]), interpolation=cv2.INTER_LINEAR)
        if scores.ndim == 2:  # cv2 drops a single channel
            scores = scores[:, :, None]
    return scores


def restore_prediction(logits: np.ndarray, valid: Tuple[int, int], original: Tuple[int, int]) -> np.ndarray:
    """Class map (H, W) int64 at the original size from padded (C, S, S) logits."""
    return restore_scores(logits, valid, original).argmax(axis=2).astype(np.int64)
