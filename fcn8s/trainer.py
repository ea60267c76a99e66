"""The train step (dynamic loss scaling, gradient all-reduce) and the training loop.

Step order (as mindcv's TrainStep, but functional so it runs on CPU and Ascend alike):
scaled loss -> grads -> mean over ranks -> unscale -> all_finite -> update only if finite ->
adjust the loss scale.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import mindspore as ms
import mindspore.nn as nn
from mindspore import amp

from fcn8s.checkpoint import CheckpointManager, training_state
from fcn8s.config import Config
from fcn8s.distributed import DistContext
from fcn8s.losses import SegmentationCrossEntropy

LOG = logging.getLogger(__name__)
EXIT_DIVERGED = 3


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite (or the loss scale kept shrinking) for too many steps."""


def cosine_lr(base_lr: float, min_lr: float, total_steps: int) -> np.ndarray:
    """One learning rate per step: cosine from ``base_lr`` (step 0) down to ``min_lr`` (last step)."""
    steps = np.arange(total_steps, dtype=np.float64)
    progress = steps / max(total_steps - 1, 1)
    return (min_lr + 0.5 * (base_lr - min_lr) * (1.0 + np.cos(math.pi * progress))).astype(np.float32)


def _no_reduction(grads: Tuple[ms.Tensor, ...]) -> Tuple[ms.Tensor, ...]:
    """Gradient 'reducer' for a single process."""
    return grads


def make_train_step(net: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, scaler: amp.DynamicLossScaler,
                    grad_reducer: Callable, jit: bool = True) -> Callable:
    """Build ``step(images, labels) -> (loss, finite, loss_scale)``; skips the update on overflow."""

    def forward(images: ms.Tensor, labels: ms.Tensor) -> ms.Tensor:
        return scaler.scale(loss_fn(net(images), labels))

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    def step(images: ms.Tensor, labels: ms.Tensor) -> Tuple[ms.Tensor, ms.Tensor, ms.Tensor]:
        scaled_loss, grads = grad_fn(images, labels)
        grads = grad_reducer(grads)
        loss = scaler.unscale(scaled_loss)
        grads = scaler.unscale(grads)
        finite = amp.all_finite(grads)
        if finite:
            optimizer(grads)
        scaler.adjust(finite)
        return loss, finite, scaler.scale_value.value()

    return ms.jit(step) if jit else step


def parameter_checksum(net: nn.Cell) -> str:
    """sha256 (16 hex digits) of the trainable weights: equal on every rank of a correct job.

    BatchNorm running statistics are excluded: each rank keeps its own (rank 0's are saved).
    """
    digest = hashlib.sha256()
    for param in net.trainable_params():
        digest.update(param.name.encode())
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class DivergenceGuard:
    """Counts consecutive bad steps (non-finite loss or skipped update) and stops at ``limit``."""

    limit: int
    bad_steps: int = 0

    def update(self, step: int, loss: float, finite: bool) -> None:
        if math.isfinite(loss) and finite:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        if self.bad_steps >= self.limit:
            raise TrainingDiverged(
                f"training diverged at step {step}: loss {loss} with a non-finite gradient for "
                f"{self.bad_steps} consecutive steps (lower train.lr or check the data); "
                "the last good checkpoint is kept")


