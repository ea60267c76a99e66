"""TensorBoard scalars of a training run (rank 0), written with tensorboardX.

``<run.output_dir>/tensorboard/`` receives the ``metrics.jsonl`` train scalars under ``train/``
(loss, lr, loss_scale, images_per_second, step_seconds) and the periodic val metrics under ``val/``
(pixel_accuracy, mean_accuracy, mean_iou, frequency_weighted_iou, ``val/class_iou/<name>``).
View with ``tensorboard --logdir runs/``.

Resume: the writer of a resumed run opens a new event file with ``purge_step`` = resumed step + 1,
so TensorBoard drops the interrupted run's records after the checkpoint (as ``metrics.jsonl`` is
truncated) and each step appears once. tensorboardX writes from a background thread: each record is
flushed with the next one and the file is closed when training ends (also on SIGTERM/SIGINT); a rank
killed abruptly can lose its last record (a resume rewrites it when it is after the checkpoint).
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence

TRAIN_KEYS = ("loss", "lr", "loss_scale", "images_per_second", "step_seconds")
VAL_KEYS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")


def tensorboard_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "tensorboard")


class ScalarWriter:
    """Writes train and val scalars; the event file is opened at the first write (after a resume)."""

    def __init__(self, output_dir: str, class_names: Sequence[str]) -> None:
        self.logdir = tensorboard_dir(output_dir)
        self.class_names = list(class_names)
        self.purge_step: Optional[int] = None
        self._writer = None

    def resume(self, step: int) -> None:
        """Hide records of steps after ``step`` left by the run that is resumed (call before writing)."""
        self.purge_step = step + 1

    def _summary(self):  # tensorboardX.SummaryWriter, imported when first needed
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.logdir, purge_step=self.purge_step, flush_secs=30)
        return self._writer

    def _write(self, step: int, scalars: Mapping[str, object]) -> None:
        writer = self._summary()
        for tag, value in scalars.items():
            if value is not None:
                writer.add_scalar(tag, float(value), step)
        writer.flush()

    def write_train(self, record: Mapping[str, object]) -> None:
        """One ``metrics.jsonl`` record (``step`` plus TRAIN_KEYS; None values are skipped)."""
        self._write(int(record["step"]), {f"train/{key}": record.get(key) for key in TRAIN_KEYS})

    def write_eval(self, step: int, metrics: Mapping[str, object]) -> None:
        """Val metrics as :func:`fcn8s.metrics.summarize` returns them (per-class IoU under val/class_iou/)."""
        scalars: Dict[str, object] = {f"val/{key}": metrics[key] for key in VAL_KEYS}
        for name, value in zip(self.class_names, metrics.get("class_iou") or ()):
            scalars[f"val/class_iou/{name}"] = value
        self._write(step, scalars)

    def close(self) -> None:
        """Write what is queued and close the event file (tensorboardX writes from a background thread)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
