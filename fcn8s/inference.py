"""Whole-image prediction at original resolution: pad to a fixed canvas, run, crop back."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

import mindspore as ms
import mindspore.nn as nn

from fcn8s.data.transforms import prepare_eval_image, restore_prediction


class Predictor:
    """Predicts class maps for BGR images of any size with one compiled input shape."""

    def __init__(self, net: nn.Cell, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.net = net
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.net.set_train(False)

    def predict(self, images: Sequence[np.ndarray], batch_size: int) -> List[np.ndarray]:
        """Class-index maps (H, W) int64, one per image, same size as each input."""
        results: List[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            prepared: List[Tuple[np.ndarray, Tuple[int, int]]] = [
                prepare_eval_image(img, self.image_size, self.mean, self.std) for img in chunk]
            batch = np.zeros((batch_size, 3, self.image_size, self.image_size), np.float32)
            for i, (canvas, _) in enumerate(prepared):
                batch[i] = canvas
            logits = self.net(ms.Tensor(batch)).asnumpy()
            results += [restore_prediction(logits[i], valid, img.shape[:2])
                        for i, ((_, valid), img) in enumerate(zip(prepared, chunk))]
        return results
