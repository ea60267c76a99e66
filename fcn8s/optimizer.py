"""The optimizer: momentum SGD with weight decay (the tutorial's), fed gradients in the train step's unit.

With a fixed loss scale the train step does not unscale the summed gradients (a pass over 134.5 M values per
step, ~0.15 s on CPU): the optimizer works in their unit, ``unit = loss scale x ranks``. Its learning rate is
``lr / unit`` and its weight decay ``weight_decay x unit``, so its moments are ``unit`` times nn.Momentum's on
the mean gradient and every update is the same; for powers of two (1024 x 2, 4, 8 ranks) bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
import numpy as np
from mindspore import nn

from fcn8s.loss_scale import FixedLossScaler, LossScaler


def gradient_unit(scaler: LossScaler, ranks: int) -> float:
    """The unit of the gradients the step hands the optimizer: loss scale x ranks with a fixed scale (summed,
    not unscaled); 1 with a dynamic one (the step unscales to check for overflow)."""
    if isinstance(scaler, FixedLossScaler):
        return float(scaler.scale_value.asnumpy()) * ranks
    return 1.0


def optimizer_unit(optimizer: nn.Optimizer) -> float:
    """The gradient unit ``optimizer`` works in: a :class:`UnitMomentum`'s, 1 for any other optimizer."""
    return getattr(optimizer, "unit", 1.0)


class UnitMomentum(nn.Momentum):
    """``nn.Momentum(lr, momentum, weight_decay)`` on gradients ``unit`` times the mean gradient."""

    def __init__(self, params: Sequence[ms.Parameter], lr: np.ndarray, momentum: float, weight_decay: float,
                 unit: float = 1.0) -> None:
        super().__init__(params, learning_rate=ms.Tensor((lr / unit).astype(np.float32)), momentum=momentum,
                         weight_decay=weight_decay * unit)
        self.unit = unit
