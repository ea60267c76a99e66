"""Weak scaling on one host: images/s of 1 vs N CPU ranks (same per-device batch), side by side.

    .venv/bin/python benchmarks/scaling.py [--ranks 2] [--steps 12] [--batch 4] [--crop 64]

Each configuration is a real ``python -m fcn8s.launch`` job on a synthetic dataset; images/s is
the median of the trainer's per-step global throughput after the first (compile) step.
Efficiency = images/s with N ranks / (N x images/s with 1 rank).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

from common import REPO, synthetic_dataset


def run_job(ranks: int, steps: int, batch: int, crop: int, dataset: str, work: str) -> float:
    """Median global images/s reported by rank 0 over the steps after the first."""
    log_dir = os.path.join(work, f"logs_{ranks}")
    cmd = [sys.executable, "-m", "fcn8s.launch", "--nproc", str(ranks), "--log-dir", log_dir, "--",
           "--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={dataset}", f"run.output_dir={work}/out_{ranks}",
           f"train.max_steps={steps}", "train.log_interval=1", f"train.batch_size={batch}", f"data.crop_size={crop}",
           "train.checkpoint_interval=100000"]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    text = open(os.path.join(log_dir, "rank_0.log"), encoding="utf-8").read()
    rates = [float(v) for v in re.findall(r"step \d+/\d+ .* ([0-9.]+) img/s", text)]
    return statistics.median(rates[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the parallel run (default 2)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (default 12)")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (default 4)")
    parser.add_argument("--crop", type=int, default=64, help="crop size (default 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        dataset = synthetic_dataset(work, 96)
        single = run_job(1, args.steps, args.batch, args.crop, dataset, work)
        multi = run_job(args.ranks, args.steps, args.batch, args.crop, dataset, work)
    print(f"{'ranks':>5} {'global batch':>12} {'images/s':>9}")
    print(f"{1:>5} {args.batch:>12} {single:>9.2f}")
    print(f"{args.ranks:>5} {args.batch * args.ranks:>12} {multi:>9.2f}")
    print(f"weak-scaling efficiency: {multi / (args.ranks * single):.2f} "
          f"(speed-up {multi / single:.2f}x with {args.ranks} ranks on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
