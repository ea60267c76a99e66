"""Helpers shared by the benchmark scripts (synthetic data, pipeline throughput)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def synthetic_dataset(work: str, images: int, min_size: int = 48, max_size: int = 96, build: bool = True) -> str:
    """Write a synthetic VOC tree under ``work/voc`` and (if ``build``) its MindRecord in ``work/mr``.

    Returns the MindRecord directory, or the VOC tree when ``build`` is false.
    """
    voc, dataset = os.path.join(work, "voc"), os.path.join(work, "mr")
    subprocess.run([sys.executable, "-m", "fcn8s.data.synthetic", "--out", voc, "--train", str(images), "--val", "4",
                    "--min-size", str(min_size), "--max-size", str(max_size)], cwd=REPO, check=True,
                   stderr=subprocess.DEVNULL)
    if not build:
        return voc
    subprocess.run([sys.executable, "-m", "fcn8s.build_dataset", "--voc-root", voc, "--out", dataset],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return dataset


def pipeline_rate(dataset, batches: int, batch_size: int = 4, warmup: int = 1) -> Tuple[float, float]:
    """(images/s, CPU ms per image) a batched MindSpore dataset delivers after ``warmup`` batches.

    The warm-up should drain what shuffle buffers and the engine's queues computed before the
    first batch. CPU time is this process's user + system time over all threads (workers and
    the consuming loop); other jobs on a shared machine disturb it much less than wall time.
    """
    iterator = dataset.repeat().create_tuple_iterator(num_epochs=1, output_numpy=True)
    for _ in range(warmup):
        next(iterator)
    cpu_started, started = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next(iterator)
    images = batch_size * batches
    return images / (time.perf_counter() - started), 1000.0 * (_cpu_seconds() - cpu_started) / images


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
