"""Start one training process per device on this host and supervise them.

    python -m fcn8s.launch --nproc 8 -- --config configs/voc_fcn8s.yaml data.mindrecord_dir=/data/voc_mr

On an Ascend host (``/dev/davinci*`` or ``npu-smi``) each rank gets ``DEVICE_ID``, ``RANK_ID``,
``RANK_SIZE`` and ``RANK_TABLE_FILE`` (the one in the environment, else one generated for the
visible devices from ``/etc/hccn.conf``, the file named by ``HCCN_CONF``, or ``hccn_tool``).
Elsewhere the ranks are CPU workers of MindSpore's dynamic cluster (a scheduler process plus
``MS_ROLE``/``MS_NODE_ID`` per worker). Each rank logs to ``LOG_DIR/rank_K.log`` and
runs in ``LOG_DIR/rank_K/`` (MindSpore's per-process dumps land there). If any rank fails, the
others are stopped and the launcher exits with that rank's code; SIGINT/SIGTERM are forwarded.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from rank_table import RankTableError, devices

from fcn8s.config import LAUNCH_DIR_ENV
from fcn8s.distributed import free_port, rank_table_path, start_scheduler, worker_env
from fcn8s.errors import UserError, run_cli
from fcn8s.logs import setup_logging

LOG = logging.getLogger("fcn8s.launch")
STOP_GRACE_SECONDS = 10.0
# On SIGTERM/SIGINT ranks finish their step and rank 0 saves a checkpoint before exiting.
SIGNAL_GRACE_ENV = "FCN8S_SIGNAL_GRACE_SECONDS"
SIGNAL_GRACE_SECONDS = 120.0
POLL_SECONDS = 0.5
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ascend_devices() -> List[int]:
    """Visible NPU ids: ASCEND_VISIBLE_DEVICES if set (any rank_table device spec), else /dev/davinciN."""
    try:
        visible = devices.visible_devices(os.environ)
        if visible is not None:
            return visible
        return devices.list_dev_nodes()
    except RankTableError as err:
        if os.environ.get(devices.VISIBLE_ENV):
            raise UserError(str(err)) from None
        return []  # no /dev/davinciN: not an Ascend host


def on_ascend_host() -> bool:
    return bool(ascend_devices()) or shutil.which("npu-smi") is not None


class RankProcesses:
    """The scheduler (CPU) and worker processes of one job, each in its own process group."""

    def __init__(self) -> None:
        self.workers: Dict[int, subprocess.Popen] = {}
        self.scheduler: Optional[subprocess.Popen] = None

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
        """SIGTERM every process group, then SIGKILL what is left after the grace period."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(p.poll() is None for p in self.all()):
            time.sleep(0.1)
        self.signal_all(signal.SIGKILL)
        for proc in self.all():
            proc.wait()


def rank_envs(nproc: int, log_dir: str) -> List[Dict[str, str]]:
    """Environment additions for each rank (Ascend rank table or CPU dynamic cluster)."""
    if on_ascend_host():
        devices = ascend_devices()
        if nproc > len(devices):
            raise UserError(f"--nproc {nproc} is more than the {len(devices)} visible NPU(s) {devices}")
        table = rank_table_path(os.environ) or generate_rank_table(devices[:nproc], log_dir)
        return [{"DEVICE_ID": str(devices[k]), "RANK_ID": str(k), "RANK_SIZE": str(nproc),
                 "RANK_TABLE_FILE": os.path.abspath(table)} for k in range(nproc)]
    port = free_port()
    return [{**worker_env(k, nproc, "127.0.0.1", port), "RANK_ID": str(k), "RANK_SIZE": str(nproc),
             "DEVICE_ID": str(k)} for k in range(nproc)]


def generate_rank_table(devices: Sequence[int], log_dir: str) -> str:
    """Write an HCCL rank table for this server's ``devices`` with ``python -m rank_table``."""
    path = os.path.join(log_dir, "rank_table.json")
    command = [sys.executable, "-m", "rank_table", "generate", "--devices", ",".join(map(str, devices)), "-o", path]
    if os.environ.get("HCCN_CONF"):
        command += ["--hccn-conf", os.environ["HCCN_CONF"]]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT})
    if result.returncode != 0:
        raise UserError(f"cannot generate a rank table: {result.stderr.strip()} (or set RANK_TABLE_FILE)")
    return path


