"""The unscale pass folded into the optimizer: one FCN-8s training step with a fixed loss scale, the step
unscaling the gradients (nn.Momentum's unit) against the optimizer taking them as summed (the trainer's
``fcn8s.optimizer.UnitMomentum``), side by side in one run; the dynamic scale (unscale + overflow check) for
reference. Each configuration is a subprocess of ``benchmarks/train_step.py`` (same timing rules).

    .venv/bin/python benchmarks/unscale_fold.py --sizes 64 --batch 4 --steps 8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import _run_child  # noqa: E402  (the sibling benchmark's child runner)

CONFIGS = [("dynamic: unscale + overflow check", "dynamic", "mean"),
           ("fixed: unscale pass", "fixed", "mean"),
           ("fixed: folded into the optimizer", "fixed", "gradients")]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64], help="input sizes (default: 64)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (default: 8)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run the configurations this many times, interleaved; best median kept (default: 2)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-subprocess timeout in seconds")
    args = parser.parse_args(argv)
    print(f"FCN-8s (ours) train step, batch {args.batch}, {args.steps} timed steps, {args.rounds} round(s)",
          flush=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="fcn8s_bench_") as workdir:
        for size in args.sizes:
            best = {}
            for _ in range(args.rounds):
                for label, loss_scale, unit in CONFIGS:
                    res = _run_child(["--kind", "step", "--impl", "matmul", "--size", str(size), "--batch",
                                      str(args.batch), "--steps", str(args.steps), "--warmup", "1", "--budget",
                                      "300", "--mode", "graph", "--threads", "0", "--loss-scale", loss_scale,
                                      "--optimizer-unit", unit], args.timeout, workdir)
                    if res is None:
                        ok = False
                        continue
                    best[label] = min(best.get(label, float("inf")), res["median_s"])
                    print(f"  {size} px {label}: median {res['median_s']:.3f} s/step", flush=True)
            if len(best) == len(CONFIGS):
                base, folded = best[CONFIGS[1][0]], best[CONFIGS[2][0]]
                print(f"\n| {size} px | s/step |\n|---|---|")
                for label, _, _ in CONFIGS:
                    print(f"| {label} | {best[label]:.3f} |")
                print(f"fold gain: {base:.3f} -> {folded:.3f} s/step ({base / folded:.3f}x, "
                      f"{100 * (base - folded) / base:.1f} % less)\n", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
