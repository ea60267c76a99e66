"""Helpers shared by the benchmark scripts (synthetic data, pipeline throughput)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

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


def images_per_second(dataset, batches: int, batch_size: int = 4) -> float:
    """Images/s a batched MindSpore dataset delivers, after its first batch."""
    iterator = dataset.repeat().create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batch_size * batches / (time.perf_counter() - started)
