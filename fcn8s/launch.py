"""Start this server's training processes (one per device) and supervise them.

    python -m fcn8s.launch --nproc 8 -- --config configs/voc_fcn8s.yaml data.mindrecord_dir=/data/voc_mr
    # two servers, 8 ranks each (run on both; K = 0 on the first, 1 on the second):
    python -m fcn8s.launch --nproc 8 --nnodes 2 --node-rank K --master-addr 10.0.0.1 -- --config ...

Which ranks run here (see fcn8s/placement.py):
* Ascend host with RANK_TABLE_FILE: this server's entry of the (merged) table decides the ranks,
  the world size and the NPUs (found by SERVER_ID or this host's addresses); --nnodes /
  --node-rank, when given, must agree with it.
* Ascend host, one server, no table: a table is generated for the first N visible NPUs (from
  /etc/hccn.conf, HCCN_CONF or hccn_tool).
* Otherwise (CPU, or Ascend without a table): MindSpore's dynamic cluster; global rank =
  node_rank x nproc + local rank; node 0 runs the scheduler on MASTER_ADDR:MASTER_PORT+1.
DEVICE_ID is always the logical NPU id (position among ASCEND_RT_VISIBLE_DEVICES /
ASCEND_VISIBLE_DEVICES / /dev/davinciN), rank tables carry physical ids.

With --nnodes > 1 the launchers meet on MASTER_ADDR:MASTER_PORT (node 0 listens), refuse
contradicting shapes, and watch each other: a failed rank or a lost node stops every node
(exit code of the failed rank; 1 for a lost node). Each rank logs to LOG_DIR/rank_K.log and runs
in LOG_DIR/rank_K/. SIGINT/SIGTERM are forwarded (ranks checkpoint and exit 128+signal).
--dry-run prints this server's plan as JSON and starts nothing.
A training rank that finishes no step for --hang-timeout seconds (heartbeat files, see
fcn8s/watchdog.py) stops the job with exit 124; every failure writes LOG_DIR/failure.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from rank_table import RankTableError
from rank_table.devices import DEFAULT_HCCN_CONF
from rank_table.files import generate_table
from rank_table.table import validate_table

from fcn8s.config import LAUNCH_DIR_ENV
from fcn8s.distributed import free_port, rank_table_path, start_scheduler
from fcn8s.errors import UserError, run_cli
from fcn8s.failure import signal_name, write_failure_report
from fcn8s.hostnet import LOOPBACK, interface_addresses, local_addresses, resolve_host
from fcn8s.logs import setup_logging
from fcn8s.preflight import PROBLEM, Job, report, run_checks, verdict
from fcn8s.placement import NodePlan, dynamic_cluster_plan, find_server, rank_table_plan, visible_npus
from fcn8s.rendezvous import Coordinator, Member, NodeInfo, Verdict, wait_unless_cancelled
from fcn8s.restarts import MAX_BACKOFF_SECONDS, RESTART_ENV, RestartPolicy, restart_arguments
from fcn8s.heartbeat import HEARTBEAT_ENV
from fcn8s.watchdog import (DEFAULT_FIRST_STEP_TIMEOUT, DEFAULT_HANG_TIMEOUT, HangLimits, Watchdog, hccl_exec_timeout,
                            heartbeat_path)

LOG = logging.getLogger("fcn8s.launch")
# After a failure (or at the end, for the scheduler) what is left gets SIGTERM, then SIGKILL after this grace.
# Ranks blocked in a collective with a dead peer cannot act on it: they wait it out.
STOP_GRACE_ENV = "FCN8S_STOP_GRACE_SECONDS"
STOP_GRACE_SECONDS = 10.0
# On SIGTERM/SIGINT ranks finish their step and rank 0 saves a checkpoint before exiting.
SIGNAL_GRACE_ENV = "FCN8S_SIGNAL_GRACE_SECONDS"
SIGNAL_GRACE_SECONDS = 120.0
POLL_SECONDS = 0.5
# A line that starts a log record (ours, MindSpore's, a traceback, a restart mark) rather than continuing one.
NEW_RECORD = re.compile(r"(\d\d:\d\d:\d\d \[|\[[A-Z]+\]|Traceback |=====)")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEFAULT_MASTER_PORT = 29500
DEFAULT_RENDEZVOUS_TIMEOUT = 600.0


@dataclass(frozen=True)
class NodeOptions:
    """What the user said about this server's place in the job (None: not given)."""

    nproc: int
    nnodes: Optional[int] = None
    node_rank: Optional[int] = None
    master_addr: str = LOOPBACK
    master_port: Optional[int] = None
    rendezvous_timeout: float = DEFAULT_RENDEZVOUS_TIMEOUT


