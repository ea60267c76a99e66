"""Evaluate a checkpoint on the val split at original resolution, optionally multi-scale + flip.

    python -m fcn8s.eval --config configs/cpu_smoke.yaml --ckpt runs/demo/checkpoints/fcn8s-final.ckpt
    python -m fcn8s.eval --config configs/voc_fcn8s.yaml --ckpt CKPT --scales 0.5 0.75 1.0 1.25 1.75 --flip

Prints pixel accuracy, mean class accuracy, mean IoU, frequency-weighted IoU and per-class IoU,
and writes them (with the scales and flip used) as JSON next to the checkpoint
(``<ckpt name>.eval.json``) unless --out is given, plus a per-class IoU bar chart beside the JSON
(``<json path without .json>.class_iou.png``) unless --no-plot. KEY=VALUE overrides go before --scales (or use --set).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Dict, Optional, Sequence

from fcn8s.config import add_config_arguments, config_from_args, resolve_path
from fcn8s.data.mindrecord import verify_split
from fcn8s.distributed import sum_across_ranks
from fcn8s.errors import run_cli
from fcn8s.evaluation import class_names, evaluate
from fcn8s.inference import Predictor, add_tta_arguments
from fcn8s.metrics import summarize
from fcn8s.plots import plot_class_iou
from fcn8s.runtime import start

LOG = logging.getLogger("fcn8s.eval")


def format_table(summary: Dict[str, object], names: Sequence[str]) -> str:
    """Human-readable metrics table (per-class IoU, '-' where the class never appears)."""
    lines = [f"{'test-time augmentation':<26}scales {' '.join(f'{s:g}' for s in summary.get('scales', [1.0]))}"
             f"{', flip' if summary.get('flip') else ''}",
             f"{'pixel accuracy':<26}{summary['pixel_accuracy']:.4f}",
             f"{'mean accuracy':<26}{summary['mean_accuracy']:.4f}",
             f"{'mean IoU':<26}{summary['mean_iou']:.4f}",
             f"{'frequency weighted IoU':<26}{summary['frequency_weighted_iou']:.4f}",
             "per-class IoU:"]
    for name, iou in zip(names, summary["class_iou"]):
        lines.append(f"  {name:<24}{'-' if iou is None else f'{iou:.4f}'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=resolve_path, help="checkpoint to evaluate (.ckpt)")
    parser.add_argument("--split", default="val", help="dataset split to evaluate (default val)")
    parser.add_argument("--out", type=resolve_path, help="metrics JSON path (default: <ckpt without .ckpt>.eval.json)")
    parser.add_argument("--verify-data", action="store_true",
                        help="check the split's shard files against the sha256 in manifest.json first")
    add_tta_arguments(parser)
    parser.add_argument("--no-plot", action="store_true", help="do not write the per-class IoU bar chart")
    add_config_arguments(parser, default_config="configs/voc_fcn8s.yaml")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    verify_split(cfg.data.mindrecord_dir, args.split, args.verify_data)
    ctx = start(cfg)
    predictor = Predictor.from_checkpoint(cfg, args.ckpt)
    hist = sum_across_ranks(evaluate(cfg, ctx, predictor, args.split, args.scales, args.flip), ctx)
    summary = summarize(hist)
    summary.update({"checkpoint": args.ckpt, "split": args.split, "scales": args.scales,
                    "flip": args.flip, "class_names": class_names(cfg.model.num_classes)})
    if ctx.is_main:
        out = args.out or os.path.splitext(args.ckpt)[0] + ".eval.json"
        if not args.no_plot:
            summary["plot"] = plot_class_iou(summary, os.path.splitext(out)[0] + ".class_iou.png")
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        print(format_table(summary, summary["class_names"]))
        LOG.info("metrics written to %s%s", out, "" if args.no_plot else f", per-class IoU chart {summary['plot']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
