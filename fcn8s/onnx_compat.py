"""FCN-8s in a form MindSpore 2.10's ONNX exporter writes correctly (same weights, same outputs).

The exporter turns ``nn.Conv2dTranspose`` into an ONNX ``ConvTranspose`` whose ``output_shape``
attribute holds (N, C, H, W) where ONNX wants (H, W); onnxruntime refuses to load such a file
("Attribute output_shape has incorrect size"). :class:`SubpixelUpsample` computes the same
transposed convolution from ops the exporter handles (Conv, Reshape, Transpose, Slice): with stride
``s`` and kernel ``k = M * s``, each of the ``s x s`` output phases is an ordinary ``M x M``
convolution of the input with a subset of the kernel taps (the "sub-pixel" decomposition); the
phases are interleaved by a reshape/transpose and the transposed convolution's padding
``(k - s) / 2`` is cropped off. Every output is the same sum of products, so the results equal the
transposed convolution's to float32 rounding (checked in tests/test_predict_export.py).
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops


def subpixel_weight(weight: np.ndarray, stride: int) -> np.ndarray:
    """Conv2D weight (s*s*out, in, M, M) for the phases of a transposed-conv weight (in, out, M*s, M*s).

    Output channel ``(rh * s + rw) * out + o`` computes phase (rh, rw) of channel ``o``; its tap
    (u, v) is the transposed kernel's tap (rh + s * (M-1-u), rw + s * (M-1-v)) (Conv2D correlates,
    so the phase kernel is flipped).
    """
    in_channels, out_channels, k, _ = weight.shape
    taps = k // stride
    phases = weight.reshape(in_channels, out_channels, taps, stride, taps, stride)[:, :, ::-1, :, ::-1, :]
    return np.ascontiguousarray(phases.transpose(3, 5, 1, 0, 2, 4).reshape(
        stride * stride * out_channels, in_channels, taps, taps))


class SubpixelUpsample(nn.Cell):
    """A bias-free 'same' ``nn.Conv2dTranspose`` (square kernel a multiple of the stride) as Conv2D + pixel shuffle."""

    def __init__(self, layer: nn.Conv2dTranspose) -> None:
        super().__init__()
        (k, kw), (stride, sw) = layer.kernel_size, layer.stride
        if (k, stride) != (kw, sw) or k % stride or (k - stride) % 2 or layer.has_bias or layer.group != 1 \
                or layer.dilation != (1, 1) or layer.pad_mode != "same":
            raise ValueError(f"SubpixelUpsample needs a square 'same' transposed conv without bias, kernel a "
                             f"multiple of the stride; got kernel {layer.kernel_size}, stride {layer.stride}")
        self.stride = stride
        self.out_channels = layer.out_channels
        self.crop = (k - stride) // 2  # the transposed convolution's padding on each side
        taps = k // stride
        self.weight = ms.Parameter(ms.Tensor(subpixel_weight(layer.weight.asnumpy(), stride)), name="weight")
        self.conv2d = ops.Conv2D(out_channel=stride * stride * self.out_channels, kernel_size=(taps, taps),
                                 pad_mode="pad", pad=taps - 1)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        n, _, height, width = x.shape
        s = self.stride
        phases = self.conv2d(x, self.weight)  # (n, s*s*out, height + M - 1, width + M - 1)
        rows, cols = phases.shape[2], phases.shape[3]
        full = phases.reshape(n, s, s, self.out_channels, rows, cols).transpose(0, 3, 4, 1, 5, 2)
        full = full.reshape(n, self.out_channels, rows * s, cols * s)
        return full[:, :, self.crop:self.crop + height * s, self.crop:self.crop + width * s]


def onnx_exportable(net: nn.Cell) -> nn.Cell:
    """``net`` with each direct child ``nn.Conv2dTranspose`` replaced by its :class:`SubpixelUpsample` (in place)."""
    for name, cell in list(net.name_cells().items()):
        if isinstance(cell, nn.Conv2dTranspose):
            setattr(net, name, SubpixelUpsample(cell))
    return net
