"""Which launcher started this process, and communication set-up. The only reader of launcher env.

Supported here: standalone (one process) and MindSpore's dynamic cluster (``msrun``, which sets
``MS_ROLE``/``MS_WORKER_NUM``/``MS_NODE_ID``). Running alone returns rank 0 of 1.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Optional

from fcn8s.errors import UserError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device_id: int = 0
    launcher: str = "standalone"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _int_env(env: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise UserError(f"environment variable {name} is required by this launcher but not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def detect_launcher(env: Mapping[str, str] = os.environ) -> str:
    """Name of the launcher that started this process, from its environment."""
    if env.get("MS_ROLE"):
        return "msrun"
    return "standalone"


def init_distributed(env: Mapping[str, str] = os.environ) -> DistContext:
    """Initialise communication if a launcher started us; return this process's context."""
    launcher = detect_launcher(env)
    if launcher == "standalone":
        return DistContext(device_id=_int_env(env, "DEVICE_ID", 0))
    from mindspore.communication import get_group_size, get_local_rank, get_rank, init
    import mindspore as ms

    init()
    rank, size = get_rank(), get_group_size()
    local_rank = get_local_rank()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    return DistContext(rank=rank, size=size, local_rank=local_rank, device_id=local_rank, launcher=launcher)
