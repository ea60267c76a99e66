"""The train step (dynamic loss scaling, gradient all-reduce) and the training loop.

Step order (as mindcv's TrainStep, but functional so it runs on CPU and Ascend alike):
scaled loss -> grads -> mean over ranks -> unscale -> overflow check agreed by all ranks -> update only if
finite (a skipped step still advances the learning-rate schedule) -> adjust the loss scale.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import mindspore as ms
import mindspore.dataset as ds
import mindspore.nn as nn
from mindspore import amp, ops

from fcn8s.checkpoint import CheckpointManager, restore_training_state, training_state
from fcn8s.config import Config
from fcn8s.data.normalize import TrainInput
from fcn8s.data.pipeline import create_train_dataset
from fcn8s.data.sampling import steps_in_epoch
from fcn8s.distributed import DistContext, float_sum_across_ranks, gather_floats, sum_across_ranks
from fcn8s.errors import UserError
from fcn8s.evaluation import class_names, evaluate
from fcn8s.faults import FaultInjector
from fcn8s.grad_buckets import gradient_reducer, set_backend_fusion
from fcn8s.heartbeat import Heartbeat
from fcn8s.inference import Predictor
from fcn8s.metrics import summarize
from fcn8s.optimizer import UnitMomentum, gradient_unit, optimizer_unit
from fcn8s.loss_scale import FixedLossScaler, LossScaler, build_loss_scaler
from fcn8s.losses import SegmentationCrossEntropy
from fcn8s.preemption import StopRequest, TrainingInterrupted
from fcn8s.sink import sink_plan, sink_steps
from fcn8s.stragglers import StragglerMonitor
from fcn8s.tensorboard_log import ScalarWriter

LOG = logging.getLogger(__name__)


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


def _as_is(images: ms.Tensor, labels: ms.Tensor) -> Tuple[ms.Tensor, ms.Tensor]:
    """Input preparation for batches that are already network input and targets."""
    return images, labels


_times = ops.MultitypeFuncGraph("times")


@_times.register("Tensor", "Tensor")
def _times_tensor(factor: ms.Tensor, grad: ms.Tensor) -> ms.Tensor:
    return grad * factor.astype(grad.dtype)


class StepStats(nn.Cell):
    """Device-side counters the host reads at sync intervals, not per step: the current run of bad steps
    (update skipped or loss non-finite) and the longest run since the last read."""

    def __init__(self) -> None:
        super().__init__(auto_prefix=False)
        self.bad_run = ms.Parameter(ms.Tensor(0, ms.int32), name="stats.bad_run", requires_grad=False)
        self.worst_run = ms.Parameter(ms.Tensor(0, ms.int32), name="stats.worst_run", requires_grad=False)

    def construct(self, good: ms.Tensor) -> ms.Tensor:
        run = ops.select(good, ops.zeros_like(self.bad_run), self.bad_run + 1)
        ops.assign(self.bad_run, run)
        return ops.assign(self.worst_run, ops.maximum(self.worst_run, run))

    def read(self) -> Tuple[int, int]:
        """(current bad run, longest since the last read); starts the next reading period."""
        current, worst = int(self.bad_run.asnumpy()), int(self.worst_run.asnumpy())
        self.worst_run.set_data(ms.Tensor(current, ms.int32))
        return current, worst


class TrainStep:
    """``step(images, labels) -> (loss, finite, loss_scale, lr)``, also callable in two halves.

    ``local(images, labels) -> (scaled_loss, grads)`` is this rank's own work (no communication);
    ``apply(scaled_loss, grads)`` does the rest: sum over ranks (in buckets) -> unscale and mean in one pass ->
    overflow check agreed by all ranks -> update only if finite -> adjust the loss scale. Timing ``local`` tells
    a slow rank from the ranks that wait for it in the all-reduce (see :mod:`fcn8s.stragglers`). Calling the step
    itself runs both halves as one fused graph; the results are bit-identical. Each graph compiles when first
    called. ``stats`` (:class:`StepStats`) counts bad steps on the device; ``sinkable`` is the fused step not
    yet compiled, for ``mindspore.data_sink``.
    """

    def __init__(self, local: Callable, apply: Callable, fused: Callable, sinkable: Callable,
                 stats: StepStats) -> None:
        self.local, self.apply, self._fused, self.sinkable, self.stats = local, apply, fused, sinkable, stats

    def __call__(self, images: ms.Tensor, labels: ms.Tensor) -> Tuple[ms.Tensor, ...]:
        return self._fused(images, labels)


def make_train_step(net: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, scaler: LossScaler,
                    ranks: int = 1, prepare: Callable = _as_is, jit: bool = True, bucket_mb: float = 0.0
                    ) -> TrainStep:
    """Build the :class:`TrainStep` ``step(images, labels) -> (loss, finite, loss_scale, lr)`` for one of
    ``ranks`` data-parallel ranks.

    Gradients are averaged over the ranks: summed in all-reduce buckets of ``bucket_mb``
    (:mod:`fcn8s.grad_buckets`; 0 = one bucket), then multiplied by 1 / (loss scale x ranks): the unscale and
    the mean in one pass. With a fixed scale and an optimizer in that unit (the trainer's
    :class:`fcn8s.optimizer.UnitMomentum` of :func:`fcn8s.optimizer.gradient_unit`) not even that: the optimizer
    takes the sums. Each rank's gradient is that of its own mean loss over its valid pixels, as in PyTorch's DDP.
    With a dynamic ``scaler`` the update is skipped when any rank sees an overflow (a non-finite loss or mean
    gradient): the flag is all-reduced, as in MindSpore's ``TrainOneStepWithLossScaleCell``, because on Ascend
    910A ``amp.all_finite`` reads the device's own float status, which may differ between ranks. With a
    :class:`FixedLossScaler` (the zoo's recipe) there is no overflow check: every update is applied and
    ``finite`` is the loss's on every rank.
    ``lr`` is the rate the optimizer applies to the mean gradient (read in the graph); a skipped step still moves
    the optimizer's schedule position on, so that position is the training step. ``prepare`` turns the
    pipeline's batch into network input and loss targets inside the graph (the trainer passes
    :class:`TrainInput`, which normalises the pipeline's uint8 crops).
    """
    unit = optimizer_unit(optimizer)
    in_unit = isinstance(scaler, FixedLossScaler) and unit == gradient_unit(scaler, ranks)  # the sums already are
    sum_grads = gradient_reducer(optimizer.parameters, ranks, bucket_mb) if ranks > 1 else _no_reduction
    sum_flags = ops.AllReduce() if ranks > 1 else None
    one_step = ms.Tensor([1], optimizer.global_step.dtype)
    times = ops.HyperMap()
    stats = StepStats()
    check_overflow = not isinstance(scaler, FixedLossScaler)

    def forward(images: ms.Tensor, labels: ms.Tensor) -> ms.Tensor:
        return scaler.scale(loss_fn(net(images), labels))

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    def local(images: ms.Tensor, labels: ms.Tensor) -> Tuple[ms.Tensor, Tuple[ms.Tensor, ...]]:
        images, labels = prepare(images, labels)
        scaled_loss, grads = grad_fn(images, labels)
        return ops.depend(scaled_loss, grads), grads  # the loss is ready once every gradient is: a cheap wait

    def all_ranks_finite(finite: ms.Tensor) -> ms.Tensor:
        if sum_flags is None:
            return finite
        return sum_flags(ops.logical_not(finite).astype(ms.float32)) == 0

    def apply(scaled_loss: ms.Tensor, grads: Tuple[ms.Tensor, ...]) -> Tuple[ms.Tensor, ...]:
        grads = sum_grads(grads)
        loss = scaled_loss * ops.reciprocal(scaler.scale_value)
        lr = optimizer.get_lr() * unit
        if not in_unit:
            grads = times(ops.partial(_times, unit * ops.reciprocal(scaler.scale_value * ranks)), grads)
        if check_overflow:
            finite = all_ranks_finite(ops.logical_and(amp.all_finite(grads), ops.isfinite(loss)))
            if finite:
                optimizer(grads)
            else:
                ops.assign_add(optimizer.global_step, one_step)
        else:
            finite = all_ranks_finite(ops.isfinite(loss))
            optimizer(grads)
        scaler.adjust(finite)
        stats(finite)
        return loss, finite, scaler.scale_value.value(), lr

    def step(images: ms.Tensor, labels: ms.Tensor) -> Tuple[ms.Tensor, ...]:
        scaled_loss, grads = local(images, labels)
        return apply(scaled_loss, grads)

    compile_ = ms.jit if jit else (lambda fn: fn)
    return TrainStep(compile_(local), compile_(apply), compile_(step), step, stats)


def parameter_checksum(net: nn.Cell) -> str:
    """sha256 (16 hex digits) of the trainable weights: equal on every rank of a correct job.

    BatchNorm running statistics are excluded: each rank keeps its own between evaluations and checkpoints
    (see :func:`average_batchnorm_statistics`).
    """
    digest = hashlib.sha256()
    for param in net.trainable_params():
        digest.update(param.name.encode())
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()[:16]


def average_batchnorm_statistics(net: nn.Cell, ctx: DistContext) -> None:
    """Set every rank's BatchNorm moving mean and variance to their mean over the ranks (one collective).

    Each rank's statistics follow its own batches (no SyncBN). Averaging them before an evaluation or a
    checkpoint makes the weights every rank evaluates the weights rank 0 saves; the mean of the ranks' running
    estimates is an estimate over the global batch. Training is unaffected: BatchNorm in training mode
    normalises with the batch's own statistics.
    """
    if not ctx.distributed:
        return
    stats = [p for p in net.get_parameters() if p.name.endswith((".moving_mean", ".moving_variance"))]
    flat = float_sum_across_ranks(np.concatenate([p.asnumpy().ravel() for p in stats]), ctx) / ctx.size
    offset = 0
    for param in stats:
        param.set_data(ms.Tensor(flat[offset:offset + param.size].reshape(param.shape), param.dtype))
        offset += param.size


@dataclass
class DivergenceGuard:
    """Stops at ``limit`` bad steps in a row (non-finite loss or skipped update), counted on the device by
    :class:`StepStats` and checked when the host reads it (every sync interval)."""

    limit: int
    stats: StepStats

    def check(self, step: int) -> None:
        _current, worst = self.stats.read()
        if worst >= self.limit:
            raise TrainingDiverged(
                f"training diverged at step {step}: {worst} consecutive steps with a non-finite loss or gradient "
                "(lower train.lr or check the data); the last good checkpoint is kept")

    def in_bad_run(self) -> bool:
        """The last step was bad (a checkpoint now would replace a good one with a bad one)."""
        return int(self.stats.bad_run.asnumpy()) > 0


@dataclass
class StepResult:
    """One step's outputs, read to the host (at log, sync and bookkeeping steps only)."""

    loss: float  # this rank's loss
    finite: bool  # the update was applied (the same on every rank)
    loss_scale: float  # after this step's adjustment
    lr: float  # the learning rate of this step (what the optimizer applied, unless the step was skipped)

    @classmethod
    def read(cls, outputs: Tuple[ms.Tensor, ...]) -> "StepResult":
        """Wait for the step and copy its outputs to the host."""
        loss, finite, scale, lr = (output.asnumpy() for output in outputs)
        return cls(float(loss), bool(finite), float(scale), float(lr))


class StepClock:
    """Wall seconds per training step (waiting for the batch + the step), without evaluation, checkpoint
    writes and reports: :meth:`lap` after a step, :meth:`restart` after the bookkeeping that follows it."""

    def __init__(self) -> None:
        self.tick = time.perf_counter()

    def restart(self) -> None:
        self.tick = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.tick = now - self.tick, now
        return seconds


@dataclass
class Interval:
    """The steps since the last report: wall seconds of each counted step, and this rank's own work on the
    interval's straggler-timed step."""

    seconds: List[float] = field(default_factory=list)
    own_seconds: Optional[float] = None


class Trainer:
    """Runs the training loop for one rank; rank 0 logs metrics and writes checkpoints.

    Training position = (global step, epoch, samples of the epoch consumed); it is saved with each
    checkpoint and :meth:`resume` restores it with the weights, momentum and loss scaler, so a
    resumed run computes the same steps as an uninterrupted one. The optimizer's learning-rate schedule
    position is the global step.

    Loop: :meth:`fit` -> per batch :meth:`_train_one` = :meth:`_step` (the step, its timing, the position)
    -> divergence check -> :meth:`_report` (log interval) -> :meth:`_evaluate_or_checkpoint` -> fault drill.
    """

    def __init__(self, cfg: Config, ctx: DistContext, net: nn.Cell, num_samples: int,
                 device_target: str = "CPU") -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.net = net
        self.num_samples = num_samples
        tcfg = cfg.train
        self.global_batch = tcfg.batch_size * ctx.size
        self.steps_per_epoch = steps_in_epoch(num_samples, 0, tcfg.batch_size, ctx.size)
        self.total_steps = tcfg.max_steps or tcfg.epochs * self.steps_per_epoch
        self.lr = cosine_lr(tcfg.lr, tcfg.min_lr, self.total_steps)
        self.scaler = build_loss_scaler(cfg.loss_scale)
        self.optimizer = UnitMomentum(net.trainable_params(), self.lr, tcfg.momentum, tcfg.weight_decay,
                                      gradient_unit(self.scaler, ctx.size))
        loss_fn = SegmentationCrossEntropy(cfg.model.num_classes, cfg.data.ignore_label)
        if ctx.size > 1:
            set_backend_fusion(cfg.dist.comm_fusion, device_target)
        self.step_fn = make_train_step(net, loss_fn, self.optimizer, self.scaler, ctx.size,
                                       TrainInput.from_config(cfg), jit=cfg.run.mode == "graph",
                                       bucket_mb=cfg.dist.bucket_mb)
        self.sync_interval = tcfg.sync_interval or tcfg.log_interval
        self.sink_size = sink_plan(cfg, device_target, self.steps_per_epoch, ctx.distributed)
        self.sink_run: Optional[Callable[[], Tuple[ms.Tensor, ...]]] = None  # this epoch's sink (see _calls)
        # MindSpore's CPU runtime runs steps ~2.5x slower when the host queues the next one before the last
        # has finished (benchmarks/host_overhead.py): on CPU the host waits for each step, elsewhere it does not.
        self.wait_each_step = device_target == "CPU"
        LOG.info("host reads the device every %d step(s) (train.sync_interval); %s", self.sync_interval,
                 "waits for each step (CPU)" if self.wait_each_step else "does not wait for the steps in between")
        self.checkpoints = CheckpointManager(os.path.join(cfg.run.output_dir, "checkpoints"),
                                             tcfg.keep_checkpoints, cfg.digest())
        self.guard = DivergenceGuard(tcfg.max_bad_steps, self.step_fn.stats)
        self.step, self.epoch, self.consumed = 0, 0, 0
        self.saved_step: Optional[int] = None
        self.averaged_step: Optional[int] = None  # BatchNorm statistics last averaged over ranks after this step
        self.metrics_path = os.path.join(cfg.run.output_dir, "metrics.jsonl")
        self.tensorboard = (ScalarWriter(cfg.run.output_dir, class_names(cfg.model.num_classes))
                            if cfg.run.tensorboard and ctx.is_main else None)
        self.heartbeat = Heartbeat()
        self.faults = FaultInjector(int(ctx.rank or 0))
        # Several ranks: once per log interval one step runs as two halves, and this rank's own work on it
        # (batch fetch + local half) is compared across ranks. Other steps run fused (the halves wait for the
        # host and, on Ascend, cannot overlap the all-reduce with the backward pass).
        self.stragglers = (StragglerMonitor(ctx, tcfg.straggler_factor, tcfg.straggler_intervals, LOG)
                           if ctx.distributed and tcfg.straggler_intervals else None)
        self.clock = StepClock()
        self.interval = Interval()
        self.first_step_seconds: Optional[float] = None
        self.fetch_seconds = 0.0
        self.halves_compiled = False

    def resume(self, path: str) -> None:
        """Continue from a checkpoint written by training (weights, momentum, loss scaler, position)."""
        meta = restore_training_state(path, self.net, self.optimizer, self.scaler)
        self.step, self.epoch, self.consumed = int(meta["step"]), int(meta["epoch"]), int(meta["consumed"])
        if steps_in_epoch(self.num_samples, self.consumed, self.cfg.train.batch_size, self.ctx.size) == 0:
            self.epoch, self.consumed = self.epoch + 1, 0
        self.saved_step = self.step
        if meta.get("config_digest") != self.cfg.digest():
            LOG.warning("resuming with a configuration that differs from the checkpoint's (%s)", path)
        if meta.get("global_batch") != self.global_batch:
            LOG.warning("global batch changed from %s to %d: continuing at sample %d of epoch %d",
                        meta.get("global_batch"), self.global_batch, self.consumed, self.epoch)
        if sum_across_ranks(np.array([self.step]), self.ctx)[0] != self.step * self.ctx.size:
            raise UserError(f"ranks resumed from different steps ({path} here): --resume needs run.output_dir on "
                            "storage shared by all nodes, or the same checkpoint path on every node")
        if self.ctx.is_main:
            self._truncate_metrics(self.step)
            if self.tensorboard:
                self.tensorboard.resume(self.step)
        LOG.info("resumed from %s at step %d (epoch %d, %d samples of it done), loss scale %g", path, self.step,
                 self.epoch, self.consumed, float(self.scaler.scale_value.asnumpy()))

    def _truncate_metrics(self, step: int) -> None:
        """Drop records of steps after ``step`` (logged by the interrupted run after its checkpoint)."""
        if not os.path.isfile(self.metrics_path):
            return
        with open(self.metrics_path, encoding="utf-8") as handle:
            kept = [line for line in handle if line.strip() and json.loads(line)["step"] <= step]
        with open(self.metrics_path, "w", encoding="utf-8") as handle:
            handle.writelines(kept)

    def _log_metrics(self, record: Dict[str, object]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard:
            self.tensorboard.write_train(record)

    def _average_batchnorm(self) -> None:
        """Average BatchNorm statistics over ranks, once per step (a collective: every rank calls it)."""
        if self.averaged_step != self.step:
            average_batchnorm_statistics(self.net, self.ctx)
            self.averaged_step = self.step

    def _save(self, final: bool = False, metrics: Optional[Dict[str, object]] = None) -> Optional[str]:
        """Rank 0 writes the current state (no-op elsewhere, and if this step is already saved).

        Every rank calls it: the BatchNorm statistics saved are the mean over ranks. Every rank reports the
        "save" phase: the others wait for rank 0's write in their next collective.
        """
        if (self.saved_step == self.step or self.guard.in_bad_run()) and not final:  # keep the last good one
            return None
        self.saved_step = self.step
        self.heartbeat.beat("save")
        self._average_batchnorm()
        if not self.ctx.is_main:
            return None
        position = {"epoch": self.epoch, "consumed": self.consumed, "global_batch": self.global_batch,
                    "ranks": self.ctx.size}
        try:
            return self.checkpoints.save(training_state(self.net, self.optimizer, self.scaler), self.step, position,
                                         final=final, metrics=metrics)
        finally:
            self.heartbeat.beat("step")

    def _evaluate(self) -> Dict[str, object]:
        """Val metrics of the current weights (every rank scores its share; BN in inference mode).

        The whole evaluation reports the busy "eval" phase, renewed after each batch and kept while
        this rank waits for the others in the final sum, so the hang watchdog does not count it.
        """
        cfg = self.cfg
        self.heartbeat.beat("eval")
        LOG.info("evaluating at step %d (%d px canvas)", self.step, cfg.eval.image_size)
        started = time.perf_counter()
        predictor = Predictor(self.net, cfg.eval.image_size, cfg.data.image_mean, cfg.data.image_std)
        try:
            self.faults.slow_evaluation(self.step)
            hist = evaluate(cfg, self.ctx, predictor, progress=lambda _scored: self.heartbeat.beat("eval"))
            summary = summarize(sum_across_ranks(hist, self.ctx))
            if self.tensorboard:
                self.tensorboard.write_eval(self.step, summary)
        finally:
            self.net.set_train(True)
            self.heartbeat.beat("step")
        keys = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")
        LOG.info("val at step %d: %s (eval took %.1f s)", self.step,
                 ", ".join(f"{key} {summary[key]:.4f}" for key in keys), time.perf_counter() - started)
        return {key: summary[key] for key in keys}

    def fit(self) -> Dict[str, object]:
        """Train up to ``total_steps``; returns a summary (final checkpoint path, last loss, timing).

        Raises :class:`TrainingInterrupted` after saving if SIGTERM/SIGINT arrived.
        """
        tcfg = self.cfg.train
        LOG.info("training steps %d..%d (%d step(s) per epoch), global batch %d = %d x %d rank(s), lr %.4g -> %.4g",
                 self.step + 1, self.total_steps, self.steps_per_epoch, self.global_batch, tcfg.batch_size,
                 self.ctx.size, tcfg.lr, tcfg.min_lr)
        if self.step >= self.total_steps:
            LOG.info("already trained %d of %d steps: nothing to do", self.step, self.total_steps)
            return {"steps": self.step, "loss": float("nan"), "checkpoint": self.checkpoints.path_for(None),
                    "first_step_seconds": None}
        self.net.set_train(True)
        self.heartbeat.beat("start", self.step)
        progress = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (self.ctx.is_main and sys.stderr.isatty()))
        loss_value = float("nan")
        with logging_redirect_tqdm(), progress, StopRequest() as stop:
            while self.step < self.total_steps:
                dataset = create_train_dataset(self.cfg, self.ctx.rank, self.ctx.size, self.epoch, self.consumed)
                self.clock.restart()
                for images, labels in self._calls(dataset):
                    result = self._train_one(images, labels)
                    progress.update(self.sink_size or 1)
                    if result is not None:
                        loss_value = result.loss
                        progress.set_postfix(loss=f"{loss_value:.4f}")
                    signum = stop.agreed(self.ctx) if self._due(self.sync_interval) else None
                    if signum is not None:
                        path = self._save()
                        self._barrier()
                        raise TrainingInterrupted(signum, self.step, path)
                    if self.step == self.total_steps:
                        break
        LOG.info("parameter checksum %s after %d steps", parameter_checksum(self.net), self.step)
        final_path = self._save(final=True)
        self._barrier()
        self.heartbeat.beat("done")
        return {"steps": self.step, "loss": loss_value, "checkpoint": final_path,
                "first_step_seconds": self.first_step_seconds}

    def _calls(self, dataset: ds.Dataset) -> Iterator[Tuple[Optional[ms.Tensor], Optional[ms.Tensor]]]:
        """The rest of this epoch as step calls: ``(images, labels)`` per step, or with a data sink
        ``(None, None)`` per sink (``self.sink_run`` then runs ``sink_size`` steps on the device's queue)."""
        if not self.sink_size:
            yield from self._timed_batches(dataset.create_tuple_iterator(num_epochs=1))
            return
        self.sink_run = sink_steps(self.step_fn.sinkable, dataset, self.sink_size)
        left = steps_in_epoch(self.num_samples, self.consumed, self.cfg.train.batch_size, self.ctx.size)
        for _ in range(left // self.sink_size):
            yield None, None

    def _due(self, interval: int) -> bool:
        """The current step ends an ``interval`` (or the training)."""
        return bool(interval) and self.step % interval == 0 or self.step == self.total_steps

    def _timed_batches(self, batches: Iterator) -> Iterator:
        """The batches of ``batches``; ``self.fetch_seconds`` = how long this rank waited for the last one."""
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.fetch_seconds = time.perf_counter() - start
            yield batch

    def _barrier(self) -> None:
        """Wait for every rank (so none exits while rank 0 is still writing a checkpoint)."""
        sum_across_ranks(np.zeros(1, np.int64), self.ctx)

    def _advance(self, steps: int) -> None:
        """Move the training position past ``steps`` global batches (to the next epoch when it is used up)."""
        for _ in range(steps):
            self.step += 1
            self.consumed += self.global_batch
            if steps_in_epoch(self.num_samples, self.consumed, self.cfg.train.batch_size, self.ctx.size) == 0:
                self.epoch, self.consumed = self.epoch + 1, 0

    def _train_one(self, images: Optional[ms.Tensor], labels: Optional[ms.Tensor]) -> Optional[StepResult]:
        """One optimisation step (or sink) and its bookkeeping: divergence check (sync interval), report (log
        interval), evaluation or checkpoint, drill. Returns the step's outputs if the host read them.

        The bookkeeping is not counted in the step times (the clock restarts after it).
        """
        epoch = self.epoch
        result = self._step(images, labels)
        if self._due(self.sync_interval):
            self.guard.check(self.step)
        if self._due(self.cfg.train.log_interval):
            self._report(epoch, result)
        self._evaluate_or_checkpoint()
        self.faults.after_step(self.step)
        self.heartbeat.beat("step", self.step)  # last: a rank stuck in this step's bookkeeping stays behind
        self.clock.restart()
        return result

    def _reads_device(self) -> bool:
        """The host needs this step's outputs: to log, sync, evaluate or checkpoint after it."""
        tcfg = self.cfg.train
        return any(self._due(interval) for interval in (tcfg.log_interval, self.sync_interval, tcfg.eval_interval,
                                                          tcfg.checkpoint_interval))

    def _step(self, images: Optional[ms.Tensor], labels: Optional[ms.Tensor]) -> Optional[StepResult]:
        """Run the next step (or sink), advance the position and record its time (compile steps are not
        counted); the outputs are read to the host only where :meth:`_reads_device` (or the timing) needs them.

        Between reads the host does not wait for the device (except on CPU, see ``wait_each_step``): a step's
        time is then its share of the interval up to the next read, which waits for every step before it.
        """
        # The same steps on every rank: the first of each log interval after the compile step (the first
        # such step compiles the halves and is not counted either), and the overflow drill's step.
        sunk = images is None
        timed = not sunk and self.stragglers is not None and self.first_step_seconds is not None and \
            self.interval.own_seconds is None
        warmup = timed and not self.halves_compiled
        drill = not sunk and self.faults.overflow_drill(self.step + 1)
        self.heartbeat.beat("compile" if self.first_step_seconds is None or warmup else "run")
        own_seconds = None
        if timed or drill:
            outputs, own_seconds = self._halves(images, labels, self.faults.overflows_here(self.step + 1))
        else:
            outputs = self.sink_run() if sunk else self.step_fn(images, labels)
        steps = self.sink_size if sunk else 1
        self._advance(steps)
        read = self.first_step_seconds is None or timed or drill or self._reads_device()
        result = StepResult.read(outputs) if read else None
        if result is None and self.wait_each_step:
            outputs[0].asnumpy()
        seconds = self.clock.lap() / steps
        if self.first_step_seconds is None:
            self.first_step_seconds = seconds
            LOG.info("first step (graph compile + run) took %.1f s", seconds)
        elif warmup:
            self.halves_compiled = True
            LOG.info("first timed step (straggler check: step halves compile + run) took %.1f s", seconds)
        else:
            self.interval.seconds.append(seconds)
            if timed:
                self.interval.own_seconds = own_seconds
        return result

    def _halves(self, images: ms.Tensor, labels: ms.Tensor, overflow: bool) -> Tuple[Tuple[ms.Tensor, ...], float]:
        """The step as its two halves, and this rank's own work: batch fetch + local half, in seconds.

        ``overflow`` (the fault drill): this rank hands a non-finite loss to the second half.
        """
        start = time.perf_counter()
        scaled_loss, grads = self.step_fn.local(images, labels)
        scaled_loss.asnumpy()  # graphs run asynchronously (CPU too): wait for this rank's local half to finish
        own_seconds = self.fetch_seconds + time.perf_counter() - start
        if overflow:
            scaled_loss = ms.Tensor(np.full(scaled_loss.shape, np.inf, np.float32), scaled_loss.dtype)
        # mutable: apply is compiled once, not per call
        return self.step_fn.apply(scaled_loss, ms.mutable(grads)), own_seconds

    def _evaluate_or_checkpoint(self) -> None:
        """Periodic evaluation (then a checkpoint recording its metrics) or checkpoint; the final one is fit's."""
        tcfg = self.cfg.train
        if self.step >= self.total_steps:
            return
        if tcfg.eval_interval and self.step % tcfg.eval_interval == 0:
            self._average_batchnorm()  # the weights evaluated on every rank are the weights rank 0 saves
            self._save(metrics=self._evaluate())
        elif self.step % tcfg.checkpoint_interval == 0:
            self._save()

    def _report(self, epoch: int, result: StepResult) -> None:
        """Log the interval (every rank) and append it to metrics.jsonl (rank 0); a collective when distributed.

        The loss logged is the mean of the ranks' losses at this step (one gather per log interval).
        """
        window = self.interval.seconds
        seconds = float(np.mean(window)) if window else None  # None: only the compile step so far
        images_per_s = self.global_batch / seconds if seconds else None
        rank_losses = gather_floats(result.loss, self.ctx).astype(np.float64)
        loss = float(np.mean(rank_losses))
        timing = f"step {seconds:.2f} s {images_per_s:.1f} img/s" if seconds else "(compile step)"
        LOG.info("epoch %d step %d/%d loss %.4f%s lr %.5f loss_scale %g%s %s", epoch, self.step, self.total_steps,
                 loss, f" (this rank {result.loss:.4f})" if self.ctx.distributed else "", result.lr,
                 result.loss_scale, "" if result.finite else " (overflow: update skipped)", timing)
        across: Dict[str, object] = {}
        if self.ctx.distributed:
            across["rank_losses"] = [float(value) for value in rank_losses]
        if self.stragglers is not None and self.interval.own_seconds is not None:  # same on every rank: all join in
            across.update(self.stragglers.interval(self.interval.own_seconds))
        if self.ctx.is_main:
            self._log_metrics({"step": self.step, "epoch": epoch, "loss": loss, "lr": result.lr,
                               "loss_scale": result.loss_scale, "step_seconds": seconds,
                               "images_per_second": images_per_s, **across})
        self.interval = Interval()
