"""The two loss scalers of ``loss_scale.type``: dynamic (MindSpore's ``DynamicLossScaler``, the tutorial's) and
fixed (the model zoo's FCN-8s recipe: ``FixedLossScaleManager(1024, drop_overflow_update=False)``).

Both expose what the train step and checkpoints use: ``scale``, ``adjust`` and the Parameters ``scale_value``
and ``counter`` (saved with every checkpoint).
"""
from __future__ import annotations

from typing import Union

import mindspore as ms
from mindspore import amp

from fcn8s.config import LossScaleConfig


class FixedLossScaler(amp.StaticLossScaler):
    """A constant scale and no overflow check: every update is applied, as the zoo's recipe does."""

    def __init__(self, scale_value: float) -> None:
        super().__init__(scale_value)
        self.counter = ms.Parameter(ms.Tensor(0, ms.int32), name="counter")  # checkpoint layout of the dynamic one

    def adjust(self, grads_finite: ms.Tensor) -> ms.Tensor:
        """Nothing to adjust (the scale never changes)."""
        return grads_finite


LossScaler = Union[amp.DynamicLossScaler, FixedLossScaler]


def build_loss_scaler(cfg: LossScaleConfig) -> LossScaler:
    """The scaler ``cfg.type`` names, starting at ``cfg.init_loss_scale``.

    Dynamic (MindSpore's ``DynamicLossScaler``): an overflow skips the update and divides the scale by
    ``scale_factor``; ``scale_window`` finite steps in a row multiply it.
    """
    if cfg.type == "fixed":
        return FixedLossScaler(cfg.init_loss_scale)
    return amp.DynamicLossScaler(scale_value=cfg.init_loss_scale, scale_factor=cfg.scale_factor,
                                 scale_window=cfg.scale_window)
