"""Start this pod's ranks from what the cluster gives the pod (run by launch/pod_entrypoint.sh).

    python -m fcn8s.cluster.entrypoint [--log-dir DIR] [--module M] -- --config C [KEY=VALUE ...]

MindX DL AscendJob (``MS_ROLE`` set by the Ascend Operator):
  MS_SCHED   run MindSpore's dynamic-cluster scheduler (this process becomes it).
  MS_WORKER  start MS_LOCAL_WORKER ranks; rank i gets DEVICE_ID=i and
             MS_NODE_ID = RANK_ID = MS_NODE_RANK * MS_LOCAL_WORKER + i (of MS_WORKER_NUM).
Volcano Job + Ascend device plugin (no ``MS_ROLE``):
  wait until RANK_TABLE_FILE (default /user/serverid/devindex/config/hccl.json) says "completed"
  (at most --rank-table-timeout / FCN8S_RANK_TABLE_TIMEOUT seconds), validate it, find this pod's
  server (container_ip = POD_IP, else server_id/host_ip = XDL_IP, else this host's addresses) and
  start one rank per device: DEVICE_ID = the device's position among this server's device_ids
  (0..n-1: the logical id inside the container), RANK_ID = its rank_id, RANK_SIZE, RANK_TABLE_FILE.

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
from rank_table.devices import host_ip
from rank_table.table import COMPLETED, validate_table

from fcn8s.config import config_from_args
from fcn8s.distributed import SCHEDULER_CODE, rank_table_path
from fcn8s.errors import UserError, run_cli
from fcn8s.launch import RankProcesses, add_rank_command_arguments, start_workers, supervise_job
from fcn8s.logs import setup_logging

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
    local: Set[str] = {host_ip()}
    try:
        local.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return {"pod": {env["POD_IP"]} if env.get("POD_IP") else local,
            "host": {env["XDL_IP"]} if env.get("XDL_IP") else local}


def find_server(table: Mapping[str, Any], addresses: Mapping[str, Set[str]]) -> Dict[str, Any]:
    """The one server entry that is this pod: container_ip if the table has it, else server_id / host_ip."""
    def is_me(server: Mapping[str, Any]) -> bool:
        if "container_ip" in server:
            return server["container_ip"] in addresses["pod"]
        return bool({server["server_id"], server.get("host_ip")} & addresses["host"])

    matches = [server for server in table["server_list"] if is_me(server)]
    if len(matches) != 1:
        known = ", ".join(server.get("container_ip") or server["server_id"] for server in table["server_list"])
        mine = ", ".join(sorted(addresses["pod"] | addresses["host"]))
        problem = ("no server entry in the rank table matches" if not matches
                   else f"{len(matches)} server entries in the rank table match")
        raise UserError(f"{problem} this pod ({mine}); servers: {known}. "
                        "Set XDL_IP (status.hostIP) and POD_IP (status.podIP) in the pod spec")
    return matches[0]


def rank_table_envs(table: Mapping[str, Any], server: Mapping[str, Any], path: str) -> RankEnvs:
    """Per-rank variables for the devices of ``server`` (rank id from the table, logical device id)."""
    size = sum(len(entry["device"]) for entry in table["server_list"])
    devices = sorted(server["device"], key=lambda device: int(device["device_id"]))
    return {int(device["rank_id"]): {"DEVICE_ID": str(index), "RANK_ID": device["rank_id"], "RANK_SIZE": str(size),
                                     "RANK_TABLE_FILE": os.path.abspath(path)}
            for index, device in enumerate(devices)}


def default_log_dir(train_args: Sequence[str]) -> str:
    """RUN.OUTPUT_DIR/logs/POD_NAME for the fcn8s.train arguments ``train_args`` (validated here)."""
    from fcn8s.train import build_parser as train_parser  # imports MindSpore: only when needed

    cfg = config_from_args(train_parser().parse_args(list(train_args)))
    return os.path.join(cfg.run.output_dir, "logs", os.environ.get("HOSTNAME") or socket.gethostname())


def run_scheduler(env: Mapping[str, str]) -> None:
    """Become MindSpore's scheduler process (MS_SCHED_HOST/PORT and MS_WORKER_NUM come from the pod)."""
    _int(env, "MS_WORKER_NUM", 1)
    LOG.info("MindSpore scheduler for %s workers on %s:%s", env["MS_WORKER_NUM"], env.get("MS_SCHED_HOST"),
             env.get("MS_SCHED_PORT"))
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-c", SCHEDULER_CODE])


def plan_ranks(env: Mapping[str, str], timeout: float) -> RankEnvs:
    """Per-rank variables for this pod from the AscendJob variables or the mounted rank table."""
    role = env.get("MS_ROLE")
    if role:
        if role != "MS_WORKER":
            raise UserError(f"MS_ROLE={role!r}: expected MS_SCHED or MS_WORKER")
        return ascendjob_envs(env)
    path = rank_table_path(env) or DEFAULT_RANK_TABLE
    table = wait_for_rank_table(path, timeout)
    server = find_server(table, pod_addresses(env))
    envs = rank_table_envs(table, server, path)
    LOG.info("rank table %s: server %s, ranks %s of %d", path, server["server_id"], sorted(envs),
             int(next(iter(envs.values()))["RANK_SIZE"]))
    return envs


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.cluster.entrypoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank-table-timeout", type=_timeout, metavar="SECONDS",
                        default=os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_SECONDS)),
                        help=f"how long to wait for the rank table ({TIMEOUT_ENV}, default %(default)s)")
    parser.add_argument("--log-dir", help="per-rank logs and working dirs (default RUN.OUTPUT_DIR/logs/POD_NAME)")
    add_rank_command_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # as PID 1, while waiting
    module_args: List[str] = args.args[1:] if args.args[:1] == ["--"] else args.args
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        run_scheduler(os.environ)
    log_dir = os.path.abspath(args.log_dir or default_log_dir(module_args))
    envs = plan_ranks(os.environ, float(args.rank_table_timeout))
    procs = RankProcesses()
    start_workers(procs, envs, [sys.executable, "-m", args.module, *module_args], log_dir)
    return supervise_job(procs, log_dir)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