def on_ascend_host(npus: Sequence[int]) -> bool:
    return bool(npus) or shutil.which("npu-smi") is not None


class RankProcesses:
    """The scheduler (CPU) and worker processes of one job, each in its own process group."""

    def __init__(self) -> None:
        self.workers: Dict[int, subprocess.Popen] = {}
        self.scheduler: Optional[subprocess.Popen] = None
        self.stop_grace = seconds_from_env(STOP_GRACE_ENV, STOP_GRACE_SECONDS)

    def all(self) -> List[subprocess.Popen]:
        return list(self.workers.values()) + ([self.scheduler] if self.scheduler else [])

    def signal_all(self, signum: int, workers_only: bool = False) -> None:
        for proc in self.workers.values() if workers_only else self.all():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left after ``FCN8S_STOP_GRACE_SECONDS``."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.all()):
            time.sleep(0.1)
        self.signal_all(signal.SIGKILL)
        for proc in self.all():
            proc.wait()


def generate_rank_table(devices: Sequence[int], log_dir: str) -> str:
    """Write an HCCL rank table for this server's ``devices`` (device IPs from HCCN_CONF or hccn_tool)."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "rank_table.json")
    try:
        generate_table(path, list(devices), os.environ.get("HCCN_CONF") or DEFAULT_HCCN_CONF)
    except RankTableError as err:
        raise UserError(f"cannot generate a rank table: {err} (or set RANK_TABLE_FILE)") from None
    return path


def read_rank_table(path: str) -> Dict:
    """The validated rank table at ``path`` (a UserError naming the file otherwise)."""
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
        validate_table(table)
    except (OSError, ValueError, RankTableError) as err:
        raise UserError(f"rank table {path}: {err}") from None
    return table


def plan_from_rank_table(args: NodeOptions, path: str, npus: Sequence[int],
                         env: Mapping[str, str]) -> NodePlan:
    """This server's ranks from its entry in the rank table at ``path``, checked against the arguments."""
    table = read_rank_table(path)
    addresses = local_addresses()
    plan = rank_table_plan(table, find_server(table, {"pod": addresses, "host": addresses}, env, npus), path, npus)
    where = f"rank table {path} (server {plan.server})"
    if args.nproc != len(plan.ranks):
        raise UserError(f"{where} lists {len(plan.ranks)} device(s) for this server, but N (--nproc) is {args.nproc}")
    for option, given, actual in (("NNODES (--nnodes)", args.nnodes, plan.nnodes),
                                  ("NODE_RANK (--node-rank)", args.node_rank, plan.node_rank)):
        if given is not None and given != actual:
            raise UserError(f"{option} is {given} but {where} makes it {actual}")
    return plan


def plan_node(args: NodeOptions, log_dir: str, env: Mapping[str, str]) -> NodePlan:
    """This server's ranks: from the rank table on Ascend, else the dynamic cluster (see module doc)."""
    npus = visible_npus(env)
    nnodes = args.nnodes or 1
    table = rank_table_path(env)
    if on_ascend_host(npus) and table:
        return plan_from_rank_table(args, table, npus, env)
    node_rank = args.node_rank or 0
    if not 0 <= node_rank < nnodes:
        raise UserError(f"NODE_RANK (--node-rank) {node_rank} must be in 0..{nnodes - 1} for NNODES={nnodes}")
    if npus and args.nproc > len(npus):
        raise UserError(f"--nproc {args.nproc} is more than the {len(npus)} visible NPU(s) {list(npus)}")
    if on_ascend_host(npus) and nnodes == 1:
        path = generate_rank_table(npus[:args.nproc], log_dir)
        return rank_table_plan(read_rank_table(path), 0, path, npus)
    if nnodes == 1:
        return dynamic_cluster_plan(args.nproc, 1, 0, LOOPBACK, args.master_port or free_port())
    master = resolve_host(args.master_addr, "MASTER_ADDR (--master-addr)")
    if master.startswith("127."):
        raise UserError(f"MASTER_ADDR (--master-addr) {args.master_addr} is a loopback address: with NNODES={nnodes} "
                        "give server 0's address that the other servers reach")
    return dynamic_cluster_plan(args.nproc, nnodes, node_rank, master, args.master_port + 1)


