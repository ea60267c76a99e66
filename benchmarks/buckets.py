"""2-rank CPU training step: gradients in all-reduce buckets (``dist.bucket_mb``) vs one fused bucket (0).

    .venv/bin/python benchmarks/buckets.py [--steps 12] [--bucket-mb 25] [--fc-channels 4096] [--crop 64]

Runs ``launch/run_distribute.sh 2`` twice on one synthetic dataset, the same config except ``dist.bucket_mb``,
and prints the mean ``step_seconds`` of ``metrics.jsonl`` (the compile step excluded) side by side. MindSpore's
CPU backend does not fuse AllReduce ops (each gradient is its own AllReduce whatever the bucket ids, see
docs/performance.md), so here the ratio shows the cost of the bucket ids, not the overlap an Ascend run gets.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from common import REPO, synthetic_dataset  # common puts the repo on sys.path


def step_seconds(mindrecord: str, work: str, args: argparse.Namespace, bucket_mb: float) -> float:
    out = os.path.join(work, f"bucket{bucket_mb:g}")
    subprocess.run(["bash", os.path.join(REPO, "launch", "run_distribute.sh"), "2", "configs/cpu_smoke.yaml",
                    f"data.mindrecord_dir={mindrecord}", f"run.output_dir={out}", f"train.max_steps={args.steps}",
                    "train.log_interval=1", "train.batch_size=2", f"dist.bucket_mb={bucket_mb}",
                    f"model.fc_channels={args.fc_channels}", f"data.crop_size={args.crop}", "train.eval_interval=0",
                    "train.checkpoint_interval=100000", "train.straggler_intervals=0", "run.tensorboard=false"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "LOG_DIR": os.path.join(out, "logs")})
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as handle:
        times = [record["step_seconds"] for record in map(json.loads, handle) if record["step_seconds"]]
    return statistics.mean(times[1:])  # the first timed step can still be warming up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="steps per job (default 12)")
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="bucket size to compare with 0 (default 25)")
    parser.add_argument("--fc-channels", type=int, default=4096, help="conv6/conv7 width (default 4096: FCN-8s)")
    parser.add_argument("--crop", type=int, default=64, help="crop size in px (default 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fcn8s-buckets-") as work:
        mindrecord = synthetic_dataset(work, 48)
        fused = step_seconds(mindrecord, work, args, 0)
        bucketed = step_seconds(mindrecord, work, args, args.bucket_mb)
    print(f"2 ranks, CPU, FCN-8s fc_channels {args.fc_channels}, {args.crop} px, batch 2 per rank")
    print(f"{'one bucket (bucket_mb 0)':28s} {fused:7.3f} s/step")
    print(f"{f'buckets of {args.bucket_mb:g} MB':28s} {bucketed:7.3f} s/step   ratio {bucketed / fused:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
