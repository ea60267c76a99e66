"""Start this pod's ranks from what the cluster gives the pod (run by launch/pod_entrypoint.sh).

    python -m fcn8s.cluster.entrypoint [--log-dir DIR] [--module M] -- --config C [KEY=VALUE ...]

MindX DL AscendJob (``MS_ROLE`` set by the Ascend Operator):
  MS_SCHED   run MindSpore's dynamic-cluster scheduler (this process becomes it). If the
             Scheduler replica holds NPUs (``NPU_POD=true``) it also starts its MS_LOCAL_WORKER
             ranks 0..n-1: the operator then numbers worker pods from MS_NODE_RANK=1 and counts
             the scheduler's chips in MS_WORKER_NUM.
  MS_WORKER  start MS_LOCAL_WORKER ranks; rank i gets DEVICE_ID=i and
             MS_NODE_ID = RANK_ID = MS_NODE_RANK * MS_LOCAL_WORKER + i (of MS_WORKER_NUM).
Volcano Job + Ascend device plugin (no ``MS_ROLE``):
  wait until RANK_TABLE_FILE (default /user/serverid/devindex/config/hccl.json) says "completed"
  (at most --rank-table-timeout / FCN8S_RANK_TABLE_TIMEOUT seconds), validate it, find this pod's
  server (container_ip = POD_IP, else server_id/host_ip = XDL_IP, else this host's addresses;
  pods sharing a node by their NPUs) and start one rank per device with the table's rank_id and
  the logical DEVICE_ID (fcn8s/placement.py, shared with fcn8s.launch).
Neither (e.g. ``docker run`` of the image on one server): RANK_TABLE_FILE unset and no table
  mounted at the default path -> a single-server job on all visible NPUs (1 rank without NPUs),
  exactly as ``python -m fcn8s.launch --nproc N``.

Ranks log to LOG_DIR/rank_K.log (default RUN.OUTPUT_DIR/logs/POD_NAME); the lowest rank's log is
shown on stdout. If a rank fails the others are stopped and the pod exits with its code;
SIGTERM (pod deletion, preemption) is forwarded so training can checkpoint and exit 143.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

from rank_table import RankTableError
from rank_table.table import COMPLETED, validate_table

from fcn8s.distributed import SCHEDULER_CODE, rank_table_path, start_scheduler
from fcn8s.errors import UserError, run_cli
from fcn8s.hostnet import local_addresses
from fcn8s.launch import (NodeOptions, RankProcesses, add_rank_command_arguments, add_supervision_arguments,
                          hang_limits, plan_node, positive_seconds, preflight, rank_base_env, rank_command,
                          restart_policy, run_job, start_workers, watchdog_for)
from fcn8s.logs import setup_logging
from fcn8s.placement import find_server, rank_table_plan, visible_npus
from fcn8s.preflight import Job
from fcn8s.train_args import train_config

LOG = logging.getLogger("fcn8s.cluster.entrypoint")
DEFAULT_RANK_TABLE = "/user/serverid/devindex/config/hccl.json"
TIMEOUT_ENV = "FCN8S_RANK_TABLE_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 0.5

RankEnvs = Dict[int, Dict[str, str]]


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
    """Integer environment variable ``name`` (>= minimum) or a UserError naming it."""
    raw = env.get(name, "")
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise UserError(f"{name}={raw!r}: expected an integer >= {minimum} (set by the Ascend Operator)")
    return int(raw)


def ascendjob_envs(env: Mapping[str, str]) -> RankEnvs:
    """Per-rank variables for an AscendJob worker pod (MS_LOCAL_WORKER ranks of MS_WORKER_NUM)."""
    local, node_rank = _int(env, "MS_LOCAL_WORKER", 1), _int(env, "MS_NODE_RANK", 0)
    size = _int(env, "MS_WORKER_NUM", 1)
    first = node_rank * local
    if first + local > size:
        raise UserError(f"MS_NODE_RANK={node_rank} x MS_LOCAL_WORKER={local} does not fit in MS_WORKER_NUM={size}")
    return {first + i: {"MS_NODE_ID": str(first + i), "RANK_ID": str(first + i), "RANK_SIZE": str(size),
                        "DEVICE_ID": str(i)} for i in range(local)}


def read_status(path: str) -> str:
    """The table's ``status`` ('missing' / 'unreadable' while the file is absent or half written)."""
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "unreadable"
    return str(table.get("status")) if isinstance(table, dict) else "unreadable"


def wait_for_rank_table(path: str, timeout: float) -> Dict[str, Any]:
    """Poll ``path`` until its status is "completed", then return the validated table."""
    deadline = time.monotonic() + timeout
    status = read_status(path)
    if status != COMPLETED:
        LOG.info("waiting up to %.0f s for %s (status %s)", timeout, path, status)
    while status != COMPLETED:
        if time.monotonic() >= deadline:
            raise UserError(f"rank table {path} is still {status!r} after {timeout:.0f} s: is the job labelled "
                            "ring-controller.atlas and hccl-controller / Ascend Operator running? "
                            f"(wait longer with {TIMEOUT_ENV})")
        time.sleep(POLL_SECONDS)
        status = read_status(path)
    with open(path, encoding="utf-8") as handle:
        table = json.load(handle)
    try:
        validate_table(table)
    except RankTableError as err:
        raise UserError(f"rank table {path}: {err}") from None
    return table


