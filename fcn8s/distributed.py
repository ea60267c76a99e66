"""Which launcher started this process, and communication set-up.

The only module that reads launcher environment variables. Detected, in this order:

============  ==========================================================================
launcher      environment it reads
============  ==========================================================================
openmpi       ``OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK`` - ``mpirun``; bootstraps the dynamic
              cluster through mpi4py: rank 0 picks a port, publishes the address of its
              interface that routes to the other hosts (``MS_SCHED_HOST`` overrides) and starts
              the scheduler. OpenMPI's variables win over stale ``RANK_TABLE_FILE``/``RANK_ID``.
msrun         ``MS_ROLE``, ``MS_WORKER_NUM``, ``MS_NODE_ID`` (msrun, MindX DL AscendJob,
              ``python -m fcn8s.launch`` on CPU) - MindSpore's dynamic cluster. Without
              ``MS_NODE_ID``/``RANK_ID`` (msrun without ``--node_rank``) the rank, and without
              ``DEVICE_ID`` the device (the local rank), are assigned by MindSpore at ``init()``.
rank_table    ``RANK_TABLE_FILE`` (alias ``MINDSPORE_HCCL_CONFIG_PATH``), ``RANK_ID``,
              ``RANK_SIZE``, ``DEVICE_ID`` - HCCL on Ascend
slurm         ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` - ``srun``; scheduler on the
              first node at its ``NodeAddr`` (``scontrol show node``; ``MS_SCHED_HOST``
              overrides), port from ``MS_SCHED_PORT`` or derived from ``SLURM_JOB_ID``
standalone    nothing: rank 0 of 1 (``DEVICE_ID`` optional)
============  ==========================================================================
"""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Mapping, MutableMapping, Optional, Sequence, Tuple

import numpy as np

from fcn8s.errors import UserError
from fcn8s.hostnet import interface_addresses, reachable_address, resolve_host

LOG = logging.getLogger(__name__)
SCHEDULER_CODE = "from mindspore.communication import init; init()"
SLURM_BASE_PORT = 20000
# Launchers whose MindSpore scheduler is a child of rank 0 (see _bootstrap_dynamic_cluster): nobody
# checks that workers finalise, so ranks may exit without MindSpore's teardown. Under msrun, the
# Ascend Operator or fcn8s.launch a scheduler process expects every worker to finalise.
SELF_BOOTSTRAPPED = ("openmpi", "slurm")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (None: assigned by MindSpore at ``init()``, msrun only)."""

    rank: Optional[int] = 0
    size: int = 1
    local_rank: Optional[int] = 0
    device_id: Optional[int] = 0
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


def rank_table_path(env: Mapping[str, str]) -> Optional[str]:
    return env.get("RANK_TABLE_FILE") or env.get("MINDSPORE_HCCL_CONFIG_PATH")


STALE_UNDER_SELF_BOOTSTRAP = ("RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "RANK_ID", "RANK_SIZE")


def detect_launcher(env: Mapping[str, str] = os.environ) -> str:
    """Name of the launcher that started this process, from its environment."""
    if "OMPI_COMM_WORLD_RANK" in env:  # mpirun's own variables are never stale
        return "openmpi"
    if env.get("MS_ROLE"):
        return "msrun"
    if rank_table_path(env) and "RANK_ID" in env:
        return "rank_table"
    if "SLURM_PROCID" in env and _int_env(env, "SLURM_NTASKS", 1) > 1:
        return "slurm"
    return "standalone"


def stale_variables(env: Mapping[str, str], launcher: str, rank: int, size: int) -> Tuple[str, ...]:
    """Rank-table variables left in the environment that contradict mpirun/srun (which win)."""
    if launcher not in SELF_BOOTSTRAPPED:
        return ()
    expected = {"RANK_ID": str(rank), "RANK_SIZE": str(size)}
    return tuple(name for name in STALE_UNDER_SELF_BOOTSTRAP
                 if name in env and expected.get(name) != env[name])


def planned_context(env: Mapping[str, str] = os.environ) -> DistContext:
    """Rank, size, local rank and device this process should get, checked for contradictions."""
    launcher = detect_launcher(env)
    device: Optional[int]
    if launcher == "msrun":
        size = _int_env(env, "MS_WORKER_NUM")
        rank = _optional_int(env, "MS_NODE_ID") if env.get("MS_NODE_ID") else _optional_int(env, "RANK_ID")
        # msrun / the Ascend Operator give the local device (or MindSpore assigns the local rank at
        # init): never derive it from the global rank, which runs past a server's NPUs.
        device = _optional_int(env, "DEVICE_ID")
        local = device
    elif launcher == "rank_table":
        rank, size = _int_env(env, "RANK_ID"), _int_env(env, "RANK_SIZE")
        local = device = _int_env(env, "DEVICE_ID", rank)
    elif launcher == "openmpi":
        rank, size = _int_env(env, "OMPI_COMM_WORLD_RANK"), _int_env(env, "OMPI_COMM_WORLD_SIZE")
        local = device = _int_env(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0)
    elif launcher == "slurm":
        rank, size = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS")
        local = device = _int_env(env, "SLURM_LOCALID", 0)
    else:
        rank, size, local = 0, 1, 0
        device = _int_env(env, "DEVICE_ID", 0)
    if rank is not None and not 0 <= rank < size:
        raise UserError(f"{launcher}: rank {rank} is outside 0..{size - 1}")
    return DistContext(rank=rank, size=size, local_rank=local, device_id=device, launcher=launcher)


def _optional_int(env: Mapping[str, str], name: str) -> Optional[int]:
    return _int_env(env, name) if env.get(name, "") != "" else None


def free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_scheduler(host: str, port: int, workers: int, env: Optional[Mapping[str, str]] = None,
                    log_path: Optional[str] = None) -> subprocess.Popen:
    """Start MindSpore's dynamic-cluster scheduler process (it exits when the workers finish)."""
    child_env = dict(env if env is not None else os.environ)
    child_env.update({"MS_ROLE": "MS_SCHED", "MS_SCHED_HOST": host, "MS_SCHED_PORT": str(port),
                      "MS_WORKER_NUM": str(workers)})
    child_env.pop("MS_NODE_ID", None)
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen([sys.executable, "-c", SCHEDULER_CODE], env=child_env, stdout=output,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True)
    finally:
        if log_path:
            output.close()