def master_address(plan: NodePlan, table_path: Optional[str], args: NodeOptions) -> str:
    """Where node 0's launcher listens: --master-addr, else (rank table) the first server's address."""
    if plan.source == "dynamic_cluster":
        return plan.server
    if args.master_addr != LOOPBACK:
        return resolve_host(args.master_addr, "MASTER_ADDR (--master-addr)")
    first = read_rank_table(str(table_path))["server_list"][0]
    return first.get("host_ip") or first["server_id"]


def join_peers(plan: NodePlan, args: NodeOptions) -> Union[Coordinator, Member, None]:
    """Meet the other servers' launchers (nothing to do on a single server)."""
    if plan.nnodes == 1:
        return None
    master = master_address(plan, rank_table_path(os.environ), args)
    mine = sorted(interface_addresses()) or [LOOPBACK]
    host = master if plan.node_rank == 0 else mine[0]
    me = NodeInfo(node_rank=plan.node_rank, nnodes=plan.nnodes, world_size=plan.world_size,
                  ranks=[r.rank for r in plan.ranks], host=host, source=plan.source)
    port = args.master_port or DEFAULT_MASTER_PORT
    if plan.node_rank == 0:
        return Coordinator(me, port, args.rendezvous_timeout)
    return Member(me, master, port, args.rendezvous_timeout)


def start_plan(plan: NodePlan, command: Sequence[str], log_dir: str, attempt: int = 0) -> RankProcesses:
    """Start this node's scheduler (dynamic cluster, node 0) and ranks (``attempt``: restarts so far)."""
    os.makedirs(log_dir, exist_ok=True)
    procs = RankProcesses()
    if plan.scheduler:
        procs.scheduler = start_scheduler(plan.scheduler["host"], plan.scheduler["port"], plan.world_size,
                                          rank_base_env(), os.path.join(log_dir, "scheduler.log"))
    start_workers(procs, {r.rank: r.env for r in plan.ranks}, command, log_dir, attempt)
    return procs


def rank_base_env() -> Dict[str, str]:
    """Environment every rank inherits: ours, plus the launch dir and the repository on PYTHONPATH."""
    python_path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, LAUNCH_DIR_ENV: os.getcwd(), "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}


