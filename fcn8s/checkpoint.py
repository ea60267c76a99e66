"""Checkpoint files: names, atomic rank-0 writes, sidecar metadata, retention and loading.

A checkpoint is ``<dir>/fcn8s-step<NNNNNNNN>.ckpt`` (or ``fcn8s-final.ckpt``) holding the network,
the optimiser's momentum and the loss scaler; beside it ``<same>.json`` records step,
epoch, samples consumed in that epoch, config hash, metrics and the file's sha256. The sidecar is
written last, so a checkpoint without one is incomplete and ignored; a checkpoint whose bytes no
longer match the recorded sha256 is corrupt and refused. Only rank 0 calls
:meth:`CheckpointManager.save`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

import mindspore as ms
import mindspore.nn as nn
from mindspore import amp

from fcn8s.data.mindrecord import sha256_file
from fcn8s.errors import UserError
from fcn8s.loss_scale import FixedLossScaler
from fcn8s.optimizer import optimizer_unit

LOG = logging.getLogger(__name__)
PREFIX = "fcn8s"
TEMP_PREFIX = ".tmp-"  # + writer pid + "-" + final name, renamed when complete
LOSS_SCALE = "loss_scale"
LOSS_SCALE_COUNTER = "loss_scale_counter"
MOMENT_UNIT = "moment_unit"  # the optimizer's gradient unit (fcn8s/optimizer.py); absent in older files: 1


def sidecar_path(ckpt_path: str) -> str:
    return ckpt_path[: -len(".ckpt")] + ".json"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: str, payload: Dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Saves and prunes checkpoints in one directory.

    Keeps the newest ``keep`` step checkpoints plus the one with the best ``mean_iou`` in its
    sidecar metrics (when periodic evaluation records one); the final checkpoint is never pruned.
    """

    def __init__(self, directory: str, keep: int, config_digest: str) -> None:
        self.directory = directory
        self.keep = keep
        self.config_digest = config_digest

    def path_for(self, step: Optional[int]) -> str:
        name = f"{PREFIX}-final.ckpt" if step is None else f"{PREFIX}-step{step:08d}.ckpt"
        return os.path.join(self.directory, name)

    def save(self, params: List[Dict[str, object]], step: int, position: Dict[str, int], final: bool = False,
             metrics: Optional[Dict[str, object]] = None) -> str:
        """Write params atomically (temp file, fsync, rename), then the sidecar; prune old ones.

        ``position`` says where training stands (epoch, samples consumed in it, global batch) so
        that a resumed run continues with the next unseen sample.
        """
        os.makedirs(self.directory, exist_ok=True)
        self._remove_abandoned_temp_files()
        path = self.path_for(None if final else step)
        tmp = os.path.join(self.directory, f"{TEMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")
        ms.save_checkpoint(params, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        _write_json_atomic(sidecar_path(path), {
            "step": step, **position, "final": final, "config_digest": self.config_digest,
            "metrics": metrics or {}, "sha256": sha256_file(path), "file": os.path.basename(path)})
        LOG.info("saved checkpoint %s (step %d)", path, step)
        if not final:
            self._prune()
        return path

    def _remove_abandoned_temp_files(self) -> None:
        """Delete half-written checkpoints of writers that died (e.g. killed during a save before a restart)."""
        for name in os.listdir(self.directory):
            pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
            if name.startswith(TEMP_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                os.remove(os.path.join(self.directory, name))
                LOG.warning("removed %s, left by a checkpoint write that did not finish", name)

    def complete(self, include_final: bool = False) -> List[Dict[str, object]]:
        """Sidecars of complete checkpoints (step ones, optionally the final one), oldest first."""
        found = []
        if not os.path.isdir(self.directory):
            return found
        for name in os.listdir(self.directory):
            if name.startswith(PREFIX) and name.endswith(".json") and (include_final or "-step" in name):
                meta = read_sidecar(os.path.join(self.directory, name[: -len(".json")] + ".ckpt"))
                if meta is not None:
                    found.append(meta)
        return sorted(found, key=lambda meta: (meta["step"], meta["final"]))

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint whose contents match its recorded sha256 (corrupt ones are skipped)."""
        for meta in reversed(self.complete(include_final=True)):
            path = os.path.join(self.directory, str(meta["file"]))
            if sha256_file(path) == meta["sha256"]:
                return path
            LOG.warning("skipping corrupt checkpoint %s (sha256 differs from its sidecar)", path)
        return None

    def _prune(self) -> None:
        metas = self.complete()
        scored = [meta for meta in metas if isinstance(meta["metrics"].get("mean_iou"), float)]
        best = max(scored, key=lambda meta: meta["metrics"]["mean_iou"], default=None)
        for meta in metas[: -self.keep]:
            if meta is not best:
                path = os.path.join(self.directory, str(meta["file"]))
                os.remove(sidecar_path(path))
                os.remove(path)


def read_sidecar(ckpt_path: str) -> Optional[Dict[str, object]]:
    """The sidecar of a complete checkpoint, or None (no sidecar, unreadable, or its file is missing)."""
    try:
        with open(sidecar_path(ckpt_path), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not {"step", "file", "sha256"} <= set(meta):
        return None
    return meta if os.path.isfile(ckpt_path) else None


def training_state(net: nn.Cell, optimizer: nn.Optimizer, scaler: amp.DynamicLossScaler) -> List[Dict[str, object]]:
    """Everything needed to continue training: network, momentum (and its unit), loss scaler.

    The optimiser's schedule position is not saved: it is the training step (the sidecar's ``step``).
    """
    params = [{"name": p.name, "data": p} for p in net.get_parameters()]
    params += [{"name": p.name, "data": p} for p in optimizer.moments]
    params.append({"name": MOMENT_UNIT, "data": ms.Tensor(optimizer_unit(optimizer), ms.float32)})
    params.append({"name": LOSS_SCALE, "data": scaler.scale_value})
    params.append({"name": LOSS_SCALE_COUNTER, "data": scaler.counter})
    return params


def read_checkpoint(path: str, what: str = "checkpoint") -> Dict[str, ms.Parameter]:
    """name -> parameter of a MindSpore checkpoint; a missing or unreadable file is a UserError.

    ``what`` names the file in the "not found" message (e.g. "pretrained checkpoint").
    """
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        return ms.load_checkpoint(path)
    except (RuntimeError, ValueError, OSError) as err:
        raise UserError(f"{path}: not a readable MindSpore checkpoint ({str(err).splitlines()[0]})") from None


def _require(path: str, params: Dict[str, ms.Parameter], expected: Dict[str, ms.Parameter], what: str) -> None:
    """Every expected parameter present with the expected shape, else a UserError naming the file."""
    missing = sorted(set(expected) - set(params))
    if missing:
        raise UserError(f"{path}: missing {len(missing)} {what} parameter(s), e.g. {missing[0]} "
                        "(not an FCN-8s checkpoint of this project?)")
    for name, param in expected.items():
        if tuple(params[name].shape) != tuple(param.shape):
            raise UserError(f"{path}: parameter {name} has shape {tuple(params[name].shape)}, the network "
                            f"expects {tuple(param.shape)} (different num_classes or architecture?)")


def load_weights(net: nn.Cell, path: str) -> None:
    """Load network weights from ``path``; a missing file, bad file or wrong shapes is a UserError."""
    params = read_checkpoint(path)
    expected = net.parameters_dict()
    _require(path, params, expected, "network")
    ms.load_param_into_net(net, {name: params[name] for name in expected}, strict_load=True)


def restore_training_state(path: str, net: nn.Cell, optimizer: nn.Optimizer,
                           scaler: amp.DynamicLossScaler) -> Dict[str, object]:
    """Load weights, momentum and loss scaler from a checkpoint written by training; the optimiser's
    schedule position becomes the checkpoint's training step (older files also hold a ``global_step``,
    which lagged behind after skipped updates; it is ignored).

    The momentum is converted to the optimizer's gradient unit if the file's differs (another loss scale
    type, scale or number of ranks); a fixed loss scale stays the configured one.
    Verifies the file against its sidecar's sha256 first; returns the sidecar (step, epoch, ...).
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    meta = read_sidecar(path)
    if meta is None:
        raise UserError(f"{path}: no readable sidecar {os.path.basename(sidecar_path(path))} - not a complete "
                        "checkpoint written by fcn8s.train, so it cannot be resumed (use it as weights instead)")
    if sha256_file(path) != meta["sha256"]:
        raise UserError(f"{path}: corrupt checkpoint (its sha256 differs from the one recorded in its sidecar)")
    params = read_checkpoint(path)
    moments = {p.name: p for p in optimizer.moments}
    scaler_state = {LOSS_SCALE_COUNTER: scaler.counter}
    if not isinstance(scaler, FixedLossScaler):
        scaler_state[LOSS_SCALE] = scaler.scale_value
    _require(path, params, net.parameters_dict(), "network")
    _require(path, params, {**moments, **scaler_state}, "optimizer/loss-scale")
    ms.load_param_into_net(net, {name: params[name] for name in net.parameters_dict()}, strict_load=True)
    saved_unit = float(params[MOMENT_UNIT].asnumpy()) if MOMENT_UNIT in params else 1.0
    to_unit = optimizer_unit(optimizer) / saved_unit
    for name, param in moments.items():
        value = params[name].asnumpy()
        param.set_data(ms.Tensor(value if to_unit == 1.0 else value * to_unit, param.dtype))
    for name, param in scaler_state.items():
        param.set_data(ms.Tensor(params[name].asnumpy(), param.dtype))
    optimizer.global_step.set_data(ms.Tensor([int(meta["step"])], optimizer.global_step.dtype))
    return meta
