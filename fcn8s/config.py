"""Typed configuration: YAML (``yaml.safe_load``) + command-line overrides + validation.

Precedence: ``--set a.b=v`` / ``a.b=v`` on the command line > YAML file > defaults below.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from fcn8s.data.voc import IGNORE_LABEL
from fcn8s.errors import ConfigError

# Set by launchers that run ranks in their own working directories: relative paths in the
# command line and config are resolved against the directory the user launched from.
LAUNCH_DIR_ENV = "FCN8S_LAUNCH_DIR"
FC_CHANNELS = 4096  # the tutorial's conv6/conv7 width (fc6/fc7 of VGG16)


def _range(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False) -> Dict[str, Any]:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


def _choices(*values: str) -> Dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class ModelConfig:
    """Network shape and numerics."""

    num_classes: int = field(default=21, metadata=_range(2, 1000))
    # conv6 (7x7, 512->4096) implementation: 'conv' = nn.Conv2d, 'matmul' = exact im2col of the
    # taps that touch real pixels + one MatMul, 'auto' = matmul on CPU, conv elsewhere.
    conv_impl: str = field(default="auto", metadata=_choices("auto", "conv", "matmul"))
    # conv6/conv7 width. 4096 is the tutorial's network (and what VGG16 fc6/fc7 weights need); the
    # tests shrink it where the network is not under test (conv6/conv7 hold 119.5 M of 134.5 M parameters).
    fc_channels: int = field(default=FC_CHANNELS, metadata=_range(1, 8192))
    # Mixed precision: O0 = float32; O2/O3 = float16 compute (use on Ascend).
    amp_level: str = field(default="O0", metadata=_choices("O0", "O1", "O2", "O3"))
    # ImageNet VGG16-BN checkpoint (model-zoo or mindcv names) for the backbone; "" = from scratch.
    pretrained: str = ""


@dataclass(frozen=True)
class DataConfig:
    """Where the MindRecord files are and how samples are augmented."""

    mindrecord_dir: str = "data/mindrecord"
    crop_size: int = field(default=512, metadata=_range(32, 4096))
    min_scale: float = field(default=0.5, metadata=_range(0.0, 10.0, lo_open=True))
    max_scale: float = field(default=2.0, metadata=_range(0.0, 10.0, lo_open=True))
    # The label value loss and metrics skip. Only 255 is accepted: it is the value the MindRecord labels
    # give VOC's boundary/void pixels (build_dataset writes no other), see docs/operations.md.
    ignore_label: int = field(default=IGNORE_LABEL, metadata=_range(0, 255))
    image_mean: Tuple[float, ...] = (103.53, 116.28, 123.675)
    image_std: Tuple[float, ...] = (57.375, 57.120, 58.395)
    num_workers: int = field(default=2, metadata=_range(1, 64))


@dataclass(frozen=True)
class LossScaleConfig:
    """Loss scaling (fcn8s/loss_scale.py), named as in ``DynamicLossScaleManager``.

    dynamic: an overflow on any rank skips the update and shrinks the scale (the tutorial's). fixed: the scale
    stays ``init_loss_scale`` and every update is applied, without the overflow check over the gradients (the
    model zoo's FCN-8s recipe, ``FixedLossScaleManager(1024, drop_overflow_update=False)``).
    """

    type: str = field(default="dynamic", metadata=_choices("dynamic", "fixed"))
    init_loss_scale: float = field(default=65536.0, metadata=_range(1.0))
    scale_factor: int = field(default=2, metadata=_range(2))
    scale_window: int = field(default=1000, metadata=_range(1))


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop settings (batch size is per device)."""

    batch_size: int = field(default=4, metadata=_range(1, 4096))
    epochs: int = field(default=50, metadata=_range(1))
    max_steps: int = field(default=0, metadata=_range(0))  # 0 = epochs * steps_per_epoch
    lr: float = field(default=0.05, metadata=_range(0.0, 10.0, lo_open=True))
    min_lr: float = field(default=0.0005, metadata=_range(0.0, 10.0))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    weight_decay: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    seed: int = field(default=1, metadata=_range(0))
    log_interval: int = field(default=10, metadata=_range(1))
    checkpoint_interval: int = field(default=500, metadata=_range(1))
    keep_checkpoints: int = field(default=5, metadata=_range(1))
    # Evaluate on val every N steps (0 = never) and save a checkpoint recording its mIoU; retention
    # keeps the best one besides the last keep_checkpoints.
    eval_interval: int = field(default=0, metadata=_range(0))
    # Stop when the loss is non-finite or the loss scale shrinks this many steps in a row.
    max_bad_steps: int = field(default=20, metadata=_range(1))
    # Several ranks: at each log interval compare the ranks' own work per step (batch fetch + forward/backward,
    # without waiting for the others) and warn about a rank above straggler_factor x the other ranks' median
    # for straggler_intervals intervals in a row. 0 = off (one fused step graph, no per-rank figures).
    straggler_factor: float = field(default=1.5, metadata=_range(1.0, lo_open=True))
    straggler_intervals: int = field(default=3, metadata=_range(0))
    # The host reads the device (stop agreement after SIGTERM, divergence check) every N steps; 0 = every
    # log_interval steps. Between reads the steps run without a host round trip; a SIGTERM stops the job at
    # the next read, at most N steps later (docs/performance.md).
    sync_interval: int = field(default=0, metadata=_range(0))
    # Ascend/GPU: N steps per call fed from the device's data queue (mindspore.data_sink); 0 = off. MindSpore
    # has no data sink on CPU: there the per-step loop runs (logged). Intervals must be multiples of N.
    sink_size: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation at original resolution: images are padded (or their long side resized) to image_size."""

    image_size: int = field(default=512, metadata=_range(32, 4096))
    batch_size: int = field(default=1, metadata=_range(1, 1024))


@dataclass(frozen=True)
class RunConfig:
    """Where outputs go and which backend runs the graph."""

    output_dir: str = "runs/fcn8s"
    device_target: str = field(default="auto", metadata=_choices("auto", "CPU", "Ascend", "GPU"))
    mode: str = field(default="graph", metadata=_choices("graph", "pynative"))
    # Rank 0 writes TensorBoard scalars (train and val) to <output_dir>/tensorboard/ (fcn8s/tensorboard_log.py).
    tensorboard: bool = True


@dataclass(frozen=True)
class DistConfig:
    """Collective communication: time-outs (HCCL on Ascend, exported before communication starts) and the
    gradient buckets.

    An ``HCCL_CONNECT_TIMEOUT`` / ``HCCL_EXEC_TIMEOUT`` already in the environment wins (logged).
    """

    # Seconds to wait for every rank to connect (HCCL: 120-7200, default 120). Pods see the rank
    # table and pull images at different times and the first graph compiles for minutes: 600.
    hccl_connect_timeout: int = field(default=600, metadata=_range(120, 7200))
    # Seconds one collective may wait for its peers (HCCL: 68-17340, a multiple of 68; default 1800).
    hccl_exec_timeout: int = field(default=1836, metadata=_range(68, 17340))
    # Gradients are summed over the ranks in buckets of at most this many MB, filled in backward order
    # (fcn8s/grad_buckets.py), so the last layers' buckets go out while the backward pass still runs; 0 = one
    # bucket after the whole backward pass. 25 MB is PyTorch DDP's default bucket_cap_mb (docs/performance.md).
    bucket_mb: float = field(default=25.0, metadata=_range(0.0, 4096.0))
    # Whether the backend fuses the AllReduce ops of a bucket into one (MindSpore's comm_fusion). auto =
    # fused on Ascend and GPU; unfused on CPU, where MindSpore 2.10's AllReduce kernel sums the fused inputs as one
    # contiguous buffer, which they are not (wrong gradients, measured). 'fused' on CPU only to inspect
    # the fused graph (docs/performance.md).
    comm_fusion: str = field(default="auto", metadata=_choices("auto", "fused", "unfused"))


@dataclass(frozen=True)
class Config:
    """The whole job configuration."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss_scale: LossScaleConfig = LossScaleConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    dist: DistConfig = DistConfig()

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML/JSON."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def digest(self) -> str:
        """Short stable hash of the resolved configuration."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Building a typed object from nested dicts


def _check_scalar(key: str, value: Any, typ: Any) -> Any:
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {typ}")  # pragma: no cover - schema bug


def _check_value(key: str, value: Any, typ: Any, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(typ)
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        value = tuple(_check_scalar(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
    else:
        value = _check_scalar(key, value, typ)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise ConfigError(f"{key}: must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: must be <= {hi}, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key '{name}' (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, key)
        else:
            kwargs[name] = _check_value(key, value, typ, fields[name].metadata)
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    data = cfg.data
    if data.ignore_label != IGNORE_LABEL:
        raise ConfigError(f"data.ignore_label: must be {IGNORE_LABEL}, the value the dataset gives VOC's boundary "
                          f"pixels (build_dataset writes no other ignore value), got {data.ignore_label}")
    if data.min_scale > data.max_scale:
        raise ConfigError(f"data.min_scale ({data.min_scale}) must not exceed data.max_scale ({data.max_scale})")
    for key in ("image_mean", "image_std"):
        if len(getattr(data, key)) != 3:
            raise ConfigError(f"data.{key}: expected 3 values (B, G, R), got {len(getattr(data, key))}")
    if any(s <= 0 for s in data.image_std):
        raise ConfigError("data.image_std: every value must be > 0")
    if data.crop_size % 32:
        raise ConfigError(f"data.crop_size: must be a multiple of 32, got {data.crop_size}")
    if cfg.eval.image_size % 32:
        raise ConfigError(f"eval.image_size: must be a multiple of 32, got {cfg.eval.image_size}")
    if cfg.dist.hccl_exec_timeout % 68:
        raise ConfigError(f"dist.hccl_exec_timeout: must be a multiple of 68 (HCCL), got {cfg.dist.hccl_exec_timeout}")
    _check_sink_multiples(cfg.train)
    if cfg.train.min_lr > cfg.train.lr:
        raise ConfigError(f"train.min_lr ({cfg.train.min_lr}) must not exceed train.lr ({cfg.train.lr})")


def _check_sink_multiples(train: TrainConfig) -> None:
    """With a data sink the host runs between sinks only: every interval must be a multiple of sink_size."""
    if not train.sink_size:
        return
    for key in ("log_interval", "sync_interval", "checkpoint_interval", "eval_interval", "max_steps"):
        value = getattr(train, key)
        if value % train.sink_size:
            raise ConfigError(f"train.{key} ({value}) must be a multiple of train.sink_size ({train.sink_size}): "
                              "the host only runs between sinks")


# ---------------------------------------------------------------------------------------------
# Overrides and loading


def parse_override(text: str) -> Tuple[List[str], Any]:
    """Split ``a.b=value`` into (['a', 'b'], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': cannot parse value ({err.__class__.__name__})") from None
    return path, value


def _apply(tree: Dict[str, Any], path: List[str], value: Any) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{'.'.join(path[: depth + 1])}' is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; a missing or malformed file is a ConfigError."""
    if not os.path.isfile(resolve_path(path)):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(resolve_path(path), encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def resolve_path(path: str) -> str:
    """Absolute path; relative ones are taken from the launch directory (see LAUNCH_DIR_ENV).

    The one resolver of every path: config keys and each CLI path argument (``type=resolve_path``).
    """
    return os.path.abspath(os.path.join(os.environ.get(LAUNCH_DIR_ENV, os.getcwd()), path))


def _resolve_paths(cfg: Config) -> Config:
    pretrained = resolve_path(cfg.model.pretrained) if cfg.model.pretrained else ""
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, pretrained=pretrained),
        data=dataclasses.replace(cfg.data, mindrecord_dir=resolve_path(cfg.data.mindrecord_dir)),
        run=dataclasses.replace(cfg.run, output_dir=resolve_path(cfg.run.output_dir)))


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), resolve: bool = True) -> Config:
    """Load defaults < YAML file < ``a.b=v`` overrides into a validated :class:`Config`.

    Paths in the result (``model.pretrained``, ``data.mindrecord_dir``, ``run.output_dir``) are absolute,
    or as written with ``resolve=False`` (e.g. relative to a cluster job's working directory).
    """
    tree: Dict[str, Any] = read_yaml(path) if path else {}
    for text in overrides:
        key_path, value = parse_override(text)
        _apply(tree, key_path, value)
    cfg = _build(Config, tree, "")
    _cross_checks(cfg)
    return _resolve_paths(cfg) if resolve else cfg


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved configuration as YAML (call on rank 0 only)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(cfg.to_dict(), handle, sort_keys=False)


def add_config_arguments(parser: Any, default_config: Optional[str] = None) -> None:
    """Add ``--config``, repeated ``--set KEY=VALUE`` and positional ``KEY=VALUE`` overrides."""
    parser.add_argument("--config", default=default_config, metavar="YAML",
                        help="YAML config file (see configs/)" + (f"; default {default_config}" if default_config else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.lr=0.01 (repeatable)")
    parser.add_argument("extra_overrides", nargs="*", metavar="KEY=VALUE",
                        help="more overrides, same as --set (e.g. train.max_steps=100)")


def config_from_args(args: Any) -> Config:
    """Build the Config from arguments added by :func:`add_config_arguments`."""
    return load_config(args.config, list(args.overrides) + list(args.extra_overrides))
