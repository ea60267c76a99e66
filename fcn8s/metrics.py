"""Segmentation metrics from a confusion matrix: pure numpy, any batch size and image shape.

``hist[i, j]`` counts pixels of true class ``i`` predicted as class ``j``. Classes absent from
both ground truth and prediction are left out of the means (NaN per-class values). Summing the
matrices of several ranks gives exactly the single-process result.
"""
from __future__ import annotations

from typing import Dict

import numpy as np


def confusion_matrix(label: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 matrix; pixels labelled ``ignore_label`` are skipped."""
    label = np.asarray(label)
    pred = np.asarray(pred)
    if label.shape != pred.shape:
        raise ValueError(f"label shape {label.shape} != prediction shape {pred.shape}")
    keep = label != ignore_label
    truth = label[keep].astype(np.int64)
    guess = pred[keep].astype(np.int64)
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_label}")
    if guess.size and (guess.min() < 0 or guess.max() >= num_classes):
        raise ValueError(f"predicted classes must be in [0, {num_classes})")
    counts = np.bincount(num_classes * truth + guess, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def class_iou(hist: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN for classes never seen nor predicted."""
    tp = np.diag(hist).astype(np.float64)
    return _ratio(tp, hist.sum(axis=1) + hist.sum(axis=0) - tp)


def class_accuracy(hist: np.ndarray) -> np.ndarray:
    """Per-class recall = TP / ground-truth pixels; NaN for classes absent from the ground truth."""
    return _ratio(np.diag(hist).astype(np.float64), hist.sum(axis=1))


def pixel_accuracy(hist: np.ndarray) -> float:
    total = hist.sum()
    return float(np.diag(hist).sum() / total) if total else float("nan")


def mean_accuracy(hist: np.ndarray) -> float:
    acc = class_accuracy(hist)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def mean_iou(hist: np.ndarray) -> float:
    iou = class_iou(hist)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def frequency_weighted_iou(hist: np.ndarray) -> float:
    total = hist.sum()
    if not total:
        return float("nan")
    freq = hist.sum(axis=1) / total
    iou = class_iou(hist)
    present = freq > 0
    return float((freq[present] * np.nan_to_num(iou[present])).sum())


def summarize(hist: np.ndarray) -> Dict[str, object]:
    """All four scores plus per-class IoU (None where undefined), ready for JSON."""
    return {
        "pixel_accuracy": pixel_accuracy(hist),
        "mean_accuracy": mean_accuracy(hist),
        "mean_iou": mean_iou(hist),
        "frequency_weighted_iou": frequency_weighted_iou(hist),
        "class_iou": [None if np.isnan(v) else float(v) for v in class_iou(hist)],
        "pixels": int(hist.sum()),
    }