def pod_addresses(env: Mapping[str, str]) -> Dict[str, Set[str]]:
    """This pod's IPs ('pod') and its node's IPs ('host'): POD_IP / XDL_IP, else this host's addresses."""
    local = local_addresses()
    return {"pod": {env["POD_IP"]} if env.get("POD_IP") else local,
            "host": {env["XDL_IP"]} if env.get("XDL_IP") else local}


def rank_table_envs(table: Mapping[str, Any], env: Mapping[str, str], path: str) -> RankEnvs:
    """Per-rank variables for this pod's entry of ``table`` (rank id from the table, logical device id)."""
    npus = visible_npus(env)
    plan = rank_table_plan(table, find_server(table, pod_addresses(env), env, npus), path, npus)
    LOG.info("rank table %s: server %s, ranks %s of %d", path, plan.server, [r.rank for r in plan.ranks],
             plan.world_size)
    return {r.rank: r.env for r in plan.ranks}


def default_log_dir(train_args: Sequence[str]) -> str:
    """RUN.OUTPUT_DIR/logs/POD_NAME for the fcn8s.train arguments ``train_args`` (validated here)."""
    cfg = train_config(train_args)
    return os.path.join(cfg.run.output_dir, "logs", os.environ.get("HOSTNAME") or socket.gethostname())


def run_scheduler(env: Mapping[str, str]) -> None:
    """Become MindSpore's scheduler process (MS_SCHED_HOST/PORT and MS_WORKER_NUM come from the pod)."""
    _int(env, "MS_WORKER_NUM", 1)
    LOG.info("MindSpore scheduler for %s workers on %s:%s", env["MS_WORKER_NUM"], env.get("MS_SCHED_HOST"),
             env.get("MS_SCHED_PORT"))
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-c", SCHEDULER_CODE])


def plan_ranks(env: Mapping[str, str], timeout: float, log_dir: str) -> RankEnvs:
    """Per-rank variables for this pod: AscendJob variables, the mounted rank table, or one server."""
    if env.get("MS_ROLE"):
        if env["MS_ROLE"] not in ("MS_WORKER", "MS_SCHED"):
            raise UserError(f"MS_ROLE={env['MS_ROLE']!r}: expected MS_SCHED or MS_WORKER")
        return {rank: {**extra, "MS_ROLE": "MS_WORKER"} for rank, extra in ascendjob_envs(env).items()}
    path = rank_table_path(env)
    if path is None and not os.path.exists(DEFAULT_RANK_TABLE):
        npus = visible_npus(env)
        LOG.info("no rank table and no operator variables: single-server job on %s",
                 f"{len(npus)} NPU(s) {npus}" if npus else "1 CPU rank")
        plan = plan_node(NodeOptions(nproc=max(len(npus), 1)), log_dir, env)
        return {r.rank: r.env for r in plan.ranks}
    path = path or DEFAULT_RANK_TABLE
    return rank_table_envs(wait_for_rank_table(path, timeout), env, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.cluster.entrypoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank-table-timeout", type=positive_seconds, metavar="SECONDS",
                        default=os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_SECONDS)),
                        help=f"how long to wait for the rank table ({TIMEOUT_ENV}, default %(default)s)")
    parser.add_argument("--log-dir", help="per-rank logs and working dirs (default RUN.OUTPUT_DIR/logs/POD_NAME)")
    add_rank_command_arguments(parser)
    add_supervision_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # as PID 1, while waiting
    module_args: List[str] = args.args[1:] if args.args[:1] == ["--"] else args.args
    scheduler_with_npus = os.environ.get("MS_ROLE") == "MS_SCHED" and os.environ.get("NPU_POD") == "true"
    if os.environ.get("MS_ROLE") == "MS_SCHED" and not scheduler_with_npus:
        run_scheduler(os.environ)
    log_dir = os.path.abspath(args.log_dir or default_log_dir(module_args))
    envs = plan_ranks(os.environ, float(args.rank_table_timeout), log_dir)
    policy = restart_policy(args)
    world = max(int(extra.get("RANK_SIZE") or extra.get("MS_WORKER_NUM") or len(envs)) for extra in envs.values())
    if policy.max_restarts and world > len(envs):
        raise UserError(f"--max-restarts/MAX_RESTARTS restarts the ranks of one pod, but this pod holds {len(envs)} "
                        f"of {world} ranks: a multi-pod job is restarted by its scheduler (the rendered Volcano "
                        "Job's RestartJob policy / AscendJob backoffLimit, with --resume auto)")
    preflight(args, module_args, Job(nproc=len(envs), world=world, placed=f"pod ranks {sorted(envs)} of {world}"))

    def start(attempt: int) -> RankProcesses:
        procs = RankProcesses()
        if scheduler_with_npus:
            os.makedirs(log_dir, exist_ok=True)
            procs.scheduler = start_scheduler(os.environ["MS_SCHED_HOST"], _int(os.environ, "MS_SCHED_PORT", 1),
                                              _int(os.environ, "MS_WORKER_NUM", 1), rank_base_env(),
                                              os.path.join(log_dir, "scheduler.log"))
        start_workers(procs, envs, rank_command(args, module_args, attempt), log_dir, attempt)
        return procs

    limits = hang_limits(args, module_args)
    return run_job(start, log_dir, watchdog=lambda procs: watchdog_for(limits, log_dir, list(procs.workers)),
                   policy=policy)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