def start_workers(procs: RankProcesses, envs: Dict[int, Dict[str, str]], command: Sequence[str],
                  log_dir: str, attempt: int = 0) -> None:
    """Start ``command`` once per rank (rank -> extra env), logging to LOG_DIR/rank_K.log, cwd LOG_DIR/rank_K.

    A restart (``attempt`` > 0) appends to the logs, after a line that says so.
    """
    os.makedirs(log_dir, exist_ok=True)
    base_env = {**rank_base_env(), RESTART_ENV: str(attempt)}
    for rank, extra in envs.items():
        workdir = os.path.join(log_dir, f"rank_{rank}")
        os.makedirs(workdir, exist_ok=True)
        heartbeat = heartbeat_path(log_dir, rank)
        if os.path.exists(heartbeat):
            os.remove(heartbeat)  # a previous run's progress
        with open(os.path.join(log_dir, f"rank_{rank}.log"), "ab" if attempt else "wb") as log:
            if attempt:
                log.write(f"===== restart {attempt} =====\n".encode())
                log.flush()
            procs.workers[rank] = subprocess.Popen(list(command), cwd=workdir,
                                                   env={**base_env, HEARTBEAT_ENV: heartbeat, **extra},
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    LOG.info("started %d rank(s)%s; logs in %s/rank_K.log", len(envs), f" (restart {attempt})" if attempt else "",
             log_dir)


class LogTail:
    """Copies new lines of one log file to stdout (rank 0's, so the user sees progress).

    MindSpore's ``[WARNING]`` records are left out, with their continuation lines (a warning can
    print whole tensors); they stay in the rank's log file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.in_warning = False

    def pump(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        for line in data[:cut].decode(errors="replace").splitlines():
            if line.startswith("[WARNING]"):
                self.in_warning = True
            elif not self.in_warning or NEW_RECORD.match(line):
                self.in_warning = False
                print(line, flush=True)


def seconds_from_env(name: str, default: float) -> float:
    """A number of seconds from the environment variable ``name`` (``default`` when unset)."""
    try:
        seconds = float(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"{name} must be a number of seconds") from None
    if seconds < 0:
        raise UserError(f"{name} must be a number of seconds, not negative")
    return seconds


class SignalForwarder:
    """While active, SIGINT/SIGTERM to the launcher are recorded and forwarded to the current ranks.

    The first signal goes to the workers only (they stop after their step, rank 0 saving a
    checkpoint); a second one goes to every process at once.
    """

    def __init__(self) -> None:
        self.received: List[int] = []
        self.procs = RankProcesses()
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "SignalForwarder":
        self._previous = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _forward(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        self.procs.signal_all(signum, workers_only=len(self.received) == 1)

    def cancelled(self) -> bool:
        return bool(self.received)


def supervise(procs: RankProcesses, tail: LogTail, signals: SignalForwarder,
              peers: Union[Coordinator, Member, None] = None, watchdog: Optional[Watchdog] = None) -> Optional[Verdict]:
    """Wait for this node's ranks; on the first failure (here or, via ``peers``, elsewhere) stop them all.

    Failures: a rank exits non-zero, a rank hangs (``watchdog``), the scheduler dies, another node
    fails or is lost, or node 0 orders a restart. Returns None when the job succeeded, else the
    verdict, after this node's processes have stopped.
    On SIGINT/SIGTERM (``signals``) the workers stop after their current step; the scheduler and
    stragglers are stopped after FCN8S_SIGNAL_GRACE_SECONDS (or at once on a second signal), and
    the verdict's code is 128 + the signal number.
    """
    grace = seconds_from_env(SIGNAL_GRACE_ENV, SIGNAL_GRACE_SECONDS)
    signals.procs = procs
    steps = watchdog.last_steps if watchdog else dict
    while True:
        tail.pump()
        verdict = peers.poll() if peers else None
        if verdict:
            LOG.error("%s; stopping this node's ranks", verdict.message)
            return stop_with(procs, tail, verdict)
        codes = {rank: p.poll() for rank, p in procs.workers.items()}
        scheduler = procs.scheduler.poll() if procs.scheduler else None  # first: ranks die when it does
        if scheduler not in (None, 0) and not all(code == 0 for code in codes.values()):
            code, how = exit_description(scheduler)
            message = f"the MindSpore scheduler on {this_host()} exited with {how}"
            LOG.error("%s; stopping the ranks", message)
            return fail_here(procs, tail, peers, Verdict(code, message, process="scheduler"))
        failed = [(rank, code) for rank, code in codes.items() if code not in (None, 0)]
        if failed:
            rank, code = failed[0]
            code, how = exit_description(code)
            step = steps().get(rank)
            message = f"rank {rank} on {this_host()} exited with {how}" + (f" after step {step}" if step is not None
                                                                           else "")
            LOG.error("%s; stopping the other ranks", message)
            return fail_here(procs, tail, peers, Verdict(code, message, rank=rank))
        hung = watchdog.check({rank: procs.workers[rank].pid for rank, code in codes.items() if code is None}) \
            if watchdog else None
        if hung:
            LOG.error("%s; stopping the job", hung[1].message)
            return fail_here(procs, tail, peers, Verdict(hung[1].code, hung[1].message, rank=hung[0]))
        if signals.received:
            LOG.error("received signal %d; stopping all ranks", signals.received[0])
            deadline = time.monotonic() + grace
            while len(signals.received) == 1 and time.monotonic() < deadline and \
                    any(p.poll() is None for p in procs.workers.values()):
                tail.pump()
                time.sleep(POLL_SECONDS)
            signum = signals.received[0]
            return stop_with(procs, tail, Verdict(128 + signum, f"the launcher on {this_host()} received "
                                                                f"{signal.Signals(signum).name}", restartable=False))
        if all(code == 0 for code in codes.values()):
            verdict = peers.finish() if peers else None
            if verdict:
                LOG.error("%s", verdict.message)
            return stop_with(procs, tail, verdict)  # the scheduler, if still up
        time.sleep(POLL_SECONDS)


def this_host() -> str:
    """``hostname (address)`` of this server, for messages."""
    addresses = sorted(interface_addresses())
    return f"{socket.gethostname()} ({addresses[0]})" if addresses else socket.gethostname()


def exit_description(returncode: int) -> Tuple[int, str]:
    """(exit code as shells report it, text): -9 (killed by SIGKILL) -> (137, "SIGKILL (code 137)")."""
    code = returncode if returncode > 0 else 128 - returncode
    name = signal_name(code)
    return code, f"{name} (code {code})" if name else f"code {code}"


def fail_here(procs: RankProcesses, tail: LogTail, peers: Union[Coordinator, Member, None],
              verdict: Verdict) -> Optional[Verdict]:
    """A failure on this node: tell node 0 first (it decides for all), then stop this node's processes."""
    if peers:
        peers.tell(verdict)
    return stop_with(procs, tail, verdict)


def stop_with(procs: RankProcesses, tail: LogTail, verdict: Optional[Verdict]) -> Optional[Verdict]:
    """Stop what is left of this node's processes, show the last log lines, return ``verdict``."""
    procs.stop()
    tail.pump()
    return verdict


def _port(text: str) -> int:
    if not text.isdigit() or not 1024 <= int(text) <= 65534:
        raise argparse.ArgumentTypeError(f"expected a port number 1024..65534, got {text!r}")
    return int(text)


def positive_seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, required=True, help="number of ranks (devices) on this server")
    parser.add_argument("--nnodes", type=int, help="number of servers in the job (NNODES; default 1, or the "
                                                   "rank table's server count)")
    parser.add_argument("--node-rank", type=int, help="this server's index 0..nnodes-1 (NODE_RANK; default 0, or "
                                                      "its position in the rank table)")
    parser.add_argument("--master-addr", default=LOOPBACK,
                        help="server 0's address, reachable from every server (MASTER_ADDR; default %(default)s; "
                             "with a rank table: its first server)")
    parser.add_argument("--master-port", type=_port, default=None,
                        help=f"node 0's rendezvous port; the CPU scheduler uses the next one (MASTER_PORT; default "
                             f"{DEFAULT_MASTER_PORT} with --nnodes > 1, a free port on one server)")
    parser.add_argument("--rendezvous-timeout", type=positive_seconds, default=DEFAULT_RENDEZVOUS_TIMEOUT, metavar="SECONDS",
                        help="how long servers wait for each other at start (default %(default)s)")
    parser.add_argument("--log-dir", default="logs", help="per-rank logs and working dirs (default ./logs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print this server's plan (ranks, devices, environment) as JSON and start nothing")
    add_rank_command_arguments(parser)
    add_supervision_arguments(parser)
    return parser


