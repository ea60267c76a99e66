"""PNG plots: training curves from ``metrics.jsonl`` and a per-class IoU bar chart from eval metrics.

    python -m fcn8s.plots --metrics runs/demo/metrics.jsonl --out runs/demo/plots
    python -m fcn8s.plots --eval-json runs/demo/checkpoints/fcn8s-final.eval.json --out runs/demo/plots

Uses matplotlib's object API with the Agg canvas (no display, no pyplot global state). A resumed
run appends steps it already logged; for every step the last record wins.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fcn8s.errors import UserError, run_cli

# (metrics.jsonl key = PNG name, axis label, log-scale base or None); images/s is optional.
CURVES = (("loss", "training loss", None),
          ("lr", "learning rate", None),
          ("loss_scale", "loss scale", 2),
          ("images_per_second", "images / s (all ranks)", None))
REQUIRED = ("step", "loss", "lr", "loss_scale")


def read_metrics(path: str) -> List[Dict[str, object]]:
    """Records of a metrics JSONL file sorted by step, the last record of each step kept."""
    if not os.path.isfile(path):
        raise UserError(f"metrics file not found: {path}")
    by_step: Dict[int, Dict[str, object]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not a JSON record ({err.msg})") from None
            absent = [key for key in REQUIRED if not isinstance(record, dict) or key not in record]
            if absent:
                raise UserError(f"{path}:{number}: record has no '{absent[0]}'")
            by_step[int(record["step"])] = record
    if not by_step:
        raise UserError(f"{path}: no metrics records")
    return [by_step[step] for step in sorted(by_step)]


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def plot_training_curves(metrics_jsonl: str, out_dir: str) -> List[str]:
    """Write loss/lr/loss-scale (and images/s when logged) vs step as PNGs in ``out_dir``; return their paths."""
    records = read_metrics(metrics_jsonl)
    run_name = os.path.basename(os.path.dirname(os.path.abspath(metrics_jsonl)))
    paths = []
    for key, label, log_base in CURVES:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if not points:
            continue
        fig = Figure(figsize=(7, 4), layout="tight")
        axes = fig.add_subplot()
        steps, values = zip(*points)
        axes.plot(steps, values, marker="." if len(points) < 50 else None)
        if log_base and all(v > 0 for v in values):
            axes.set_yscale("log", base=log_base)
        axes.set(xlabel="step", ylabel=label, title=f"{label} ({run_name})")
        axes.grid(alpha=0.3)
        paths.append(_save(fig, os.path.join(out_dir, f"{key}.png")))
    return paths


def plot_class_iou(summary: Dict[str, object], path: str, names: Optional[Sequence[str]] = None) -> str:
    """Bar chart of ``summary['class_iou']`` (eval metrics; None = class absent) with the mean IoU line."""
    values = summary.get("class_iou")
    names = list(names if names is not None else summary.get("class_names") or [])
    if not values:
        raise UserError("no per-class IoU to plot (summary has no 'class_iou')")
    if len(names) != len(values):
        raise UserError(f"{len(values)} class IoU values but {len(names)} class names")
    fig = Figure(figsize=(max(6.0, 0.45 * len(values) + 1.5), 4.5), layout="tight")
    axes = fig.add_subplot()
    heights = [0.0 if v is None else float(v) for v in values]
    bars = axes.bar(range(len(values)), heights, color=["lightgray" if v is None else "tab:blue" for v in values])
    for bar, value in zip(bars, values):
        axes.annotate("n/a" if value is None else f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
    mean = summary.get("mean_iou")
    if isinstance(mean, float) and math.isfinite(mean):
        axes.axhline(mean, color="tab:red", linestyle="--", label=f"mean IoU {mean:.3f}")
        axes.legend(loc="upper right")
    axes.set_xticks(range(len(values)), names, rotation=60, ha="right")
    axes.set(ylim=(0, 1.1), ylabel="IoU", title="per-class IoU")
    return _save(fig, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", help="metrics.jsonl written by training (rank 0)")
    parser.add_argument("--eval-json", help="metrics JSON written by python -m fcn8s.eval")
    parser.add_argument("--out", required=True, help="output directory for the PNGs")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.metrics or args.eval_json):
        raise UserError("give --metrics and/or --eval-json")
    paths = plot_training_curves(args.metrics, args.out) if args.metrics else []
    if args.eval_json:
        try:
            with open(args.eval_json, encoding="utf-8") as handle:
                summary = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{args.eval_json}: cannot read eval metrics ({err})") from None
        if not isinstance(summary, dict):
            raise UserError(f"{args.eval_json}: not an eval metrics object")
        paths.append(plot_class_iou(summary, os.path.join(args.out, "class_iou.png")))
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
