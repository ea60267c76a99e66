"""Pixel-wise cross entropy that ignores a label value (255 = VOC object boundaries)."""
from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops


class SegmentationCrossEntropy(nn.Cell):
    """Mean cross entropy over pixels whose label is not ``ignore_label``.

    ``logits``: (N, C, H, W) any float dtype (computed in float32); ``labels``: (N, H, W) integers.
    Returns 0 when every pixel is ignored (instead of NaN).
    """

    def __init__(self, num_classes: int, ignore_label: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_label = ignore_label

    def construct(self, logits: ms.Tensor, labels: ms.Tensor) -> ms.Tensor:
        logits = logits.astype(ms.float32)
        labels = labels.astype(ms.int32)
        valid = labels != self.ignore_label
        safe_labels = ops.where(valid, labels, ops.zeros_like(labels))
        log_probs = ops.log_softmax(logits, axis=1)
        onehot = ops.one_hot(safe_labels, self.num_classes, ms.Tensor(1.0, ms.float32),
                             ms.Tensor(0.0, ms.float32), axis=1)
        nll = -(log_probs * onehot).sum(axis=1)
        weight = valid.astype(ms.float32)
        return (nll * weight).sum() / ops.maximum(weight.sum(), ms.Tensor(1.0, ms.float32))
