"""Host overhead per step: the Trainer's loop against the bare jitted step, on a tiny FCN-8s (so the
framework's cost shows).

    .venv/bin/python benchmarks/host_overhead.py [--steps 120] [--fc-channels 16] [--crop 32] [--batch 2]

* **bare**: the trainer's compiled step (``Trainer.step_fn``) called on batches already in memory, one read
  of the outputs at the end;
* **loop, host reads every step**: ``Trainer.fit`` with ``train.log_interval=1`` (so ``sync_interval`` 1):
  the outputs, the stop agreement and the divergence check every step, as the loop did before;
* **loop, reads every 10 steps**: ``Trainer.fit`` with the default ``log_interval`` 10.

Each loop figure is (T(N) - T(N/6)) / (N - N/6) for two runs of N and N/6 steps, which cancels graph
compilation, dataset start and the final checkpoint; the loop's time includes the data pipeline (the bare
step's batches are prepared before timing). One process, one run after the other, on this machine's cores.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

from common import REPO, synthetic_dataset  # common puts the repo on sys.path


def _config(mindrecord: str, out: str, args: argparse.Namespace, steps: int, log_interval: int):
    from fcn8s.config import load_config

    return load_config(os.path.join(REPO, "configs", "cpu_smoke.yaml"), [
        f"data.mindrecord_dir={mindrecord}", f"run.output_dir={out}", f"train.max_steps={steps}",
        f"train.log_interval={log_interval}", f"model.fc_channels={args.fc_channels}", f"data.crop_size={args.crop}",
        f"train.batch_size={args.batch}", "train.eval_interval=0", "train.checkpoint_interval=100000",
        "run.tensorboard=false", "train.straggler_intervals=0"])


def _trainer(cfg):
    from fcn8s.data.pipeline import count_samples
    from fcn8s.distributed import DistContext
    from fcn8s.model import build_model
    from fcn8s.trainer import Trainer

    os.makedirs(cfg.run.output_dir, exist_ok=True)
    return Trainer(cfg, DistContext(), build_model(cfg.model, "matmul"), count_samples(cfg.data.mindrecord_dir))


def fit_seconds(mindrecord: str, work: str, args: argparse.Namespace, steps: int, log_interval: int) -> float:
    trainer = _trainer(_config(mindrecord, os.path.join(work, f"fit{steps}-{log_interval}"), args, steps,
                               log_interval))
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started


def bare_seconds_per_step(mindrecord: str, work: str, args: argparse.Namespace) -> float:
    from fcn8s.data.pipeline import create_train_dataset

    cfg = _config(mindrecord, os.path.join(work, "bare"), args, args.steps, 10)
    trainer = _trainer(cfg)
    batches = []
    while len(batches) < args.steps:
        batches += list(create_train_dataset(cfg, epoch=len(batches)).create_tuple_iterator(num_epochs=1))
    for output in trainer.step_fn(*batches[0]):  # compile
        output.asnumpy()
    started = time.perf_counter()
    for images, labels in batches[:args.steps]:
        outputs = trainer.step_fn(images, labels)
    outputs[0].asnumpy()
    return (time.perf_counter() - started) / args.steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="steps of the long runs (default 120)")
    parser.add_argument("--fc-channels", type=int, default=16, help="conv6/conv7 width (default 16: tiny)")
    parser.add_argument("--crop", type=int, default=32, help="crop size in px (default 32)")
    parser.add_argument("--batch", type=int, default=2, help="batch per step (default 2)")
    args = parser.parse_args()
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    logging.basicConfig(level=logging.WARNING)
    short = max(args.steps // 6, 2)
    with tempfile.TemporaryDirectory(prefix="fcn8s-host-") as work:
        print(f"synthetic dataset (200 images) in {work} ...", file=sys.stderr)
        mindrecord = synthetic_dataset(work, 200)
        bare = bare_seconds_per_step(mindrecord, work, args)
        rows = [("bare jitted step", bare)]
        for label, log_interval in (("loop, host reads every step", 1), ("loop, reads every 10 steps", 10)):
            long_run = fit_seconds(mindrecord, work, args, args.steps, log_interval)
            short_run = fit_seconds(mindrecord, work, args, short, log_interval)
            rows.append((label, (long_run - short_run) / (args.steps - short)))
    print(f"\nFCN-8s fc_channels {args.fc_channels}, {args.crop} px, batch {args.batch}, CPU, "
          f"{args.steps} vs {short} steps")
    print(f"{'':32s} {'ms/step':>9s} {'vs bare':>8s}")
    for label, seconds in rows:
        print(f"{label:32s} {1000 * seconds:9.1f} {seconds / bare:7.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
