"""Train FCN-8s (one process per device; launchers start one per rank).

    python -m fcn8s.train --config configs/cpu_smoke.yaml train.max_steps=100
    python -m fcn8s.train --config configs/voc_fcn8s.yaml --set data.mindrecord_dir=/data/voc_mr

Resume: ``--resume auto`` continues from the newest complete checkpoint in
``<run.output_dir>/checkpoints`` (or starts from scratch if there is none); ``--resume PATH``
from that checkpoint. Weights, momentum, loss scaler, step, epoch and the position in the epoch's
data are restored, so the resumed steps are the ones an uninterrupted run would have taken. Every
rank checks with the others that all resume from the same step (or all start fresh): nodes that do
not share ``run.output_dir`` stop with one error (exit 2) instead of hanging.

Preemption: on SIGTERM/SIGINT the ranks finish the current step, rank 0 writes a resumable
checkpoint, and every rank exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT).

Rank 0 writes ``checkpoints/``, ``metrics.jsonl`` (step, loss, lr, loss scale, images/s),
``config.yaml`` and, at the end, ``plots/{loss,lr,loss_scale,images_per_second}.png``.

Hangs: under ``fcn8s.launch`` / run_distribute.sh the launcher watches the ranks. Started directly
(``mpirun -n N python -m fcn8s.train``, ``srun``, ``msrun``), each rank runs its own watchdog thread
(fcn8s/rank_watchdog.py): after ``--hang-timeout`` seconds (HANG_TIMEOUT) without progress
(``--first-step-timeout`` until the first step, which compiles the graph, is done; evaluation and
checkpoint writes do not count) it names the rank, host and last finished step, writes
failure.json (LOG_DIR if set, else run.output_dir) and exits with 124, so mpirun/srun stop the job.
With OpenMPI on several hosts pass the variable on: ``mpirun -x HANG_TIMEOUT ...``.

Exit codes: 0 done, 2 bad input (config, data, checkpoint), 3 training diverged, 124 hung,
130/143 stopped by SIGINT/SIGTERM after saving (rerun with --resume auto).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import numpy as np

from fcn8s.checkpoint import read_sidecar
from fcn8s.config import Config, config_from_args, save_config
from fcn8s.data.mindrecord import verify_split
from fcn8s.data.pipeline import count_samples
from fcn8s.distributed import SELF_BOOTSTRAPPED, DistContext, detect_launcher, finalize_mpi, sum_across_ranks
from fcn8s.errors import EXIT_DIVERGED, UserError, run_cli
from fcn8s.launch import this_host
from fcn8s.model import build_model, resolve_conv_impl
from fcn8s.plots import plot_training_curves
from fcn8s.pretrained import load_pretrained_backbone
from fcn8s.preemption import TrainingInterrupted
from fcn8s.rank_watchdog import RankWatchdog
from fcn8s.runtime import resolve_device_target, start
from fcn8s.train_args import build_parser
from fcn8s.trainer import Trainer, TrainingDiverged
from fcn8s.watchdog import HangLimits, hccl_exec_timeout

LOG = logging.getLogger("fcn8s.train")


def resume_path(resume: Optional[str], trainer: Trainer) -> Optional[str]:
    """The checkpoint this rank would resume from for ``--resume`` (None: start from scratch)."""
    if resume != "auto":
        return resume or None
    path = trainer.checkpoints.latest()
    if path is None:
        LOG.info("--resume auto: no complete checkpoint in %s, starting from scratch", trainer.checkpoints.directory)
    return path


def agreed_resume_path(resume: Optional[str], trainer: Trainer, ctx: DistContext) -> Optional[str]:
    """:func:`resume_path`, checked to give the same step on every rank (a collective every rank joins).

    Without storage shared by all nodes each node sees only its own checkpoints: ranks that would
    resume from different steps, or some from none, stop with one error instead of diverging or hanging.
    """
    path = resume_path(resume, trainer)
    meta = read_sidecar(path) if path else None
    slots = np.zeros(ctx.size, np.int64)
    slots[ctx.rank or 0] = int(meta["step"]) + 1 if meta else 0  # 0: nothing (resumable) to resume from
    steps = sum_across_ranks(slots, ctx)
    if len(set(steps.tolist())) > 1:
        found = ", ".join(f"rank {rank}: {f'step {step - 1}' if step else 'none'}" for rank, step in enumerate(steps))
        raise UserError(f"ranks would resume from different checkpoints ({found}): --resume needs run.output_dir on "
                        "storage shared by all nodes, or the same checkpoint path on every node")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    if args.pretrained:
        args.overrides.append(f"model.pretrained={args.pretrained}")
    cfg = config_from_args(args)
    for split in ("train", "val") if cfg.train.eval_interval else ("train",):
        verify_split(cfg.data.mindrecord_dir, split, args.verify_data)
    ctx = start(cfg)
    limits = HangLimits.below_hccl(args.hang_timeout, args.first_step_timeout,
                                   hccl_exec_timeout(os.environ, cfg.dist.hccl_exec_timeout))
    watchdog = RankWatchdog.for_rank(ctx, limits, cfg.run.output_dir, this_host())
    try:
        return train(args, cfg, ctx, watchdog)
    finally:
        if watchdog:
            watchdog.stop()


def train(args: argparse.Namespace, cfg: Config, ctx: DistContext, watchdog: Optional[RankWatchdog]) -> int:
    """Build the model and trainer, resume or load pretrained weights, train; returns the exit code."""
    if ctx.is_main:
        save_config(cfg, os.path.join(cfg.run.output_dir, "config.yaml"))
    device_target = resolve_device_target(cfg.run.device_target)
    net = build_model(cfg.model, resolve_conv_impl(cfg.model.conv_impl, device_target))
    trainer = Trainer(cfg, ctx, net, count_samples(cfg.data.mindrecord_dir), device_target)
    if watchdog:
        watchdog.watch(trainer.heartbeat)
    checkpoint = agreed_resume_path(args.resume, trainer, ctx)
    if checkpoint:
        trainer.resume(checkpoint)
    elif cfg.model.pretrained:
        load_pretrained_backbone(net, cfg.model.pretrained)
    try:
        summary = trainer.fit()
    except TrainingDiverged as err:
        LOG.error("%s", err)
        return EXIT_DIVERGED
    except TrainingInterrupted as err:
        LOG.warning("%s", err)
        return err.exit_code
    finally:
        if trainer.tensorboard:
            trainer.tensorboard.close()
    LOG.info("done: %d steps, last loss %.4f, checkpoint %s", summary["steps"], summary["loss"],
             summary["checkpoint"] or "(written by rank 0)")
    if ctx.is_main and os.path.isfile(trainer.metrics_path):
        plots = plot_training_curves(trainer.metrics_path, os.path.join(cfg.run.output_dir, "plots"))
        LOG.info("training curves: %s", ", ".join(plots))
    return 0


def exit_without_teardown(code: int) -> None:
    """Flush output and exit with ``code`` skipping interpreter teardown.

    MindSpore's distributed runtime can crash (SIGSEGV, while garbage-collecting) as it is destroyed
    at interpreter exit (seen once in 14 two-rank Slurm runs, after training had finished), which
    turns a finished job into a failed one. Every result is on disk and every rank has passed the
    final barrier by now. Only used where no MindSpore scheduler waits for workers to finalise.
    """
    finalize_mpi()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    EXIT_CODE = run_cli(main)
    if detect_launcher() in SELF_BOOTSTRAPPED:
        exit_without_teardown(EXIT_CODE)
    raise SystemExit(EXIT_CODE)
