"""Initialise FCN-8s from an ImageNet VGG16-BN MindSpore checkpoint on local disk (nothing is downloaded).

Two namings are recognised. Both build VGG16-BN as one ``SequentialCell`` of
``[Conv2d, BatchNorm2d, ReLU] x n + MaxPool2d`` per block, so the i-th cell of that sequence is
``<prefix>.<i>``, and both keep the fully connected layers in ``classifier`` (Dense, ReLU, Dropout, ...):

* MindSpore model zoo, ``official/cv/VGG/vgg16`` (``batch_norm: True``): prefix ``layers``
* mindcv ``VGG(batch_norm=True)`` (``vgg16_bn``): prefix ``features``

The mapping is the explicit table :data:`MAPPINGS` built from ``model.VGG16_BLOCKS``
(``python -m fcn8s.pretrained --table`` prints it):

=====================================================  =====================================
checkpoint                                             FCN-8s
=====================================================  =====================================
``<prefix>.<k>.weight`` (conv j of block b)            ``conv<b>.<3j>.weight``
``<prefix>.<k+1>.{gamma,beta,moving_*}``               ``conv<b>.<3j+1>.{...}``
``classifier.0.weight`` (4096, 25088) = fc6            ``conv6.0.weight`` reshaped (4096, 512, 7, 7)
``classifier.3.weight`` (4096, 4096) = fc7             ``conv7.0.weight`` reshaped (4096, 4096, 1, 1)
=====================================================  =====================================

``k`` counts three cells per conv and one per max-pool (block 2 starts at 7). fc6/fc7 become
convolutions as in the FCN paper (Long et al., 2015): a 'same' 7x7 convolution at the centre of a 7x7
map computes exactly fc6. They are optional (a features-only file leaves conv6/conv7 as initialised).
Our convolutions have no bias; each is followed by BatchNorm, so a source bias ``b`` (conv bias,
fc6/fc7 bias) is folded into that BatchNorm's ``moving_mean`` (``mean - b``), which is exact in
inference and irrelevant in training (batch statistics remove any constant). ``classifier.6``
(the 1000-class ImageNet head) and optimiser state are not used.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
import mindspore.nn as nn

from fcn8s.checkpoint import read_checkpoint
from fcn8s.errors import UserError, run_cli
from fcn8s.config import FC_CHANNELS, ModelConfig
from fcn8s.model import VGG16_BLOCKS, build_model

LOG = logging.getLogger(__name__)
BN_FIELDS = ("gamma", "beta", "moving_mean", "moving_variance")
NAMINGS = {"model-zoo": "layers", "mindcv": "features"}  # naming -> prefix of the feature layers
FC_LAYERS = (("classifier.0", "conv6", (FC_CHANNELS, 512, 7, 7)),
             ("classifier.3", "conv7", (FC_CHANNELS, FC_CHANNELS, 1, 1)))


@dataclass(frozen=True)
class Layer:
    """One conv (+ its BatchNorm) of the source and where it goes in FCN-8s.

    ``source_bn`` is None for fc6/fc7 (no BatchNorm in VGG's classifier); the source weight must
    have ``source_shape`` and is reshaped to the FCN-8s weight's ``shape``.
    """

    source: str
    source_bn: Optional[str]
    target: str
    target_bn: str
    source_shape: Tuple[int, ...]
    shape: Tuple[int, ...]
    required: bool


def build_mapping(prefix: str) -> List[Layer]:
    """The layer table for a checkpoint whose VGG16-BN feature layers are named ``<prefix>.<i>``."""
    table: List[Layer] = []
    index, in_channels = 0, 3
    for block, (channels, num_convs) in enumerate(VGG16_BLOCKS, start=1):
        for conv in range(num_convs):
            shape = (channels, in_channels, 3, 3)
            table.append(Layer(f"{prefix}.{index}", f"{prefix}.{index + 1}", f"conv{block}.{3 * conv}",
                               f"conv{block}.{3 * conv + 1}", shape, shape, required=True))
            index += 3  # Conv2d, BatchNorm2d, ReLU
            in_channels = channels
        index += 1  # MaxPool2d
    for source, target, shape in FC_LAYERS:
        source_shape = (shape[0], int(np.prod(shape[1:])))  # Dense weight (out, in)
        table.append(Layer(source, None, f"{target}.0", f"{target}.1", source_shape, shape, required=False))
    return table


MAPPINGS: Dict[str, List[Layer]] = {naming: build_mapping(prefix) for naming, prefix in NAMINGS.items()}


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained_backbone` did: FCN-8s names loaded/missing, file names unused."""

    path: str
    naming: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"pretrained VGG16-BN ({self.naming} naming) from {self.path}: loaded {len(self.loaded)}, "
                f"missing {len(self.missing)} (keep their initialisation{_examples(self.missing)}), "
                f"unexpected {len(self.unexpected)} (unused{_examples(self.unexpected)})")


def _examples(names: List[str], count: int = 3) -> str:
    return f", e.g. {', '.join(names[:count])}" if names else ""


def detect_naming(params: Dict[str, ms.Parameter], path: str) -> str:
    """'model-zoo' or 'mindcv' from the first conv's name; anything else is a UserError naming the file."""
    for naming, table in MAPPINGS.items():
        if f"{table[0].source}.weight" in params:
            return naming
    expected = " or ".join(f"'{table[0].source}.weight' ({naming})" for naming, table in MAPPINGS.items())
    raise UserError(f"{path}: not a VGG16-BN checkpoint with model-zoo or mindcv naming (no {expected})")


