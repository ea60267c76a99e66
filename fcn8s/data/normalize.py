"""In-graph input normalisation for training batches from ``fcn8s.data.pipeline``.

The train pipeline yields uint8 crops (images (N, 3, H, W), labels (N, H, W) with ``PAD_LABEL`` on
padded pixels); ``TrainInput`` is the first op of the train step and turns them into what the
network and the loss expect: ``(image - mean) / std`` in float32 with padded pixels at 0 (the mean
colour, as the seed pads), and int32 labels with padding mapped to the ignore label.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from fcn8s.config import Config
from fcn8s.data.transforms import PAD_LABEL


class TrainInput(nn.Cell):
    """``(uint8 images, uint8 labels) -> (normalised float32 images, int32 labels)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], ignore_label: int = 255) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values (B, G, R)")
        self.mean = ms.Tensor(np.asarray(mean, np.float32).reshape(1, 3, 1, 1))
        self.std = ms.Tensor(np.asarray(std, np.float32).reshape(1, 3, 1, 1))
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg: Config) -> "TrainInput":
        return cls(cfg.data.image_mean, cfg.data.image_std, cfg.data.ignore_label)

    def construct(self, images: ms.Tensor, labels: ms.Tensor) -> Tuple[ms.Tensor, ms.Tensor]:
        labels = labels.astype(ms.int32)
        pad = labels == PAD_LABEL
        images = (images.astype(ms.float32) - self.mean) / self.std
        images = ops.where(pad.expand_dims(1), ops.zeros_like(images), images)
        return images, ops.where(pad, ops.full_like(labels, self.ignore_label), labels)
