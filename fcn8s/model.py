"""FCN-8s with a VGG16-BN backbone, parameter-compatible with the MindSpore tutorial's ``FCN8s``.

Parameter names and shapes equal the tutorial's (``conv1.0.weight``, ``conv1.1.gamma``, ...,
``conv6.0.weight`` (4096, 512, 7, 7), ``upscore8.weight`` (21, 21, 16, 16)), so checkpoints move
both ways. Unlike the tutorial, transposed convolutions start as bilinear upsampling.
"""
from __future__ import annotations

from typing import List

import numpy as np

import mindspore as ms
import mindspore.nn as nn

from fcn8s.config import FC_CHANNELS, ModelConfig
from fcn8s.fast_conv import SameConv2d
from fcn8s.model_size import VGG16_BLOCKS  # (output channels, number of 3x3 convs) per VGG16 block
OUTPUT_STRIDE = 32


def _conv_bn_relu(conv: nn.Cell, channels: int) -> List[nn.Cell]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


def _vgg_block(in_channels: int, out_channels: int, num_convs: int, conv_impl: str) -> nn.SequentialCell:
    layers: List[nn.Cell] = []
    for i in range(num_convs):
        conv = SameConv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, impl=conv_impl)
        layers += _conv_bn_relu(conv, out_channels)
    return nn.SequentialCell(layers)


def bilinear_kernel(channels: int, kernel_size: int) -> np.ndarray:
    """Weights (channels, channels, k, k) that make a transposed conv a per-channel bilinear upsampler."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(grid[0] - center) / factor) * (1 - abs(grid[1] - center) / factor)
    weight = np.zeros((channels, channels, kernel_size, kernel_size), dtype=np.float32)
    weight[range(channels), range(channels)] = filt
    return weight


def _upsample(channels: int, kernel_size: int, stride: int) -> nn.Conv2dTranspose:
    layer = nn.Conv2dTranspose(channels, channels, kernel_size=kernel_size, stride=stride)
    layer.weight.set_data(ms.Tensor(bilinear_kernel(channels, kernel_size)))
    return layer


class FCN8s(nn.Cell):
    """FCN-8s: VGG16-BN encoder, conv6/conv7 as convolutions, skip fusion at pool4 and pool3.

    Args:
        n_class: number of output classes (21 for PASCAL VOC).
        conv_impl: how the 3x3 and 7x7 convolutions run: 'conv' (Conv2D kernel, for Ascend) or
            'matmul' (exact im2col + MatMul; 10-30x faster on CPU) or 'auto' (matmul where its
            memory stays bounded), see fcn8s/fast_conv.py.
        fc_channels: conv6/conv7 width; 4096 (the tutorial's) unless a test wants a small network.
    Input height and width must be multiples of 32; output has the input's spatial size.
    """

    def __init__(self, n_class: int = 21, conv_impl: str = "conv", fc_channels: int = FC_CHANNELS) -> None:
        super().__init__()
        self.n_class = n_class
        channels = [3] + [c for c, _ in VGG16_BLOCKS]
        blocks = [_vgg_block(channels[i], c, n, conv_impl) for i, (c, n) in enumerate(VGG16_BLOCKS)]
        self.conv1, self.conv2, self.conv3, self.conv4, self.conv5 = blocks
        self.pool1, self.pool2, self.pool3, self.pool4, self.pool5 = (
            nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(5))
        self.conv6 = nn.SequentialCell(_conv_bn_relu(
            SameConv2d(512, fc_channels, kernel_size=7, impl=conv_impl), fc_channels))
        self.conv7 = nn.SequentialCell(_conv_bn_relu(
            nn.Conv2d(fc_channels, fc_channels, kernel_size=1, weight_init="xavier_uniform"), fc_channels))
        self.score_fr = nn.Conv2d(fc_channels, n_class, kernel_size=1, weight_init="xavier_uniform")
        self.upscore2 = _upsample(n_class, kernel_size=4, stride=2)
        self.score_pool4 = nn.Conv2d(512, n_class, kernel_size=1, weight_init="xavier_uniform")
        self.upscore_pool4 = _upsample(n_class, kernel_size=4, stride=2)
        self.score_pool3 = nn.Conv2d(256, n_class, kernel_size=1, weight_init="xavier_uniform")
        self.upscore8 = _upsample(n_class, kernel_size=16, stride=8)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        p3 = self.pool3(self.conv3(self.pool2(self.conv2(self.pool1(self.conv1(x))))))
        p4 = self.pool4(self.conv4(p3))
        p5 = self.pool5(self.conv5(p4))
        score = self.score_fr(self.conv7(self.conv6(p5)))
        fused4 = self.score_pool4(p4) + self.upscore2(score)
        fused3 = self.score_pool3(p3) + self.upscore_pool4(fused4)
        return self.upscore8(fused3)


def resolve_conv_impl(setting: str, device_target: str) -> str:
    """'auto' -> per-layer matmul/Conv2D choice on CPU (see fast_conv), 'conv' on accelerators."""
    if setting != "auto" or device_target == "CPU":
        return setting
    return "conv"


def build_model(cfg: ModelConfig, conv_impl: str) -> nn.Cell:
    """FCN8s as ``cfg`` describes it (classes, conv6/conv7 width), cast for mixed precision when
    ``cfg.amp_level`` is O1-O3 (float32 master weights). ``conv_impl``: 'conv', 'matmul' or 'auto'
    as resolved for the device (:func:`resolve_conv_impl`; ``cfg.conv_impl`` is the user's setting)."""
    net = FCN8s(n_class=cfg.num_classes, conv_impl=conv_impl, fc_channels=cfg.fc_channels)
    if cfg.amp_level != "O0":
        net = ms.amp.auto_mixed_precision(net, cfg.amp_level)
    return net