def _check_present(params: Dict[str, ms.Parameter], layer: Layer, path: str) -> bool:
    """Whether ``layer`` is in the file; a required layer that is absent is a UserError."""
    names = [f"{layer.source}.weight"] + ([f"{layer.source_bn}.{f}" for f in BN_FIELDS] if layer.source_bn else [])
    absent = [name for name in names if name not in params]
    if not absent:
        return True
    if not layer.required and len(absent) == len(names):
        return False
    hint = " (a VGG16 without BatchNorm? FCN-8s needs VGG16-BN)" if absent[0].endswith(".gamma") else ""
    raise UserError(f"{path}: missing {absent[0]}, needed for {layer.target}{hint}")


def _checked(params: Dict[str, ms.Parameter], name: str, shape: Tuple[int, ...], target: str, path: str
             ) -> np.ndarray:
    """``params[name]`` as a float32 array if it has ``shape``, else a UserError naming both parameters."""
    value_shape = tuple(params[name].shape)
    if value_shape != shape:
        hint = " (FCN-8s needs an ImageNet 224x224 VGG16 classifier)" if name.startswith("classifier") else ""
        raise UserError(f"{path}: {name} has shape {value_shape}, {target} needs {shape}{hint}")
    return params[name].asnumpy().astype(np.float32)


def layer_values(params: Dict[str, ms.Parameter], layer: Layer, path: str) -> Dict[str, np.ndarray]:
    """FCN-8s name -> value for one layer present in ``params`` (bias folded into moving_mean)."""
    weight = _checked(params, f"{layer.source}.weight", layer.source_shape, f"{layer.target}.weight", path)
    values = {f"{layer.target}.weight": weight.reshape(layer.shape)}
    channels = (layer.shape[0],)
    if layer.source_bn:
        for name in BN_FIELDS:
            values[f"{layer.target_bn}.{name}"] = _checked(params, f"{layer.source_bn}.{name}", channels,
                                                           f"{layer.target_bn}.{name}", path)
    if f"{layer.source}.bias" in params:
        bias = _checked(params, f"{layer.source}.bias", channels, f"{layer.target_bn}.moving_mean", path)
        mean = values.get(f"{layer.target_bn}.moving_mean", np.zeros(channels, np.float32))
        values[f"{layer.target_bn}.moving_mean"] = mean - bias
    return values


def _used_names(layer: Layer) -> List[str]:
    names = [f"{layer.source}.weight", f"{layer.source}.bias"]
    return names + ([f"{layer.source_bn}.{f}" for f in BN_FIELDS] if layer.source_bn else [])


def map_backbone(path: str) -> Tuple[str, Dict[str, np.ndarray], List[str]]:
    """(naming, FCN-8s name -> value, unused file names) of the VGG16-BN checkpoint at ``path``.

    Unknown naming, a missing required layer or a wrong shape is a UserError naming the file.
    """
    params = read_checkpoint(path, "pretrained checkpoint")
    naming = detect_naming(params, path)
    values: Dict[str, np.ndarray] = {}
    used: set = set()
    for layer in MAPPINGS[naming]:
        if _check_present(params, layer, path):
            values.update(layer_values(params, layer, path))
            used.update(_used_names(layer))
    return naming, values, sorted(set(params) - used)


def load_pretrained_backbone(net: nn.Cell, path: str) -> PretrainedReport:
    """Copy ImageNet VGG16-BN weights from ``path`` into ``net`` (an FCN8s); logs and returns the counts.

    Nothing is changed unless the whole file maps cleanly: unknown naming, a missing backbone
    parameter or a shape mismatch is a UserError naming the parameter and the file.
    """
    naming, values, unexpected = map_backbone(path)
    targets = net.parameters_dict()
    for name, value in values.items():
        if name not in targets:
            raise UserError(f"the network has no parameter {name} (not an FCN-8s?)")
        if tuple(targets[name].shape) != value.shape:
            raise UserError(f"{path}: {name} would get shape {value.shape}, the network has "
                            f"{tuple(targets[name].shape)}")
    for name, value in values.items():
        targets[name].set_data(ms.Tensor(value, targets[name].dtype))
    report = PretrainedReport(path, naming, loaded=sorted(values),
                              missing=[name for name in targets if name not in values],
                              unexpected=unexpected)
    LOG.info("%s", report.summary())
    return report


def format_mapping(naming: str) -> str:
    """The mapping table for ``naming`` as text (one line per parameter)."""
    lines = []
    for layer in MAPPINGS[naming]:
        lines.append(f"{layer.source}.weight -> {layer.target}.weight {layer.shape}")
        if layer.source_bn:
            lines += [f"{layer.source_bn}.{f} -> {layer.target_bn}.{f}" for f in BN_FIELDS]
        lines.append(f"{layer.source}.bias (if present) -> folded into {layer.target_bn}.moving_mean")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fcn8s.pretrained", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check that a VGG16-BN checkpoint maps onto FCN-8s (loads it into a fresh network and "
                    "prints the report), or print the name mapping.\n\n" + __doc__)
    parser.add_argument("ckpt", nargs="?", help="ImageNet VGG16-BN .ckpt (model-zoo or mindcv naming)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the FCN-8s to load into (default 21)")
    parser.add_argument("--table", choices=sorted(MAPPINGS), help="print the name mapping for this naming and exit")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table:
        print(format_mapping(args.table))
        return 0
    if not args.ckpt:
        raise UserError("give a checkpoint to check, or --table NAMING")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = load_pretrained_backbone(build_model(ModelConfig(num_classes=args.num_classes), "conv"), args.ckpt)
    print(f"naming {report.naming}: loaded {len(report.loaded)}, missing {len(report.missing)}, "
          f"unexpected {len(report.unexpected)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
