"""Export a checkpoint for deployment (fixed input size, standard Conv2D kernels).

    python -m fcn8s.export --config configs/voc_fcn8s.yaml --ckpt CKPT --format MINDIR --size 512 512 --out fcn8s

MINDIR and ONNX export on any backend; AIR needs an Ascend device. The graph is float32 whatever
the config's amp_level. The input is a float32 (batch, 3, H, W) BGR image normalised with the
config's mean/std; H and W must be multiples of 32. ONNX files hold the transposed convolutions as
Conv + pixel shuffle (fcn8s/onnx_compat.py: MindSpore 2.10 writes ConvTranspose in a form
onnxruntime refuses); they run in onnxruntime with the network's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Optional, Sequence

import numpy as np

import mindspore as ms
import mindspore.nn as nn

from fcn8s.checkpoint import load_weights
from fcn8s.config import add_config_arguments, config_from_args, resolve_path
from fcn8s.errors import UserError, run_cli
from fcn8s.model import OUTPUT_STRIDE, build_model
from fcn8s.onnx_compat import onnx_exportable
from fcn8s.runtime import resolve_device_target, start

LOG = logging.getLogger("fcn8s.export")
SUFFIXES = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=resolve_path, help="checkpoint (.ckpt)")
    parser.add_argument("--format", default="MINDIR", choices=sorted(SUFFIXES), help="export format")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"),
                        help="input height and width, multiples of 32 (default 512 512)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the exported input (default 1)")
    parser.add_argument("--out", default="fcn8s", type=resolve_path,
                        help="output file name without suffix (default fcn8s)")
    add_config_arguments(parser, default_config="configs/voc_fcn8s.yaml")
    return parser


def _first_line(err: Exception) -> str:
    """The first non-empty line of a (MindSpore, often multi-line) error message."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def export(net: nn.Cell, sample: ms.Tensor, file_format: str, out: str) -> str:
    """Write ``net`` (in eval mode) for inputs shaped like ``sample``; returns the file written.

    Any failure, including MindSpore's exporter refusing the graph, is a one-line UserError.
    """
    net.set_train(False)
    path = out + SUFFIXES[file_format]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the directory of {path}: {err}") from None
    try:
        if file_format == "ONNX":
            ms.onnx.export(onnx_exportable(net), sample, file_name=out, input_names=["image"], output_names=["logits"])
        else:
            ms.export(net, sample, file_name=out, file_format=file_format)
    except (RuntimeError, ValueError, TypeError, OSError) as err:
        raise UserError(f"{file_format} export to {path} failed: {_first_line(err)}") from None
    if not os.path.isfile(path):  # MindSpore's ONNX writer only logs a failed write
        raise UserError(f"{file_format} export failed: {path} was not written (is its directory writable?)")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    height, width = args.size
    if height <= 0 or width <= 0 or height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
        raise UserError(f"--size must be positive multiples of {OUTPUT_STRIDE}, got {height} {width}")
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    if args.format == "AIR" and resolve_device_target(cfg.run.device_target) != "Ascend":
        raise UserError("AIR export needs an Ascend device; use MINDIR or ONNX here")
    start(cfg)
    net = build_model(dataclasses.replace(cfg.model, amp_level="O0"), "conv")  # float32, standard kernels
    load_weights(net, args.ckpt)
    sample = ms.Tensor(np.zeros((args.batch, 3, height, width), np.float32))
    path = export(net, sample, args.format, args.out)
    LOG.info("exported %s (input %d x 3 x %d x %d)", path, args.batch, height, width)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