def worker_env(rank: int, size: int, host: str, port: int) -> dict:
    """Dynamic-cluster variables that make this process worker ``rank`` of ``size``."""
    return {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": host, "MS_SCHED_PORT": str(port),
            "MS_WORKER_NUM": str(size), "MS_NODE_ID": str(rank)}


def _scheduler_address(ctx: DistContext, env: Mapping[str, str]) -> Tuple[str, int]:
    if ctx.launcher == "openmpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        addresses = comm.allgather(sorted(interface_addresses()))
        address = None
        if ctx.rank == 0:  # every rank must reach it: the interface that routes to the other hosts
            host = env.get("MS_SCHED_HOST") or reachable_address(addresses[0], addresses[1:])
            address = (host, free_port())
        return comm.bcast(address, root=0)
    host = env.get("MS_SCHED_HOST") or _slurm_first_node_address(env)
    port = _int_env(env, "MS_SCHED_PORT", SLURM_BASE_PORT + _int_env(env, "SLURM_JOB_ID", 0) % 20000)
    return host, port


def _slurm_first_node_address(env: Mapping[str, str]) -> str:
    """Address of the job's first node (where task 0 runs the scheduler), as Slurm knows it: NodeAddr."""
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodes or _int_env(env, "SLURM_NNODES", 1) == 1:
        return "127.0.0.1"
    first = _scontrol(["show", "hostnames", nodes], f"the nodes of {nodes!r}").split()[0]
    shown = _scontrol(["show", "node", first], f"node {first}")
    match = re.search(r"\bNodeAddr=(\S+)", shown)
    if not match:
        raise UserError(f"slurm: `scontrol show node {first}` gives no NodeAddr; set MS_SCHED_HOST to its address")
    return resolve_host(match[1], f"slurm node {first}: NodeAddr")


def _scontrol(args: Sequence[str], what: str) -> str:
    try:
        result = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"slurm: cannot ask scontrol for {what} ({err}); set MS_SCHED_HOST") from None
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[0]
        raise UserError(f"slurm: scontrol cannot show {what}: {output}; set MS_SCHED_HOST")
    return result.stdout