def add_supervision_arguments(parser: argparse.ArgumentParser) -> None:
    """Hang watchdog and restart settings; shared with the pod entrypoint."""
    add_hang_arguments(parser)
    add_restart_arguments(parser)


def add_hang_arguments(parser: argparse.ArgumentParser) -> None:
    """Hang watchdog settings; shared with fcn8s.train (its in-process watchdog)."""
    parser.add_argument("--hang-timeout", type=positive_seconds, metavar="SECONDS",
                        default=os.environ.get("HANG_TIMEOUT") or None,
                        help="stop the job (exit 124) when a training rank finished no step for this long; "
                             "evaluation and checkpoint writes do not count (HANG_TIMEOUT; default 2/3 of "
                             f"HCCL_EXEC_TIMEOUT, i.e. of dist.hccl_exec_timeout, at most {DEFAULT_HANG_TIMEOUT:.0f}, "
                             "so that on Ascend the watchdog acts before HCCL and names the rank)")
    parser.add_argument("--first-step-timeout", type=positive_seconds, metavar="SECONDS",
                        default=str(DEFAULT_FIRST_STEP_TIMEOUT),
                        help="the same for start-up and the first step, which compiles the graph "
                             "(default %(default)s)")


def add_restart_arguments(parser: argparse.ArgumentParser) -> None:
    """Automatic restart settings of the supervisors."""
    parser.add_argument("--max-restarts", type=non_negative_int, metavar="N",
                        default=os.environ.get("MAX_RESTARTS") or "0",
                        help="restart every rank with --resume auto after a rank died or hung, at most N times per "
                             "job; never after bad input (exit 2), divergence (3) or a signal to the launcher "
                             "(MAX_RESTARTS, default %(default)s; see fcn8s/restarts.py)")
    parser.add_argument("--restart-backoff", type=positive_seconds, metavar="SECONDS",
                        default=os.environ.get("RESTART_BACKOFF") or "10",
                        help="wait before the first restart, doubled for each further one up to "
                             f"{MAX_BACKOFF_SECONDS:.0f} s (RESTART_BACKOFF, default %(default)s)")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def restart_policy(args: argparse.Namespace) -> RestartPolicy:
    """The restart settings of ``args`` (only fcn8s.train knows how to resume)."""
    if args.max_restarts and args.module != "fcn8s.train":
        raise UserError(f"--max-restarts restarts fcn8s.train with --resume auto; --module {args.module} "
                        "cannot be resumed")
    return RestartPolicy(args.max_restarts, args.restart_backoff)


