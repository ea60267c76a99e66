"""Process start-up shared by the CLIs: device choice, MindSpore context, seeds, logging, ranks."""
from __future__ import annotations

import glob
import logging

import mindspore as ms

from fcn8s.config import Config
from fcn8s.distributed import DistContext, export_hccl_timeouts, init_distributed, planned_context
from fcn8s.logs import setup_logging
from fcn8s.preemption import route_sigint

LOG = logging.getLogger(__name__)


def resolve_device_target(setting: str) -> str:
    """'auto' -> 'Ascend' when NPUs are visible (/dev/davinci*), else 'CPU'."""
    if setting != "auto":
        return setting
    return "Ascend" if glob.glob("/dev/davinci[0-9]*") else "CPU"


def start(cfg: Config) -> DistContext:
    """Configure MindSpore for ``cfg``, join the job's communication group, seed, tag the logs."""
    route_sigint()
    setup_logging()
    device_target = resolve_device_target(cfg.run.device_target)
    mode = ms.GRAPH_MODE if cfg.run.mode == "graph" else ms.PYNATIVE_MODE
    ms.set_context(mode=mode)
    planned = planned_context()
    if device_target == "CPU":
        ms.set_device(device_target, 0)
    elif planned.device_id is None:
        ms.set_device(device_target)  # msrun without DEVICE_ID: MindSpore uses the local rank
    else:
        ms.set_device(device_target, planned.device_id)
    export_hccl_timeouts(cfg.dist.hccl_connect_timeout, cfg.dist.hccl_exec_timeout)
    ctx = init_distributed()
    # The same seed on every rank gives identical initial weights (parameters are not broadcast).
    ms.set_seed(cfg.train.seed)
    setup_logging(ctx.rank, ctx.size)
    LOG.info("launcher %s: rank %d of %d, local rank %d, device %s:%d, %s mode",
             ctx.launcher, ctx.rank, ctx.size, ctx.local_rank, device_target, ctx.device_id,
             "graph" if ms.get_context("mode") == ms.GRAPH_MODE else "pynative")  # as MindSpore runs it
    return ctx
