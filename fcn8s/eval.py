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
import functools
import json
import logging
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from fcn8s.config import Config, add_config_arguments, config_from_args
from fcn8s.data.pipeline import iterate_eval_samples
from fcn8s.data.voc import VOC_CLASSES
from fcn8s.distributed import DistContext, sum_across_ranks
from fcn8s.errors import run_cli
from fcn8s.inference import Predictor, add_tta_arguments
from fcn8s.metrics import confusion_matrix, summarize
from fcn8s.plots import plot_class_iou
from fcn8s.runtime import start

LOG = logging.getLogger("fcn8s.eval")


def class_names(num_classes: int) -> List[str]:
    return list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)]


def evaluate(cfg: Config, ctx: DistContext, predictor: Predictor, split: str = "val",
             scales: Sequence[float] = (1.0,), flip: bool = False,
             progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Confusion matrix of this rank's share of ``split`` (TTA: scales, flip); sum it over ranks.

    ``progress(images scored so far)`` is called after each batch (the trainer renews its heartbeat).
    """
    score = functools.partial(_score, predictor, cfg=cfg, scales=scales, flip=flip)
    hist = np.zeros((cfg.model.num_classes,) * 2, np.int64)
    scored = 0
    samples = iterate_eval_samples(cfg.data.mindrecord_dir, ctx.rank, ctx.size, split)
    with tqdm(desc="eval", unit="img", disable=not ctx.is_main) as bar:  # counts scored, not read, images
        for batch in _batches(samples, cfg.eval.batch_size):
            hist += score(batch)
            scored += len(batch)
            bar.update(len(batch))
            if progress:
                progress(scored)
    return hist


def _batches(samples: Iterable[tuple], size: int) -> Iterator[List[tuple]]:
    batch: List[tuple] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _score(predictor: Predictor, batch: List[tuple], cfg: Config, scales: Sequence[float], flip: bool) -> np.ndarray:
    preds = predictor.predict_tta([image for _, image, _ in batch], cfg.eval.batch_size, scales, flip)
    return sum(confusion_matrix(label, pred, cfg.model.num_classes, cfg.data.ignore_label)
               for (_, _, label), pred in zip(batch, preds))


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
    parser.add_argument("--ckpt", required=True, help="checkpoint to evaluate (.ckpt)")
    parser.add_argument("--split", default="val", help="dataset split to evaluate (default val)")
    parser.add_argument("--out", help="metrics JSON path (default: <ckpt without .ckpt>.eval.json)")
    add_tta_arguments(parser)
    parser.add_argument("--no-plot", action="store_true", help="do not write the per-class IoU bar chart")
    add_config_arguments(parser, default_config="configs/voc_fcn8s.yaml")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    ctx = start(cfg)
    predictor = Predictor.from_checkpoint(cfg, args.ckpt)
    hist = sum_across_ranks(evaluate(cfg, ctx, predictor, args.split, args.scales, args.flip), ctx)
    summary = summarize(hist)
    summary.update({"checkpoint": os.path.abspath(args.ckpt), "split": args.split, "scales": args.scales,
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
