"""Train FCN-8s (one process per device; launchers start one per rank).

    python -m fcn8s.train --config configs/cpu_smoke.yaml train.max_steps=100
    python -m fcn8s.train --config configs/voc_fcn8s.yaml --set data.mindrecord_dir=/data/voc_mr

Exit codes: 0 done, 2 bad input (config, data), 3 training diverged.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

from fcn8s.config import add_config_arguments, config_from_args, save_config
from fcn8s.data.pipeline import create_train_dataset
from fcn8s.errors import run_cli
from fcn8s.model import build_model, resolve_conv_impl
from fcn8s.runtime import resolve_device_target, start
from fcn8s.trainer import EXIT_DIVERGED, Trainer, TrainingDiverged

LOG = logging.getLogger("fcn8s.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, default_config="configs/voc_fcn8s.yaml")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(build_parser().parse_args(argv))
    ctx = start(cfg)
    if ctx.is_main:
        save_config(cfg, os.path.join(cfg.run.output_dir, "config.yaml"))
    dataset = create_train_dataset(cfg, ctx.rank, ctx.size)
    conv_impl = resolve_conv_impl(cfg.model.conv_impl, resolve_device_target(cfg.run.device_target))
    net = build_model(cfg.model.num_classes, conv_impl, cfg.model.amp_level)
    try:
        summary = Trainer(cfg, ctx, net, dataset).fit()
    except TrainingDiverged as err:
        LOG.error("%s", err)
        return EXIT_DIVERGED
    LOG.info("done: %d steps, last loss %.4f, checkpoint %s", summary["steps"], summary["loss"],
             summary["checkpoint"] or "(written by rank 0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
