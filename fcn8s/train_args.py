"""The command line of ``python -m fcn8s.train``, without MindSpore: the launchers read it too.

The launchers (fcn8s.launch, the pod entrypoint) use :func:`train_config` to see the config their
ranks will train with (HCCL time-outs, the output dir) before starting any of them.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from fcn8s.config import Config, add_config_arguments, config_from_args, resolve_path
from fcn8s.launch import add_hang_arguments

DEFAULT_CONFIG = "configs/voc_fcn8s.yaml"


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.train", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", metavar="PATH", type=resolve_path,
                        help="ImageNet VGG16-BN .ckpt (model-zoo or mindcv names) for the backbone; same as "
                             "model.pretrained=PATH; ignored when resuming (the checkpoint holds the weights)")
    parser.add_argument("--resume", metavar="auto|PATH", type=resume_argument,
                        help="continue training: 'auto' = newest complete checkpoint in the output dir "
                             "(start fresh if none), or a checkpoint path")
    parser.add_argument("--verify-data", action="store_true",
                        help="check the dataset's shard files against the sha256 in manifest.json first")
    add_config_arguments(parser, default_config=DEFAULT_CONFIG)
    add_hang_arguments(parser)
    return parser


def resume_argument(text: str) -> str:
    """``--resume``: 'auto', or a checkpoint path resolved like every other path argument."""
    return text if text == "auto" else resolve_path(text)


def train_config(train_args: Sequence[str]) -> Config:
    """The validated config of ``python -m fcn8s.train TRAIN_ARGS`` (a UserError naming the problem)."""
    return config_from_args(build_parser().parse_args(list(train_args)))