def rank_command(args: argparse.Namespace, module_args: Sequence[str], attempt: int) -> List[str]:
    """What every rank runs; restarts resume from the newest checkpoint."""
    return [sys.executable, "-m", args.module, *(restart_arguments(module_args) if attempt else module_args)]


def hang_limits(args: argparse.Namespace, module_args: Sequence[str]) -> Optional[HangLimits]:
    """The watchdog's limits for ranks running fcn8s.train ``module_args`` (None for other modules, which
    report no progress): below the HCCL_EXEC_TIMEOUT they will run with (environment, else config)."""
    if args.module != "fcn8s.train":
        return None
    from fcn8s.train_args import train_config  # it builds on this module

    hccl = hccl_exec_timeout(os.environ, train_config(module_args).dist.hccl_exec_timeout)
    limits = HangLimits.below_hccl(args.hang_timeout, args.first_step_timeout, hccl)
    LOG.info("hang watchdog: a rank is hung after %.0f s without a step (%.0f s until its first step ends); "
             "HCCL_EXEC_TIMEOUT %.0f s", limits.hang_timeout, limits.first_step_timeout, hccl)
    return limits


def watchdog_for(limits: Optional[HangLimits], log_dir: str, ranks: Sequence[int]) -> Optional[Watchdog]:
    """A hang watchdog over ``ranks`` (None without limits)."""
    return Watchdog(log_dir, ranks, limits, this_host()) if limits else None


def add_rank_command_arguments(parser: argparse.ArgumentParser) -> None:
    """``--module`` and the arguments (after ``--``) every rank runs; shared with the pod entrypoint."""
    parser.add_argument("--module", default="fcn8s.train", help="module each rank runs (default fcn8s.train)")
    parser.add_argument("--no-preflight", action="store_true", default=os.environ.get("NO_PREFLIGHT") == "1",
                        help="start the ranks without first running python -m fcn8s.preflight's checks on the "
                             "fcn8s.train arguments (NO_PREFLIGHT=1)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the module (after --)")


def preflight(args: argparse.Namespace, module_args: Sequence[str], job: Job) -> None:
    """Run fcn8s.preflight's checks for fcn8s.train ranks (unless --no-preflight); a problem stops the job here."""
    if args.no_preflight or args.module != "fcn8s.train":
        return
    checks = run_checks(module_args, job, connect=False)  # other nodes: node 0 may not listen yet
    if any(check.status == PROBLEM for check in checks):
        raise UserError(f"{report(checks)}\n(fix the problems, or start anyway with --no-preflight / NO_PREFLIGHT=1)")
    LOG.info("%s", verdict(checks))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.nproc <= 0:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nnodes is not None and args.nnodes <= 0:
        raise UserError(f"NNODES (--nnodes) must be >= 1, got {args.nnodes}")
    default_port = DEFAULT_MASTER_PORT if (args.nnodes or 1) > 1 else None
    options = NodeOptions(nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank, master_addr=args.master_addr,
                          master_port=args.master_port or default_port, rendezvous_timeout=args.rendezvous_timeout)
    module_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    log_dir = os.path.abspath(args.log_dir)
    plan = plan_node(options, log_dir, os.environ)
    if args.dry_run:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    policy = restart_policy(args)
    preflight(args, module_args, Job(nproc=len(plan.ranks), nnodes=plan.nnodes, node_rank=plan.node_rank,
                                     master_addr=options.master_addr,
                                     master_port=options.master_port or DEFAULT_MASTER_PORT, world=plan.world_size,
                                     placed=f"{plan.source}, server {plan.server}"))
    limits = hang_limits(args, module_args)
    peers = join_peers(plan, options)

    def start(attempt: int) -> RankProcesses:
        fresh = plan if attempt == 0 or plan.nnodes > 1 else plan_node(options, log_dir, os.environ)  # new port
        return start_plan(fresh, rank_command(args, module_args, attempt), log_dir, attempt)

    try:
        return run_job(start, log_dir, peers, lambda procs: watchdog_for(limits, log_dir, list(procs.workers)), policy)
    finally:
        if peers:
            peers.close()


