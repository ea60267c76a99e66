"""One FCN-8s gradient all-reduce on CPU: 2 ranks on one server vs one rank on each of 2 servers.

    sudo .venv/bin/python benchmarks/allreduce.py [--elements 134526944] [--reps 5] [--step-seconds X]

Times ``ops.AllReduce()(Tensor).asnumpy()`` of a float32 buffer (default 134,526,944 elements,
one full FCN-8s gradient, 538 MB) in MindSpore's dynamic cluster (a scheduler process + 2 workers
formed through MS_ROLE/MS_SCHED_HOST/MS_SCHED_PORT/MS_WORKER_NUM/MS_NODE_ID), on the simulated
servers of tests/infra/netns.py (network namespaces, so root is needed):

* one server:  scheduler and both workers on server 0 (TCP inside one host's network stack),
* two servers: worker k on server k, traffic through veth pairs and a bridge.

Each repetition starts after a tiny all-reduce (a barrier) and counts the slower rank; the
median of ``--reps`` after ``--warmup`` untimed ones is printed (MB/s = buffer size / time).
Both cases share this machine's cores and memory bandwidth: the veth "network" is a kernel copy,
not a NIC, so (b)/(a) is the cost of the extra network path here, not a prediction for real links.
``--step-seconds X`` adds the all-reduce share of a step whose compute takes X s with no overlap:
t / (X + t).
MS_CPU_COMM_OP_TIMEOUT (MindSpore's wait per CPU send/receive, 30 s by default) is raised to
900 s: one 269 MB ring chunk can take longer than 30 s on a loaded 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Sequence

from common import REPO  # also puts the repository on sys.path
from fcn8s.distributed import SCHEDULER_CODE
from tests.infra.netns import SimulatedServers

FCN8S_PARAMETERS = 134_526_944
TIMEOUT = 900


def worker(elements: int, rounds: int) -> None:
    """One rank: join the cluster, all-reduce ``rounds`` times, print the seconds of each as JSON."""
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, ops
    from mindspore.communication import get_rank, init

    ms.set_device("CPU")
    init()
    allreduce = ops.AllReduce()
    barrier = Tensor(np.ones(1, np.float32))
    buffer = Tensor(np.ones(elements, np.float32))
    seconds = []
    for _ in range(rounds):
        allreduce(barrier).asnumpy()
        started = time.perf_counter()
        total = allreduce(buffer).asnumpy()
        seconds.append(time.perf_counter() - started)
    # A rank leaving right after its last big receive makes the peer, still waiting for the ack of
    # its own send, fail after MS_CPU_COMM_OP_TIMEOUT ("RingAllReduce wait sending N failed").
    allreduce(barrier).asnumpy()
    if not total[0] == total[-1] == 2.0:
        raise SystemExit(f"rank {get_rank()}: wrong all-reduce result {total[0]}, {total[-1]}")
    print(json.dumps({"rank": get_rank(), "seconds": seconds}), flush=True)


def run_case(servers: SimulatedServers, placement: Sequence[int], port: int, elements: int, rounds: int,
             work: str) -> List[float]:
    """Per-round seconds of the slower rank; worker i runs on server ``placement[i]``."""
    base = {**os.environ, "MS_SCHED_HOST": servers[0].ip, "MS_SCHED_PORT": str(port),
            "MS_WORKER_NUM": str(len(placement)), "MS_TOPO_TIMEOUT": "120", "GLOG_v": "3",
            "MS_CPU_COMM_OP_TIMEOUT": str(TIMEOUT)}
    scheduler = servers.popen(0, [sys.executable, "-c", SCHEDULER_CODE], env={**base, "MS_ROLE": "MS_SCHED"}, cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    script = os.path.join(REPO, "benchmarks", "allreduce.py")
    logs = [os.path.join(work, f"port{port}_worker{rank}.log") for rank in range(len(placement))]
    workers = []
    for rank, (k, log) in enumerate(zip(placement, logs)):
        with open(log, "w", encoding="utf-8") as out:
            workers.append(servers.popen(k, [sys.executable, script, "--worker", str(elements), str(rounds)],
                                         env={**base, "MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(rank)}, cwd=work,
                                         stdout=out, stderr=subprocess.STDOUT))
    reports = []
    for rank, (process, log) in enumerate(zip(workers, logs)):
        process.wait(timeout=TIMEOUT)
        with open(log, encoding="utf-8") as out:
            lines = out.read().splitlines()
        if process.returncode != 0:
            raise RuntimeError(f"worker {rank} failed ({process.returncode}):\n" + "\n".join(lines[-30:]))
        reports.append(next(json.loads(line) for line in reversed(lines) if line.startswith("{"))["seconds"])
    scheduler.wait(timeout=60)
    return [max(times) for times in zip(*reports)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, default=FCN8S_PARAMETERS,
                        help=f"float32 elements all-reduced (default {FCN8S_PARAMETERS:,}: one FCN-8s gradient)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per case (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument("--step-seconds", type=float, help="also print the all-reduce share of a step of X s compute")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("ELEMENTS", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if os.geteuid() != 0:
        print("error: this benchmark needs root: it creates network namespaces (tests/infra/netns.py)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # tear the namespaces down when killed
    rounds, load = args.warmup + args.reps, os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work, SimulatedServers(2) as servers:
        one = run_case(servers, [0, 0], 8201, args.elements, rounds, work)[args.warmup:]
        two = run_case(servers, [0, 1], 8202, args.elements, rounds, work)[args.warmup:]
    megabytes = 4 * args.elements / 1e6
    print(f"AllReduce of {args.elements:,} float32 ({megabytes:.0f} MB), 2 ranks, median of {args.reps} "
          f"after {args.warmup} warm-up, on {os.cpu_count()} cores (load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after)")
    header = f"{'placement':<28} {'seconds':>8} {'min-max':>13} {'MB/s':>6}"
    if args.step_seconds is not None:
        header += f" {f'share of {args.step_seconds:g} s step':>22}"
    print(header)
    for label, times in (("(a) one server, 2 ranks", one), ("(b) two servers, 1 rank each", two)):
        seconds = statistics.median(times)
        row = f"{label:<28} {seconds:>8.3f} {f'{min(times):.3f}-{max(times):.3f}':>13} {megabytes / seconds:>6.0f}"
        if args.step_seconds is not None:
            row += f" {seconds / (args.step_seconds + seconds):>22.1%}"
        print(row)
    print(f"ratio (b)/(a): {statistics.median(two) / statistics.median(one):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