def _bootstrap_dynamic_cluster(ctx: DistContext, env: MutableMapping[str, str]) -> None:
    """Turn an mpirun/srun process into a MindSpore dynamic-cluster worker (rank 0 runs the scheduler)."""
    stale = stale_variables(env, ctx.launcher, int(ctx.rank or 0), ctx.size)
    if stale:
        LOG.warning("%s: ignoring %s left in the environment (%s's own rank variables win)", ctx.launcher,
                    ", ".join(f"{name}={env[name]}" for name in stale), ctx.launcher)
    for name in STALE_UNDER_SELF_BOOTSTRAP:
        env.pop(name, None)
    host, port = _scheduler_address(ctx, env)
    if ctx.rank == 0:
        start_scheduler(host, port, ctx.size, env)
    env.update(worker_env(int(ctx.rank or 0), ctx.size, host, port))
    env.update({"RANK_ID": str(ctx.rank), "RANK_SIZE": str(ctx.size)})
    LOG.info("%s bootstrap: scheduler at %s:%d", ctx.launcher, host, port)


def export_hccl_timeouts(connect: int, execute: int, env: MutableMapping[str, str] = os.environ) -> None:
    """Set HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT (config ``dist.*``) unless the environment has them."""
    for name, value in (("HCCL_CONNECT_TIMEOUT", connect), ("HCCL_EXEC_TIMEOUT", execute)):
        if env.get(name) and env[name] != str(value):
            LOG.info("%s=%s from the environment (config says %d)", name, env[name], value)
        else:
            env[name] = str(value)


def init_distributed(env: MutableMapping[str, str] = os.environ) -> DistContext:
    """Initialise communication if a launcher started us; return this process's context."""
    ctx = planned_context(env)
    if not ctx.distributed and ctx.launcher in ("standalone", "openmpi", "slurm"):
        return DistContext(device_id=ctx.device_id, launcher=ctx.launcher)
    if ctx.launcher in SELF_BOOTSTRAPPED:
        _bootstrap_dynamic_cluster(ctx, env)
    import mindspore as ms
    from mindspore.communication import get_group_size, get_local_rank, get_rank, init

    init()
    rank, size = get_rank(), get_group_size()
    if size != ctx.size or ctx.rank not in (None, rank):
        raise UserError(f"{ctx.launcher}: communication reports rank {rank} of {size}, the launcher "
                        f"environment says {ctx.rank} of {ctx.size}")
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    local = ctx.local_rank if ctx.local_rank is not None else get_local_rank()
    return replace(ctx, rank=rank, local_rank=local, device_id=local if ctx.device_id is None else ctx.device_id)


def finalize_mpi() -> None:
    """Finalize MPI if the mpirun bootstrap initialised it (mpirun treats a rank without it as failed)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()


def sum_across_ranks(values: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Exact element-wise sum of a non-negative integer array over all ranks.

    AllReduce on CPU only takes floats, exact up to 2**24: counts are split into 16-bit halves,
    summed as float32 and recombined (exact for up to 256 ranks and counts below 2**40 / ranks).
    """
    if not ctx.distributed:
        return values
    import mindspore as ms
    from mindspore import ops

    counts = values.astype(np.int64)
    if ctx.size > 256 or counts.min(initial=0) < 0 or counts.max(initial=0) >= (1 << 40) // ctx.size:
        raise ValueError("sum_across_ranks: counts out of the exactly representable range")
    halves = np.stack([counts & 0xFFFF, counts >> 16]).astype(np.float32)
    low, high = ops.AllReduce()(ms.Tensor(halves)).asnumpy().astype(np.int64)
    return ((high << 16) + low).astype(values.dtype)


def float_sum_across_ranks(values: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Element-wise float32 sum over all ranks (one AllReduce; every rank receives the same result)."""
    values = np.asarray(values, np.float32)
    if not ctx.distributed:
        return values
    import mindspore as ms
    from mindspore import ops

    return ops.AllReduce()(ms.Tensor(values)).asnumpy()


def gather_floats(value: float, ctx: DistContext) -> np.ndarray:
    """Every rank's float32 ``value`` (index = rank), exactly: rank r fills slot r of a zero vector, one sum."""
    slots = np.zeros(ctx.size, np.float32)
    slots[int(ctx.rank or 0)] = value
    return float_sum_across_ranks(slots, ctx)