def run_job(start: Callable[[int], RankProcesses], log_dir: str, peers: Union[Coordinator, Member, None] = None,
            watchdog: Callable[[RankProcesses], Optional[Watchdog]] = lambda procs: None,
            policy: RestartPolicy = RestartPolicy()) -> int:
    """Start the ranks (``start(restarts so far)``), supervise them, restart the group as ``policy`` allows.

    Shows the lowest rank's log; on the final failure writes LOG_DIR/failure.json. Returns the exit code.
    """
    restarts, tail = 0, None
    with SignalForwarder() as signals:
        while True:
            procs = start(restarts)
            tail = tail or LogTail(os.path.join(log_dir, f"rank_{min(procs.workers)}.log"))
            dog = watchdog(procs)
            verdict = supervise(procs, tail, signals, peers, dog)
            if verdict is None:
                LOG.info("job finished (exit code 0%s); logs: %s",
                         f", after {restarts} restart(s)" if restarts else "", log_dir)
                return 0
            verdict = decide(verdict, restarts, policy, peers, signals)
            if verdict.restart is None:
                write_failure_report(log_dir, message=verdict.message, exit_code=verdict.code, host=this_host(),
                                     rank=verdict.rank, steps=dog.last_steps() if dog else {},
                                     log_path=failed_log(log_dir, verdict), restarts_used=restarts,
                                     process=verdict.process)
                LOG.info("job FAILED (exit code %d); logs: %s", verdict.code, log_dir)
                return verdict.code
            restarts = verdict.restart


def failed_log(log_dir: str, verdict: Verdict) -> Optional[str]:
    """The log of what failed: a rank's, the scheduler's, or none (another node, a signal)."""
    if verdict.rank is not None:
        return os.path.join(log_dir, f"rank_{verdict.rank}.log")
    return os.path.join(log_dir, "scheduler.log") if verdict.process == "scheduler" else None


def decide(verdict: Verdict, used: int, policy: RestartPolicy, peers: Union[Coordinator, Member, None],
           signals: SignalForwarder) -> Verdict:
    """Restart (the returned verdict has ``restart`` set, every node ready) or end the job (it has not).

    Node 0 (or a single server) decides with ``policy``; another node follows node 0's decision.
    """
    if isinstance(peers, Member) and verdict.restart is None and verdict.local:
        order = peers.decision(verdict, signals.cancelled)
        verdict = order if order.restart is not None else replace(verdict, restartable=False)  # what failed here
    if isinstance(peers, Member):
        if verdict.restart is None:
            return verdict
        LOG.warning("restart %d ordered by node 0 (%s)", verdict.restart, verdict.message)
        return peers.regroup(verdict.restart, signals.cancelled) or _unless_signalled(verdict, signals)
    refusal = policy.refusal(verdict, used)
    if refusal:
        if policy.max_restarts:
            LOG.error("not restarting: %s", refusal)
        if peers:
            peers.report_failure(verdict)
        return verdict
    restart, delay = used + 1, policy.delay(used + 1)
    LOG.warning("restart %d/%d after %s (in %.0f s, with --resume auto)", restart, policy.max_restarts,
                verdict.message, delay)
    if peers:
        problem = peers.regroup(restart, verdict.message, delay, signals.cancelled)
        if problem:
            return problem
    else:
        wait_unless_cancelled(delay, signals.cancelled)
    return _unless_signalled(replace(verdict, restart=restart), signals)


def _unless_signalled(verdict: Verdict, signals: SignalForwarder) -> Verdict:
    """``verdict``, or the end of the job if the launcher was signalled meanwhile."""
    if not signals.received:
        return verdict
    name = signal.Signals(signals.received[0]).name
    return Verdict(128 + signals.received[0], f"the launcher on {this_host()} received {name} before the restart",
                   restartable=False)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
