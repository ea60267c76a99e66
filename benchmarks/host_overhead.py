"""Host overhead per step: the Trainer's loop against the bare jitted step, on a tiny FCN-8s (so the
framework's cost shows).

    .venv/bin/python benchmarks/host_overhead.py [--steps 120] [--fc-channels 16] [--crop 32] [--batch 2]

* **bare**: the trainer's compiled step (``Trainer.step_fn``) called on batches already in memory, the host
  waiting for each step (reading its loss) or queueing them (one read at the end);
* **loop, host reads every step**: ``Trainer.fit`` with ``train.log_interval=1`` (so ``sync_interval`` 1):
  the outputs, the stop agreement and the divergence check every step, as the loop did before;
* **loop, reads every 10 steps**: ``Trainer.fit`` with the default ``log_interval`` 10.

A loop figure is the wall time of ``fit`` without its first (compile) step and its final checkpoint, per
step: it includes the data pipeline, the heartbeat, logging and every host read (the bare step's batches are
prepared before timing). Median of ``--repeats`` interleaved runs, one process, on this machine's cores.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
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


def loop_seconds_per_step(mindrecord: str, work: str, args: argparse.Namespace, log_interval: int) -> float:
    """Wall seconds per step of ``Trainer.fit`` without its first (compile) step and its final checkpoint."""
    trainer = _trainer(_config(mindrecord, os.path.join(work, f"fit-{log_interval}"), args, args.steps,
                               log_interval))
    save, saving = trainer._save, []

    def timed_save(*a, **k):
        started = time.perf_counter()
        try:
            return save(*a, **k)
        finally:
            saving.append(time.perf_counter() - started)
    trainer._save = timed_save
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started
    return (wall - trainer.first_step_seconds - sum(saving)) / (args.steps - 1)


def bare_seconds_per_step(mindrecord: str, work: str, args: argparse.Namespace, wait: bool) -> float:
    """The compiled step on batches in memory; ``wait``: the host waits for each step before the next."""
    from fcn8s.data.pipeline import create_train_dataset

    cfg = _config(mindrecord, os.path.join(work, "bare"), args, args.steps, 10)
    trainer = _trainer(cfg)
    batches = []
    while len(batches) < args.steps:
        batches += list(create_train_dataset(cfg, epoch=len(batches)).create_tuple_iterator(num_epochs=1))
    for output in trainer.step_fn(*batches[0]):  # compile
        output.asnumpy()
    started = time.perf_counter()
    for images, labels in batches[1:args.steps]:  # the schedule has args.steps steps, one compiled above
        outputs = trainer.step_fn(images, labels)
        if wait:
            outputs[0].asnumpy()
    outputs[0].asnumpy()
    return (time.perf_counter() - started) / (args.steps - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="steps of the long runs (default 120)")
    parser.add_argument("--fc-channels", type=int, default=16, help="conv6/conv7 width (default 16: tiny)")
    parser.add_argument("--crop", type=int, default=32, help="crop size in px (default 32)")
    parser.add_argument("--batch", type=int, default=2, help="batch per step (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved (default 3)")
    args = parser.parse_args()
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fcn8s-host-") as work:
        print(f"synthetic dataset (200 images) in {work} ...", file=sys.stderr)
        mindrecord = synthetic_dataset(work, 200)
        measures = {"bare step, waits for each": lambda: bare_seconds_per_step(mindrecord, work, args, True),
                    "bare step, queued": lambda: bare_seconds_per_step(mindrecord, work, args, False),
                    "loop, host reads every step": lambda: loop_seconds_per_step(mindrecord, work, args, 1),
                    "loop, reads every 10 steps": lambda: loop_seconds_per_step(mindrecord, work, args, 10)}
        times = {label: [] for label in measures}
        for _ in range(args.repeats):  # interleaved, so a slow phase of the machine hits every row
            for label, measure in measures.items():
                times[label].append(measure())
    rows = [(label, statistics.median(values)) for label, values in times.items()]
    bare = rows[0][1]
    print(f"\nFCN-8s fc_channels {args.fc_channels}, {args.crop} px, batch {args.batch}, CPU, {args.steps} steps, "
          f"median of {args.repeats}")
    print(f"{'':32s} {'ms/step':>9s} {'vs bare':>8s}")
    for label, seconds in rows:
        print(f"{label:32s} {1000 * seconds:9.1f} {seconds / bare:7.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
