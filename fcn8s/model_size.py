"""FCN-8s parameter counts and checkpoint size from the layer shapes (no MindSpore: preflight uses it).

Mirrors fcn8s/model.py (tested against the built network): bias-free convolutions, each followed
by a BatchNorm with two trainable (gamma, beta) and two running (moving_mean, moving_var) vectors.
"""
from __future__ import annotations

from typing import Tuple

from fcn8s.config import FC_CHANNELS

# (output channels, number of 3x3 convs) per VGG16 block; fcn8s.model builds these.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
BYTES_PER_VALUE = 4  # float32 master weights and momentum
SIDECAR_BYTES = 4096  # the JSON beside each checkpoint (an upper bound)


def parameter_counts(num_classes: int, fc_channels: int = FC_CHANNELS) -> Tuple[int, int]:
    """(all parameters, trainable parameters) of FCN8s(num_classes, fc_channels)."""
    convs, bn_channels, in_channels = 0, 0, 3
    for channels, num_convs in VGG16_BLOCKS:
        for _ in range(num_convs):
            convs += channels * in_channels * 9
            bn_channels += channels
            in_channels = channels
    convs += fc_channels * 512 * 49 + fc_channels * fc_channels  # conv6 (7x7), conv7 (1x1)
    bn_channels += 2 * fc_channels
    n = num_classes
    convs += fc_channels * n + 512 * n + 256 * n  # score_fr, score_pool4, score_pool3
    convs += n * n * (16 + 16 + 256)  # upscore2 (4x4), upscore_pool4 (4x4), upscore8 (16x16)
    trainable = convs + 2 * bn_channels
    return trainable + 2 * bn_channels, trainable


def checkpoint_bytes(num_classes: int, fc_channels: int = FC_CHANNELS) -> int:
    """Bytes of one training checkpoint: every parameter + the momentum of the trainable ones (float32) + sidecar."""
    total, trainable = parameter_counts(num_classes, fc_channels)
    return (total + trainable) * BYTES_PER_VALUE + SIDECAR_BYTES