def start_ranks(nproc: int, command: Sequence[str], log_dir: str) -> RankProcesses:
    """Start all ranks (and the CPU scheduler); returns the supervised process set."""
    os.makedirs(log_dir, exist_ok=True)
    envs = rank_envs(nproc, log_dir)
    procs = RankProcesses()
    if "MS_SCHED_PORT" in envs[0]:
        procs.scheduler = start_scheduler(envs[0]["MS_SCHED_HOST"], int(envs[0]["MS_SCHED_PORT"]), nproc,
                                          rank_base_env(), os.path.join(log_dir, "scheduler.log"))
    start_workers(procs, dict(enumerate(envs)), command, log_dir)
    return procs


def rank_base_env() -> Dict[str, str]:
    """Environment every rank inherits: ours, plus the launch dir and the repository on PYTHONPATH."""
    python_path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, LAUNCH_DIR_ENV: os.getcwd(), "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}


def start_workers(procs: RankProcesses, envs: Dict[int, Dict[str, str]], command: Sequence[str],
                  log_dir: str) -> None:
    """Start ``command`` once per rank (rank -> extra env), logging to LOG_DIR/rank_K.log, cwd LOG_DIR/rank_K."""
    os.makedirs(log_dir, exist_ok=True)
    base_env = rank_base_env()
    for rank, extra in envs.items():
        workdir = os.path.join(log_dir, f"rank_{rank}")
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(log_dir, f"rank_{rank}.log"), "wb") as log:
            procs.workers[rank] = subprocess.Popen(list(command), cwd=workdir, env={**base_env, **extra},
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    LOG.info("started %d rank(s); logs in %s/rank_K.log", len(envs), log_dir)


class LogTail:
    """Copies new lines of one log file to stdout (rank 0's, so the user sees progress)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def pump(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        for line in data[:cut].decode(errors="replace").splitlines():
            if not line.startswith("[WARNING]"):
                print(line, flush=True)


def signal_grace_seconds() -> float:
    try:
        return float(os.environ.get(SIGNAL_GRACE_ENV, SIGNAL_GRACE_SECONDS))
    except ValueError:
        raise UserError(f"{SIGNAL_GRACE_ENV} must be a number of seconds") from None


def supervise(procs: RankProcesses, tail: LogTail) -> int:
    """Wait for all ranks; on the first failure stop the rest and return its exit code.

    SIGINT/SIGTERM go to the workers only, which stop after their current step (rank 0 saving a
    checkpoint); the scheduler and stragglers are stopped after FCN8S_SIGNAL_GRACE_SECONDS
    (or at once on a second signal). The exit code is then 128 + the signal number.
    """
    received: List[int] = []
    grace = signal_grace_seconds()

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        procs.signal_all(signum, workers_only=len(received) == 1)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            tail.pump()
            codes = {rank: p.poll() for rank, p in procs.workers.items()}
            failed = [(rank, code) for rank, code in codes.items() if code not in (None, 0)]
            if failed or received:
                if failed:
                    rank, code = failed[0]
                    LOG.error("rank %d exited with code %d; stopping the other ranks", rank, code)
                    code = code if code > 0 else 128 - code  # killed by signal N -> 128 + N, as shells report
                else:
                    code = 128 + received[0]
                    LOG.error("received signal %d; stopping all ranks", received[0])
                    deadline = time.monotonic() + grace
                    while len(received) == 1 and time.monotonic() < deadline and \
                            any(p.poll() is None for p in procs.workers.values()):
                        tail.pump()
                        time.sleep(POLL_SECONDS)
                procs.stop()
                tail.pump()
                return code
            if all(code == 0 for code in codes.values()):
                procs.stop()  # the scheduler, if it has not exited yet
                tail.pump()
                return 0
            time.sleep(POLL_SECONDS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, required=True, help="number of ranks (devices) on this host")
    parser.add_argument("--log-dir", default="logs", help="per-rank logs and working dirs (default ./logs)")
    add_rank_command_arguments(parser)
    return parser


def add_rank_command_arguments(parser: argparse.ArgumentParser) -> None:
    """``--module`` and the arguments (after ``--``) every rank runs; shared with the pod entrypoint."""
    parser.add_argument("--module", default="fcn8s.train", help="module each rank runs (default fcn8s.train)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the module (after --)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.nproc <= 0:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    module_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    log_dir = os.path.abspath(args.log_dir)
    procs = start_ranks(args.nproc, [sys.executable, "-m", args.module, *module_args], log_dir)
    return supervise_job(procs, log_dir)


def supervise_job(procs: RankProcesses, log_dir: str) -> int:
    """Supervise started ranks, showing the lowest rank's log; returns the job's exit code."""
    code = supervise(procs, LogTail(os.path.join(log_dir, f"rank_{min(procs.workers)}.log")))
    LOG.info("job %s (exit code %d); logs: %s", "finished" if code == 0 else "FAILED", code, log_dir)
    return code


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
