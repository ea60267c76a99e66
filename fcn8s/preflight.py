"""Check a training job before NPU time is booked: seconds, no device initialised.

    python -m fcn8s.preflight --config configs/voc_fcn8s.yaml --nproc 8 data.mindrecord_dir=/data/voc_mr
    python -m fcn8s.preflight --nproc 8 --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --config ... --json

Every argument that is not a preflight option is an ``fcn8s.train`` argument (``--config``,
``KEY=VALUE`` overrides, ``--resume``, ``--pretrained``). NNODES, NODE_RANK, MASTER_ADDR and
MASTER_PORT are read from the environment as run_distribute.sh does. Checks, one line each
(ok / problem / skipped, with the reason):

  config      the config and overrides are valid
  dataset     the train (and, with train.eval_interval, val) split exists and matches its manifest;
              split sizes, steps per epoch, total steps; one global batch fits in the train split
  output_dir  run.output_dir is writable and has room for keep_checkpoints + 2 checkpoints plus logs
              (checkpoint size = (all parameters + momentum of the trainable ones) x 4 bytes, from the
              network's shapes, + sidecar)
  memory      estimated host memory of N ranks vs MemAvailable (an estimate: 8 x parameter bytes + 1 GiB
              per rank, calibrated on ~5 GB measured for one FCN-8s CPU rank)
  npus        Ascend: NPUs visible (ASCEND_RT_VISIBLE_DEVICES / ASCEND_VISIBLE_DEVICES / /dev/davinciN)
              vs N; skipped on a host without NPUs
  rank_table  Ascend with RANK_TABLE_FILE: valid, this host present with the visible devices
  hccl        Ascend: HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT (environment, else dist.*) in HCCL's ranges
  master      NNODES > 1: MASTER_ADDR resolves (not loopback); node 0: MASTER_PORT and the CPU scheduler
              port MASTER_PORT+1 are free; other nodes: MASTER_PORT accepts a TCP connection (2 s time-out)
  pretrained  model.pretrained (if set) reads and maps onto the backbone (counts)
  resume      --resume auto: which checkpoint would be used and that it verifies (sha256); --resume PATH:
              that it verifies

Exit code 0 when nothing is a problem, 2 otherwise. The launchers run these checks before starting
any rank (``--no-preflight`` / NO_PREFLIGHT=1 to skip).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from fcn8s.config import FC_CHANNELS, Config, config_from_args
from fcn8s.data.mindrecord import dataset_files, read_manifest
from fcn8s.data.sampling import steps_in_epoch
from fcn8s.distributed import rank_table_path
from fcn8s.errors import UserError, run_cli
from fcn8s.hostnet import LOOPBACK, resolve_host
from fcn8s.model_size import checkpoint_bytes, parameter_counts
from fcn8s.placement import RT_VISIBLE_ENV, visible_npus

OK, PROBLEM, SKIPPED = "ok", "problem", "skipped"
GIB = 1 << 30
LOG_BYTES_PER_RANK = 64 << 20  # room for one rank's log and its working dir
CONNECT_TIMEOUT = 2.0
HCCL_RANGES = {"HCCL_CONNECT_TIMEOUT": (120, 7200, 1), "HCCL_EXEC_TIMEOUT": (68, 17340, 68)}


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.name:<11} {self.status:<8} {self.detail}"


@dataclass(frozen=True)
class Job:
    """What the launcher knows about the job: ranks here, servers, this server's place, where node 0 is."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = LOOPBACK
    master_port: int = 29500
    world: int = 0  # ranks in the whole job; 0: nproc x nnodes
    placed: Optional[str] = None  # how a launcher already placed this server's ranks (rank table checked)

    @property
    def world_size(self) -> int:
        return self.world or self.nproc * self.nnodes