class Trainer:
    """Runs the training loop for one rank; rank 0 logs metrics and writes checkpoints."""

    def __init__(self, cfg: Config, ctx: DistContext, net: nn.Cell, dataset: ms.dataset.Dataset) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.net = net
        self.dataset = dataset
        self.steps_per_epoch = dataset.get_dataset_size()
        tcfg = cfg.train
        self.total_steps = tcfg.max_steps or tcfg.epochs * self.steps_per_epoch
        self.lr = cosine_lr(tcfg.lr, tcfg.min_lr, self.total_steps)
        self.optimizer = nn.Momentum(net.trainable_params(), learning_rate=ms.Tensor(self.lr),
                                     momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
        ls = cfg.loss_scale
        self.scaler = amp.DynamicLossScaler(scale_value=ls.init_loss_scale, scale_factor=ls.scale_factor,
                                            scale_window=ls.scale_window)
        reducer = (nn.DistributedGradReducer(self.optimizer.parameters, mean=True, degree=ctx.size)
                   if ctx.distributed else _no_reduction)
        loss_fn = SegmentationCrossEntropy(cfg.model.num_classes, cfg.data.ignore_label)
        self.step_fn = make_train_step(net, loss_fn, self.optimizer, self.scaler, reducer,
                                       jit=cfg.run.mode == "graph")
        self.checkpoints = CheckpointManager(os.path.join(cfg.run.output_dir, "checkpoints"),
                                             tcfg.keep_checkpoints, cfg.digest())
        self.guard = DivergenceGuard(tcfg.max_bad_steps)

    def _log_metrics(self, record: Dict[str, object]) -> None:
        with open(os.path.join(self.cfg.run.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _save(self, step: int, epoch: int, final: bool = False) -> Optional[str]:
        if not self.ctx.is_main:
            return None
        return self.checkpoints.save(training_state(self.net, self.optimizer, float(self.scaler.scale_value.asnumpy())),
                                     step, epoch, final=final)

    def fit(self) -> Dict[str, object]:
        """Train ``total_steps`` steps; returns a summary (final checkpoint path, last loss, timing)."""
        tcfg = self.cfg.train
        global_batch = tcfg.batch_size * self.ctx.size
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        LOG.info("training %d steps (%d epoch(s) of %d steps), global batch %d = %d x %d rank(s), lr %.4g -> %.4g",
                 self.total_steps, epochs, self.steps_per_epoch, global_batch, tcfg.batch_size, self.ctx.size,
                 tcfg.lr, tcfg.min_lr)
        self.net.set_train(True)
        iterator = self.dataset.create_tuple_iterator(num_epochs=epochs)
        progress = tqdm(total=self.total_steps, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (self.ctx.is_main and sys.stderr.isatty()))
        self.step, self.first_step_seconds = 0, None
        self.window: List[float] = []  # wall seconds per step (data + compute) since the last report
        loss_value = float("nan")
        with logging_redirect_tqdm(), progress:
            for epoch in range(epochs):
                self.last_tick = time.perf_counter()
                for images, labels in iterator:  # the iterator ends (and rewinds) at each epoch end
                    loss_value = self._train_one(epoch, images, labels)
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss_value:.4f}")
                    if self.step == self.total_steps:
                        break
        LOG.info("parameter checksum %s after %d steps", parameter_checksum(self.net), self.step)
        final_path = self._save(self.step, epochs - 1, final=True)
        return {"steps": self.step, "loss": loss_value, "checkpoint": final_path,
                "first_step_seconds": self.first_step_seconds}

    def _train_one(self, epoch: int, images: ms.Tensor, labels: ms.Tensor) -> float:
        """One optimisation step plus its bookkeeping (timing, divergence, logs, checkpoints)."""
        loss, finite, scale = self.step_fn(images, labels)
        loss_value, finite_value = float(loss.asnumpy()), bool(finite.asnumpy())
        self.step += 1
        now = time.perf_counter()
        if self.first_step_seconds is None:
            self.first_step_seconds = now - self.last_tick
            LOG.info("first step (graph compile + run) took %.1f s", self.first_step_seconds)
        else:
            self.window.append(now - self.last_tick)
        self.last_tick = now
        self.guard.update(self.step, loss_value, finite_value)
        if self.step % self.cfg.train.log_interval == 0 or self.step == self.total_steps:
            self._report(self.step, epoch, loss_value, float(scale.asnumpy()), finite_value, self.window)
            self.window = []
        if self.step % self.cfg.train.checkpoint_interval == 0 and self.step < self.total_steps:
            self._save(self.step, epoch)
        return loss_value

    def _report(self, step: int, epoch: int, loss: float, scale: float, finite: bool, window: List[float]) -> None:
        seconds = float(np.mean(window)) if window else None  # None: only the compile step so far
        images_per_s = self.cfg.train.batch_size * self.ctx.size / seconds if seconds else None
        lr = float(self.lr[step - 1])
        timing = f"step {seconds:.2f} s {images_per_s:.1f} img/s" if seconds else "(compile step)"
        LOG.info("epoch %d step %d/%d loss %.4f lr %.5f loss_scale %g%s %s", epoch, step, self.total_steps, loss, lr,
                 scale, "" if finite else " (overflow: update skipped)", timing)
        if self.ctx.is_main:
            self._log_metrics({"step": step, "epoch": epoch, "loss": loss, "lr": lr, "loss_scale": scale,
                               "step_seconds": seconds, "images_per_second": images_per_s})
