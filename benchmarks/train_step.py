"""Time one FCN-8s training step: the seed network (Conv2D convolutions) against ours (im2col + MatMul).

Each configuration (implementation x input size) runs in its own subprocess, so graph compilation
and peak memory are isolated; peak RSS is the child's ``ru_maxrss``. The step is the project's
``make_train_step``: scaled loss -> grads -> unscale -> all_finite -> Momentum update ->
DynamicLossScaler.adjust, jit-compiled in graph mode (``--mode pynative`` runs it eagerly).

Also estimates a pure-matmul lower bound: the model's convolution FLOPs (taken from the layer
shapes seen in one forward pass; 'same' 3x3/7x7 convs count only the taps the fast path keeps)
times 3 for a training step (forward, input gradient, weight gradient), divided by this machine's
measured sgemm rate (``ops.matmul`` on 2048x2048).

    .venv/bin/python benchmarks/train_step.py                       # sizes 64 128 256, batch 2
    .venv/bin/python benchmarks/train_step.py --sizes 64 --steps 10 --impls matmul --mode pynative
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 21
IMPL_LABEL = {"conv": "seed (Conv2D)", "matmul": "ours (im2col+MatMul)"}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _set_context(args: argparse.Namespace) -> None:
    import mindspore as ms

    mode = ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE
    ms.set_context(mode=mode)
    ms.set_device("CPU")
    if args.threads:
        ms.set_context(runtime_num_threads=args.threads)


# --------------------------------------------------------------------------- children
def child_step(args: argparse.Namespace) -> Dict[str, object]:
    """Build model + optimizer + scaler, time the first step (compile + run) and then ``steps`` steps."""
    import numpy as np

    import mindspore as ms
    from mindspore import amp

    from fcn8s.loss_scale import FixedLossScaler
    from fcn8s.losses import SegmentationCrossEntropy
    from fcn8s.model import FCN8s
    from fcn8s.optimizer import UnitMomentum, gradient_unit
    from fcn8s.trainer import make_train_step

    _set_context(args)
    ms.set_seed(0)
    net = FCN8s(NUM_CLASSES, conv_impl=args.impl)
    net.set_train(True)
    if args.loss_scale == "fixed":
        scaler = FixedLossScaler(1024.0)
    else:
        scaler = amp.DynamicLossScaler(scale_value=1024.0, scale_factor=2, scale_window=1000)
    unit = gradient_unit(scaler, 1) if args.optimizer_unit == "gradients" else 1.0
    optimizer = UnitMomentum(net.trainable_params(), np.full(100_000, 1e-3, np.float32), 0.9, 1e-4, unit)
    loss_fn = SegmentationCrossEntropy(NUM_CLASSES, ignore_label=255)
    step = make_train_step(net, loss_fn, optimizer, scaler, jit=args.mode == "graph")

    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32))
    labels_np = rng.integers(0, NUM_CLASSES, (args.batch, args.size, args.size)).astype(np.int32)
    labels_np[:, :4, :] = 255  # a few ignored pixels, as VOC boundaries
    labels = ms.Tensor(labels_np)

    def run_once() -> tuple:
        start = time.perf_counter()
        loss, finite, *_ = step(images, labels)
        loss_value, finite_value = float(loss.asnumpy()), bool(finite.asnumpy())  # waits for the result
        return time.perf_counter() - start, loss_value, finite_value

    rss_before = _peak_rss_mb()
    first, loss0, _ = run_once()
    budget_start = time.perf_counter()
    warmups = 0
    for _ in range(args.warmup):  # skipped when even one step would exceed the budget
        if first > args.budget:
            break
        run_once()
        warmups += 1
    times: List[float] = []
    finites = []
    while len(times) < args.steps:
        seconds, loss_value, finite_value = run_once()
        times.append(seconds)
        finites.append(finite_value)
        if time.perf_counter() - budget_start > args.budget:
            break
    median = statistics.median(times)
    return {"impl": args.impl, "size": args.size, "batch": args.batch, "mode": args.mode,
            "threads": args.threads, "first_step_s": first, "compile_s": max(first - median, 0.0),
            "warmup_steps": warmups, "steps": len(times), "requested_steps": args.steps,
            "median_s": median, "min_s": min(times), "max_s": max(times), "times": times,
            "finite_steps": sum(finites), "loss_first": loss0, "loss_last": loss_value,
            "rss_after_build_mb": rss_before, "peak_rss_mb": _peak_rss_mb()}


def _conv_flops(net, size: int, batch: int) -> Dict[str, float]:
    """Forward FLOPs of every convolution, from the shapes seen in one pynative forward pass."""
    import numpy as np

    import mindspore as ms
    import mindspore.nn as nn

    from fcn8s.fast_conv import SameConv2d

    records: List[Dict[str, object]] = []

    def hook(cell, inputs, output):
        n, cin, h, w = inputs[0].shape
        _, cout, ho, wo = output.shape
        if isinstance(cell, SameConv2d):
            k = cell.kernel_size
            taps = min(k, 2 * h - 1) * min(k, 2 * w - 1)  # what the matmul path keeps
            flops = 2.0 * n * ho * wo * cin * cout * taps
        elif isinstance(cell, nn.Conv2dTranspose):
            kh, kw = cell.kernel_size
            flops = 2.0 * n * h * w * cin * cout * kh * kw  # every input pixel scatters k*k taps
        else:  # nn.Conv2d (1x1 here)
            kh, kw = cell.kernel_size
            flops = 2.0 * n * ho * wo * cin * cout * kh * kw
        records.append({"cls": type(cell).__name__, "in": [h, w], "cin": cin, "cout": cout, "flops": flops})

    handles = [cell.register_forward_hook(hook) for _, cell in net.cells_and_names()
               if isinstance(cell, (SameConv2d, nn.Conv2d, nn.Conv2dTranspose))]
    net.set_train(False)
    net(ms.Tensor(np.zeros((batch, 3, size, size), np.float32)))
    for handle in handles:
        handle.remove()
    forward = sum(r["flops"] for r in records)
    conv6 = [r for r in records if r["cls"] == "SameConv2d" and r["cout"] == 4096]
    return {"forward_gflop": forward / 1e9, "train_gflop": 3 * forward / 1e9, "num_convs": len(records),
            "conv6_forward_gflop": sum(r["flops"] for r in conv6) / 1e9}


def _sgemm_gflops(n: int, reps: int) -> Dict[str, float]:
    import numpy as np

    import mindspore as ms
    import mindspore.ops as ops

    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n ** 3

    def best(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return flop / min(times) / 1e9

    a, b = ms.Tensor(a_np), ms.Tensor(b_np)
    matmul = ms.jit(ops.matmul)  # one graph-mode kernel; pynative adds per-op overhead only
    return {"mindspore_gflops": best(lambda: matmul(a, b).asnumpy()),
            "numpy_gflops": best(lambda: a_np @ b_np), "n": n}


def child_calib(args: argparse.Namespace) -> Dict[str, object]:
    import mindspore as ms

    from fcn8s.model import FCN8s

    _set_context(args)
    ms.set_context(mode=ms.PYNATIVE_MODE)  # forward hooks run in pynative mode
    net = FCN8s(NUM_CLASSES, conv_impl="matmul")
    flops = {str(size): _conv_flops(net, size, args.batch) for size in args.sizes}
    ms.set_context(mode=ms.GRAPH_MODE)
    return {"flops": flops, "sgemm": _sgemm_gflops(args.gemm_n, args.gemm_reps)}


# --------------------------------------------------------------------------- parent
def _run_child(argv: List[str], timeout: float, workdir: str) -> Optional[Dict[str, object]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_v", "3")  # MindSpore: errors only
    cmd = [sys.executable, os.path.abspath(__file__), "--child"] + argv
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  !! timed out after {timeout:.0f} s: {' '.join(argv)}", flush=True)
        return None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  !! child failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}", flush=True)
    return None


def _fmt(value: Optional[float], spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark an FCN-8s training step (batch of random data, Momentum, dynamic loss "
                    "scaling) for the seed network (conv_impl='conv', Conv2D) and ours "
                    "(conv_impl='matmul', im2col + MatMul), one subprocess per configuration.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256],
                        help="square input sizes, multiples of 32 (default: 64 128 256)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration; the median "
                        "is reported (default: 5)")
    parser.add_argument("--seed-steps", type=int, default=None,
                        help="timed steps for the seed configuration (default: --steps); Conv2D on CPU "
                             "can take minutes per step at 256 px")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps after the first (compile) step (default: 1)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds of post-compile stepping per configuration; once spent, timing "
                             "stops early (at least one timed step) and the table says so (default: 120)")
    parser.add_argument("--impls", nargs="+", choices=["conv", "matmul"], default=["conv", "matmul"],
                        help="which implementations to run (default: both)")
    parser.add_argument("--mode", choices=["graph", "pynative"], default="graph",
                        help="MindSpore execution mode of the step (default: graph, i.e. ms.jit)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ms.set_context(runtime_num_threads=...) in the children (default: "
                             "MindSpore's choice); set OMP_NUM_THREADS in the environment for OpenMP")
    parser.add_argument("--no-lower-bound", action="store_true", help="skip the FLOP count / sgemm calibration")
    parser.add_argument("--gemm-n", type=int, default=2048, help="sgemm calibration size (default: 2048)")
    parser.add_argument("--gemm-reps", type=int, default=5, help="sgemm calibration repetitions (default: 5)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-subprocess timeout in seconds")
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON to PATH")
    # internal: run one configuration in this process and print a RESULT line
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=["step", "calib"], default="step", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["conv", "matmul"], default="matmul", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--loss-scale", choices=["dynamic", "fixed"], default="dynamic", help=argparse.SUPPRESS)
    # the optimizer's unit: "mean" = the step unscales the gradients; "gradients" = the trainer's (fixed scale:
    # the optimizer takes them as summed, fcn8s/optimizer.py)
    parser.add_argument("--optimizer-unit", choices=["mean", "gradients"], default="mean", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        result = child_step(args) if args.kind == "step" else child_calib(args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    bad = [s for s in args.sizes if s % 32]
    if bad:
        parser.error(f"sizes must be multiples of 32: {bad}")
    seed_steps = args.seed_steps or args.steps
    common = ["--batch", str(args.batch), "--mode", args.mode, "--threads", str(args.threads),
              "--warmup", str(args.warmup), "--budget", str(args.budget)]
    print(f"FCN-8s train step, batch {args.batch}, mode {args.mode}, threads "
          f"{args.threads or 'default'}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs; steps: seed {seed_steps}, ours {args.steps}, budget {args.budget:.0f} s",
          flush=True)
    results: Dict[str, Dict[int, Optional[Dict[str, object]]]] = {impl: {} for impl in args.impls}
    calib = None
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fcn8s_bench_") as workdir:  # MindSpore may write logs to cwd
        if not args.no_lower_bound:
            print("calibrating: conv FLOPs per size and sgemm GFLOP/s ...", flush=True)
            calib = _run_child(["--kind", "calib", "--sizes", *map(str, args.sizes), "--batch", str(args.batch),
                                "--gemm-n", str(args.gemm_n), "--gemm-reps", str(args.gemm_reps),
                                "--threads", str(args.threads)], args.timeout, workdir)
            if calib:
                s = calib["sgemm"]
                print(f"  sgemm {s['n']}^3: MindSpore ops.matmul {s['mindspore_gflops']:.1f} GFLOP/s, "
                      f"numpy {s['numpy_gflops']:.1f} GFLOP/s", flush=True)
        for size in args.sizes:
            for impl in args.impls:
                steps = seed_steps if impl == "conv" else args.steps
                print(f"running {IMPL_LABEL[impl]} at {size} px ({steps} timed steps) ...", flush=True)
                res = _run_child(["--kind", "step", "--impl", impl, "--size", str(size), "--steps", str(steps)]
                                 + common, args.timeout, workdir)
                results[impl][size] = res
                if res:
                    note = "" if res["steps"] >= res["requested_steps"] else \
                        f" (budget: only {res['steps']} of {res['requested_steps']} steps timed)"
                    print(f"  median {res['median_s']:.3f} s/step over {res['steps']} steps, first step "
                          f"{res['first_step_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB{note}", flush=True)

    def get(impl: str, size: int, key: str) -> Optional[float]:
        res = results.get(impl, {}).get(size)
        return None if res is None else res[key]

    print()
    header = ["size", "seed s/step", "ours s/step", "ratio", "seed compile s", "ours compile s",
              "seed peak RSS MB", "ours peak RSS MB", "train GFLOP", "lower bound s", "ours/bound"]
    rows = []
    for size in args.sizes:
        seed, ours = get("conv", size, "median_s"), get("matmul", size, "median_s")
        seed_n, seed_req = get("conv", size, "steps"), get("conv", size, "requested_steps")
        seed_cell = _fmt(seed, ".2f")
        if seed is not None:
            seed_cell += f" (n={seed_n})" + ("*" if seed_n < seed_req else "")
        gflop = bound = None
        if calib:
            gflop = calib["flops"][str(size)]["train_gflop"]
            bound = gflop / calib["sgemm"]["mindspore_gflops"]
        rows.append([f"{size}x{size}", seed_cell, _fmt(ours, ".3f") + (f" (n={get('matmul', size, 'steps')})"
                                                                       if ours is not None else ""),
                     _fmt(seed / ours if seed and ours else None, ".1f") + ("x" if seed and ours else ""),
                     _fmt(get("conv", size, "compile_s"), ".1f"), _fmt(get("matmul", size, "compile_s"), ".1f"),
                     _fmt(get("conv", size, "peak_rss_mb"), ".0f"), _fmt(get("matmul", size, "peak_rss_mb"), ".0f"),
                     _fmt(gflop, ".1f"), _fmt(bound, ".3f"),
                     _fmt(ours / bound if ours and bound else None, ".1f") + ("x" if ours and bound else "")])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print(f"\nbatch {args.batch}; s/step = median of n timed steps after compile and {args.warmup} warm-up "
          f"step(s); ratio = seed/ours; compile = first step - median step; * = fewer steps than asked "
          f"(--budget {args.budget:.0f} s reached).")
    if calib:
        print(f"lower bound = 3 x forward conv FLOPs (cropped 'same' taps) / MindSpore sgemm "
              f"{calib['sgemm']['mindspore_gflops']:.1f} GFLOP/s (numpy {calib['sgemm']['numpy_gflops']:.1f}); "
              "ignores BN/ReLU/pool/loss/optimizer and assumes every conv runs at large-sgemm speed.")
    print(f"total wall time {time.perf_counter() - wall:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "calib": calib, "results": results}, handle, indent=1)
    return 0 if all(r is not None for per in results.values() for r in per.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
