"""Checkpoint files: names, atomic rank-0 writes, sidecar metadata, retention and loading.

A checkpoint is ``<dir>/fcn8s-step<NNNNNNNN>.ckpt`` (or ``fcn8s-final.ckpt``) holding the network,
the optimiser's momentum and step, and the loss scaler; beside it ``<same>.json`` records step,
epoch, config hash, metrics and the file's sha256. The sidecar is written last, so a checkpoint
without one is incomplete and ignored. Only rank 0 calls :meth:`CheckpointManager.save`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

import mindspore as ms
import mindspore.nn as nn

from fcn8s.data.mindrecord import sha256_file
from fcn8s.errors import UserError

LOG = logging.getLogger(__name__)
PREFIX = "fcn8s"


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
    """Saves and prunes checkpoints in one directory (keeps the newest ``keep`` step checkpoints)."""

    def __init__(self, directory: str, keep: int, config_digest: str) -> None:
        self.directory = directory
        self.keep = keep
        self.config_digest = config_digest

    def path_for(self, step: Optional[int]) -> str:
        name = f"{PREFIX}-final.ckpt" if step is None else f"{PREFIX}-step{step:08d}.ckpt"
        return os.path.join(self.directory, name)

    def save(self, params: List[Dict[str, object]], step: int, epoch: int, final: bool = False,
             metrics: Optional[Dict[str, object]] = None) -> str:
        """Write params atomically (temp file, fsync, rename), then the sidecar; prune old ones."""
        os.makedirs(self.directory, exist_ok=True)
        path = self.path_for(None if final else step)
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
        ms.save_checkpoint(params, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        _write_json_atomic(sidecar_path(path), {
            "step": step, "epoch": epoch, "final": final, "config_digest": self.config_digest,
            "metrics": metrics or {}, "sha256": sha256_file(path), "file": os.path.basename(path)})
        LOG.info("saved checkpoint %s (step %d)", path, step)
        if not final:
            self._prune()
        return path

    def complete(self) -> List[Dict[str, object]]:
        """Sidecars of complete step checkpoints, oldest first."""
        found = []
        if not os.path.isdir(self.directory):
            return found
        for name in os.listdir(self.directory):
            if name.startswith(f"{PREFIX}-step") and name.endswith(".json"):
                with open(os.path.join(self.directory, name), encoding="utf-8") as handle:
                    meta = json.load(handle)
                if os.path.isfile(os.path.join(self.directory, meta["file"])):
                    found.append(meta)
        return sorted(found, key=lambda meta: meta["step"])

    def _prune(self) -> None:
        for meta in self.complete()[: -self.keep]:
            path = os.path.join(self.directory, meta["file"])
            os.remove(sidecar_path(path))
            os.remove(path)


def training_state(net: nn.Cell, optimizer: nn.Optimizer, scale_value: float) -> List[Dict[str, object]]:
    """Everything needed to continue training: network, momentum, optimiser step, loss scale."""
    params = [{"name": p.name, "data": p} for p in net.get_parameters()]
    params += [{"name": p.name, "data": p} for p in optimizer.moments]
    params.append({"name": "global_step", "data": optimizer.global_step})
    params.append({"name": "loss_scale", "data": ms.Tensor(scale_value, ms.float32)})
    return params


def load_weights(net: nn.Cell, path: str) -> None:
    """Load network weights from ``path``; a missing file, bad file or wrong shapes is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        params = ms.load_checkpoint(path)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"{path}: not a readable MindSpore checkpoint ({str(err).splitlines()[0]})") from None
    expected = net.parameters_dict()
    missing = sorted(set(expected) - set(params))
    if missing:
        raise UserError(f"{path}: missing {len(missing)} network parameter(s), e.g. {missing[0]}")
    for name, param in expected.items():
        if tuple(params[name].shape) != tuple(param.shape):
            raise UserError(f"{path}: parameter {name} has shape {tuple(params[name].shape)}, the network "
                            f"expects {tuple(param.shape)} (different num_classes or architecture?)")
    ms.load_param_into_net(net, {name: params[name] for name in expected}, strict_load=True)

