"""Data sink (``train.sink_size``): ``sink_size`` train steps per call, fed from the device's data queue by
``mindspore.data_sink``, so the host runs only between sinks (Ascend and GPU; MindSpore has none on CPU).

:func:`sink_plan` decides (and logs) whether this job sinks; :func:`sink_steps` builds the per-epoch callable.
"""
from __future__ import annotations

import logging
from typing import Callable, Tuple

import mindspore as ms
import mindspore.dataset as ds

from fcn8s.config import Config
from fcn8s.errors import UserError

LOG = logging.getLogger(__name__)
SINK_DEVICES = ("Ascend", "GPU")  # mindspore.data_sink's supported platforms


def sink_plan(cfg: Config, device_target: str, steps_per_epoch: int, distributed: bool) -> int:
    """Steps per sink for this job, or 0 for the per-step loop; the choice is logged.

    An epoch must be whole sinks (the position saved with a checkpoint is a step of the epoch); the straggler
    check times one step's halves on the host, which a sink cannot, so it is refused with a sink.
    """
    size = cfg.train.sink_size
    if not size:
        LOG.info("data sink: off (train.sink_size 0): the host feeds every step")
        return 0
    if device_target not in SINK_DEVICES:
        LOG.info("data sink: not on %s (mindspore.data_sink runs on %s only): the host feeds every step",
                 device_target, " and ".join(SINK_DEVICES))
        return 0
    if steps_per_epoch % size:
        raise UserError(f"train.sink_size ({size}) must divide the steps per epoch ({steps_per_epoch}): change "
                        "train.sink_size or train.batch_size")
    if distributed and cfg.train.straggler_intervals:
        raise UserError("train.sink_size needs train.straggler_intervals=0: the straggler check times steps on "
                        "the host, which a sink does not return to")
    LOG.info("data sink: %d steps per call from the device's data queue", size)
    return size


def sink_steps(step: Callable, dataset: ds.Dataset, size: int) -> Callable[[], Tuple[ms.Tensor, ...]]:
    """``run() -> the last step's outputs`` after ``size`` steps of ``step`` on ``dataset``'s batches."""
    return ms.data_sink(step, dataset, sink_size=size, jit_config=ms.JitConfig())
