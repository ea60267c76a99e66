"""Evaluation as a library: a checkpoint's confusion matrix on a split, each image scored by one rank.

The CLI is ``python -m fcn8s.eval``; the trainer calls :func:`evaluate` for ``train.eval_interval``.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from fcn8s.config import Config
from fcn8s.data.pipeline import iterate_eval_samples
from fcn8s.data.voc import VOC_CLASSES
from fcn8s.distributed import DistContext
from fcn8s.inference import Predictor
from fcn8s.metrics import confusion_matrix


def class_names(num_classes: int) -> List[str]:
    """VOC's class names for 21 classes, else ``class_<i>``."""
    return list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)]


def evaluate(cfg: Config, ctx: DistContext, predictor: Predictor, split: str = "val",
             scales: Sequence[float] = (1.0,), flip: bool = False,
             progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Confusion matrix of this rank's share of ``split`` (TTA: scales, flip); sum it over ranks.

    The shares are disjoint and cover the split (fcn8s.data.sampling.eval_indices), so the sum
    scores every image exactly once. ``progress(images scored so far)`` is called after each batch
    (the trainer renews its heartbeat).
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