def _size(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB / 10 else f"{num_bytes / (1 << 20):.1f} MiB"


def split_size(dataset_dir: str, split: str) -> int:
    """Samples in ``split`` (files checked against the manifest; its count, else MindRecord's own)."""
    dataset_files(dataset_dir, split)
    manifest = read_manifest(dataset_dir) if os.path.isdir(dataset_dir) else None
    count = ((manifest or {}).get("splits", {}).get(split) or {}).get("count")
    if isinstance(count, int):
        return count
    from fcn8s.data.pipeline import count_samples  # reads the MindRecord header (imports MindSpore)

    return count_samples(dataset_dir, split)


def check_dataset(cfg: Config, world_size: int) -> Check:
    data, train = cfg.data, cfg.train
    sizes = {split: split_size(data.mindrecord_dir, split)
             for split in (("train", "val") if train.eval_interval else ("train",))}
    global_batch = train.batch_size * world_size
    per_epoch = steps_in_epoch(sizes["train"], 0, train.batch_size, world_size)
    described = ", ".join(f"{split} {count} samples" for split, count in sizes.items())
    if per_epoch == 0:
        return Check("dataset", PROBLEM, f"{data.mindrecord_dir}: {described}, fewer than one global batch of "
                                         f"{global_batch} (train.batch_size {train.batch_size} x {world_size} ranks)")
    total = train.max_steps or train.epochs * per_epoch
    return Check("dataset", OK, f"{data.mindrecord_dir}: {described}; global batch {global_batch}, {per_epoch} "
                                f"steps per epoch, {total} steps in total")


def existing_ancestor(path: str) -> str:
    """``path`` or its nearest existing parent."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_dir(path: str, needed: int, what: str) -> Check:
    """``path`` can be created and written, and its file system has ``needed`` bytes free."""
    base = existing_ancestor(path)
    try:
        if not os.path.isdir(base):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", base)
        with tempfile.NamedTemporaryFile(dir=base, prefix=".fcn8s-preflight-"):
            pass
    except OSError as err:
        return Check("output_dir", PROBLEM, f"{path} is not writable ({base}: {err.strerror})")
    free = shutil.disk_usage(base).free
    if free < needed:
        return Check("output_dir", PROBLEM, f"{path}: {_size(free)} free, {what} need {_size(needed)}")
    return Check("output_dir", OK, f"{path} writable, {_size(free)} free ({what}: {_size(needed)})")


def storage_needed(cfg: Config, ranks: int) -> Tuple[int, str]:
    """(bytes, description) for keep_checkpoints + 2 checkpoints and ``ranks`` logs."""
    count = cfg.train.keep_checkpoints + 2
    one = checkpoint_bytes(cfg.model.num_classes, cfg.model.fc_channels)
    return count * one + ranks * LOG_BYTES_PER_RANK, \
        f"{count} checkpoints of {_size(one)} (keep_checkpoints + best + final) + logs of {ranks} rank(s)"


def rank_memory_bytes(cfg: Config) -> int:
    """Estimated host memory of one training rank (see the module doc)."""
    total, _trainable = parameter_counts(cfg.model.num_classes, cfg.model.fc_channels)
    return 8 * 4 * total + GIB


def available_memory(meminfo: str = "/proc/meminfo") -> Optional[int]:
    try:
        with open(meminfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg: Config, nproc: int, available: Optional[int]) -> Check:
    per_rank = rank_memory_bytes(cfg)
    if available is None:
        return Check("memory", SKIPPED, "no MemAvailable in /proc/meminfo")
    text = f"estimate {_size(per_rank)} per rank x {nproc} = {_size(per_rank * nproc)}, {_size(available)} available"
    return Check("memory", PROBLEM if per_rank * nproc > available else OK, text)


def npu_source(env: Mapping[str, str]) -> str:
    for name in (RT_VISIBLE_ENV, "ASCEND_VISIBLE_DEVICES"):
        if env.get(name, "").strip():
            return name
    return "/dev/davinciN"


def check_npus(job: Job, npus: Sequence[int], env: Mapping[str, str]) -> Check:
    if not npus:
        return Check("npus", SKIPPED, "no NPUs visible (no ASCEND_*VISIBLE_DEVICES, no /dev/davinciN): CPU host")
    text = f"{len(npus)} visible {list(npus)} (from {npu_source(env)}), N = {job.nproc}"
    return Check("npus", PROBLEM if job.nproc > len(npus) else OK, text)


def check_rank_table(job: Job, npus: Sequence[int], env: Mapping[str, str]) -> Check:
    path = rank_table_path(env)
    if not npus:
        return Check("rank_table", SKIPPED, "not an Ascend host")
    if job.placed:
        return Check("rank_table", OK, f"checked by the launcher: {job.placed}")
    if not path:
        return Check("rank_table", SKIPPED, "no RANK_TABLE_FILE: the launcher generates one for a single server"
                     if job.nnodes == 1 else "no RANK_TABLE_FILE: MindSpore's dynamic cluster")
    from fcn8s.launch import NodeOptions, plan_from_rank_table

    options = NodeOptions(nproc=job.nproc, nnodes=job.nnodes if job.nnodes > 1 else None,
                          node_rank=job.node_rank or None)
    try:
        plan = plan_from_rank_table(options, path, npus, env)
    except UserError as err:
        return Check("rank_table", PROBLEM, str(err))
    return Check("rank_table", OK, f"{path}: server {plan.server} (node {plan.node_rank} of {plan.nnodes}), "
                                   f"ranks {[r.rank for r in plan.ranks]} of {plan.world_size}")


def check_hccl(cfg: Config, npus: Sequence[int], env: Mapping[str, str]) -> Check:
    if not npus:
        return Check("hccl", SKIPPED, "not an Ascend host")
    configured = {"HCCL_CONNECT_TIMEOUT": cfg.dist.hccl_connect_timeout,
                  "HCCL_EXEC_TIMEOUT": cfg.dist.hccl_exec_timeout}
    parts, problems = [], []
    for name, (lo, hi, multiple) in HCCL_RANGES.items():
        text = env.get(name, "").strip()
        where = "environment" if text else "config"
        value = int(text) if text.isdigit() else (None if text else configured[name])
        if value is None or not lo <= value <= hi or value % multiple:
            problems.append(f"{name}={text} ({where}) must be {lo}..{hi}" + (f", a multiple of {multiple}"
                                                                          if multiple > 1 else ""))
        parts.append(f"{name}={value} ({where})")
    return Check("hccl", PROBLEM, "; ".join(problems)) if problems else Check("hccl", OK, ", ".join(parts))


def port_free(host: str, port: int) -> Optional[str]:
    """None if ``port`` can be bound on ``host`` now, else the reason."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err.strerror
    return None


def port_reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Optional[str]:
    """None if a TCP connection to ``host:port`` opens within ``timeout``, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:.0f} s"
    except OSError as err:
        return err.strerror or str(err)


def check_master(job: Job, connect: bool = True) -> Check:
    """Multi-server reachability; ``connect`` False (the launchers): node 0 may not listen yet, its rendezvous waits."""
    if job.nnodes == 1:
        return Check("master", SKIPPED, "one server (NNODES=1)")
    try:
        address = resolve_host(job.master_addr, "MASTER_ADDR")
    except UserError as err:
        return Check("master", PROBLEM, str(err))
    if address.startswith("127."):
        return Check("master", PROBLEM, f"MASTER_ADDR {job.master_addr} is a loopback address: give server 0's "
                                        "address that the other servers reach")
    where = f"MASTER_ADDR {job.master_addr} ({address}) port {job.master_port}"
    if job.node_rank == 0:
        busy = [f"{port}: {reason}" for port in (job.master_port, job.master_port + 1)
                for reason in [port_free("0.0.0.0", port)] if reason]
        if busy:
            return Check("master", PROBLEM, f"{where}: on node 0 the port(s) must be free: {'; '.join(busy)}")
        return Check("master", OK, f"{where}: node 0, ports {job.master_port} and {job.master_port + 1} free")
    if not connect:
        return Check("master", OK, f"{where} resolves (node {job.node_rank}; the launcher's rendezvous waits for "
                                   "node 0)")
    reason = port_reachable(address, job.master_port)
    if reason:
        return Check("master", PROBLEM, f"{where}: cannot connect ({reason}); is node 0's launcher running?")
    return Check("master", OK, f"{where}: reachable from node {job.node_rank}")


def check_pretrained(cfg: Config) -> Check:
    path = cfg.model.pretrained
    if not path:
        return Check("pretrained", SKIPPED, "model.pretrained not set (backbone from scratch)")
    from fcn8s.pretrained import map_backbone  # reads the file with MindSpore (no device)

    try:
        naming, values, unused = map_backbone(path)
    except UserError as err:
        return Check("pretrained", PROBLEM, str(err))
    fc = sorted(name for name in values if name.startswith(("conv6.", "conv7.")))
    if fc and cfg.model.fc_channels != FC_CHANNELS:
        return Check("pretrained", PROBLEM, f"{path} has fc6/fc7 weights for {FC_CHANNELS} channels, "
                                            f"model.fc_channels is {cfg.model.fc_channels}")
    return Check("pretrained", OK, f"{path}: {naming} naming, maps {len(values)} parameter(s), {len(unused)} unused")


def check_resume(cfg: Config, resume: Optional[str]) -> Check:
    if not resume:
        return Check("resume", SKIPPED, "no --resume")
    from fcn8s.checkpoint import CheckpointManager, read_sidecar  # imports MindSpore (no device)
    from fcn8s.data.mindrecord import sha256_file

    directory = os.path.join(cfg.run.output_dir, "checkpoints")
    if resume == "auto":
        complete = CheckpointManager(directory, cfg.train.keep_checkpoints, cfg.digest()).complete(include_final=True)
        if not complete:
            return Check("resume", OK, f"--resume auto: no complete checkpoint in {directory}, starts from scratch")
        path = os.path.join(directory, str(complete[-1]["file"]))
    else:
        path = resume
    meta = read_sidecar(path)
    if meta is None:
        return Check("resume", PROBLEM, f"{path}: not a complete checkpoint written by fcn8s.train (no sidecar)")
    if sha256_file(path) != meta["sha256"]:
        return Check("resume", PROBLEM, f"{path}: does not verify (sha256 differs from its sidecar); "
                                        "delete it to resume from the one before")
    return Check("resume", OK, f"{path} (step {meta['step']}) verifies")


def run_checks(train_args: Sequence[str], job: Job, env: Mapping[str, str] = os.environ, connect: bool = True,
               memory: Optional[int] = -1) -> List[Check]:
    """Every check for ``python -m fcn8s.train TRAIN_ARGS`` run as ``job``; ``memory`` -1: read /proc/meminfo."""
    from fcn8s.train_args import build_parser  # here: it imports fcn8s.launch, which imports this module

    try:
        args = build_parser().parse_args(list(train_args))
        if args.pretrained:
            args.overrides.append(f"model.pretrained={args.pretrained}")
        cfg = config_from_args(args)
    except UserError as err:
        return [Check("config", PROBLEM, str(err))]
    checks = [Check("config", OK, f"{args.config} (digest {cfg.digest()})")]
    npus = visible_npus(env)
    steps: List[Callable[[], Check]] = [
        lambda: check_dataset(cfg, job.world_size),
        lambda: check_output_dir(cfg.run.output_dir, *storage_needed(cfg, job.nproc)),
        lambda: check_memory(cfg, job.nproc, available_memory() if memory == -1 else memory),
        lambda: check_npus(job, npus, env),
        lambda: check_rank_table(job, npus, env),
        lambda: check_hccl(cfg, npus, env),
        lambda: check_master(job, connect),
        lambda: check_pretrained(cfg),
        lambda: check_resume(cfg, args.resume)]
    for name, step in zip(("dataset", "output_dir", "memory", "npus", "rank_table", "hccl", "master", "pretrained",
                           "resume"), steps):
        try:
            checks.append(step())
        except UserError as err:
            checks.append(Check(name, PROBLEM, str(err)))
    return checks


def verdict(checks: Sequence[Check]) -> str:
    problems = [check.name for check in checks if check.status == PROBLEM]
    return (f"preflight FAILED: {len(problems)} problem(s) ({', '.join(problems)})" if problems
            else f"preflight ok ({sum(c.status == OK for c in checks)} ok, "
                 f"{sum(c.status == SKIPPED for c in checks)} skipped)")


def report(checks: Sequence[Check], as_json: bool = False) -> str:
    """The checks as lines + verdict, or as JSON."""
    if as_json:
        return json.dumps({"ok": not any(c.status == PROBLEM for c in checks), "verdict": verdict(checks),
                           "checks": [asdict(c) for c in checks]}, indent=2)
    return "\n".join([*(c.line() for c in checks), verdict(checks)])


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise UserError(f"{name} must be a whole number, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.preflight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=1, help="ranks on this server (default 1)")
    parser.add_argument("--nnodes", type=int, help="servers in the job (NNODES, default 1)")
    parser.add_argument("--node-rank", type=int, help="this server's index (NODE_RANK, default 0)")
    parser.add_argument("--master-addr", help=f"server 0's address (MASTER_ADDR, default {LOOPBACK})")
    parser.add_argument("--master-port", type=int, help="node 0's rendezvous port (MASTER_PORT, default 29500)")
    parser.add_argument("--json", action="store_true", help="print the checks and verdict as JSON")
    return parser


def job_from(args: argparse.Namespace, env: Mapping[str, str]) -> Job:
    job = Job(nproc=args.nproc, nnodes=args.nnodes or _env_int(env, "NNODES", 1),
              node_rank=args.node_rank if args.node_rank is not None else _env_int(env, "NODE_RANK", 0),
              master_addr=args.master_addr or env.get("MASTER_ADDR") or LOOPBACK,
              master_port=args.master_port or _env_int(env, "MASTER_PORT", 29500))
    if job.nproc < 1 or job.nnodes < 1 or not 0 <= job.node_rank < job.nnodes:
        raise UserError(f"need --nproc >= 1, --nnodes >= 1 and 0 <= --node-rank < --nnodes (got {job.nproc}, "
                        f"{job.nnodes}, {job.node_rank})")
    return job


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, train_args = build_parser().parse_known_args(argv)
    checks = run_checks(train_args, job_from(args, os.environ))
    print(report(checks, args.json))
    return 2 if any(check.status == PROBLEM for check in checks) else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
