"""A 'same'-padded convolution with an exact fast path for large kernels on small feature maps.

conv6 of FCN-8s is a 7x7, 512->4096 convolution applied to the 1/32-resolution map (2x2 at 64 px,
4x4 at 128 px). With 'same' padding most kernel taps only ever multiply zero padding. The
``matmul`` implementation keeps only the taps that can touch real pixels (the central
(2H-1)x(2W-1) window, exact because the others see only zeros), gathers them with im2col and
multiplies once. The parameter keeps the full ``(out, in, k, k)`` shape and name, so checkpoints
are interchangeable with ``nn.Conv2d`` (whose gradient outside that window is exactly zero too).
"""
from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore.common.initializer import initializer

IMPLEMENTATIONS = ("conv", "matmul", "auto")
# 'auto' uses the matmul path only while the unfolded input (kept for the backward pass) stays
# below this size, so large crops on CPU fall back to Conv2D instead of exhausting memory.
MAX_UNFOLD_BYTES = 256 << 20


class SameConv2d(nn.Cell):
    """Stride-1, odd-kernel, bias-free convolution with 'same' padding.

    ``impl``: 'conv' (Conv2D kernel), 'matmul' (exact im2col + MatMul), or 'auto' (matmul while
    the unfolded input is below MAX_UNFOLD_BYTES, Conv2D beyond; decided per layer at compile time).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, impl: str = "conv",
                 weight_init: str = "xavier_uniform") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.impl = impl
        self.weight = ms.Parameter(
            initializer(weight_init, (out_channels, in_channels, kernel_size, kernel_size), ms.float32),
            name="weight")
        # kernel_size as a tuple, as nn.Conv2d passes it: MindSpore's ONNX exporter fails on an int
        # ("Cast value from type Int64Imm to ValueTuple failed").
        self.conv2d = ops.Conv2D(out_channel=out_channels, kernel_size=(kernel_size, kernel_size), pad_mode="same")

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.uses_matmul(x.shape):
            return self._im2col_matmul(x)
        return self.conv2d(x, self.weight)

    def uses_matmul(self, shape: tuple) -> bool:
        """Whether an input of ``shape`` (N, C, H, W) takes the im2col + MatMul path."""
        if self.impl != "auto":
            return self.impl == "matmul"
        n, c, h, w = shape
        unfold_bytes = 4 * n * c * min(self.kernel_size, 2 * h - 1) * min(self.kernel_size, 2 * w - 1) * h * w
        return unfold_bytes <= MAX_UNFOLD_BYTES

    def _im2col_matmul(self, x: ms.Tensor) -> ms.Tensor:
        n, c, h, w = x.shape
        k = self.kernel_size
        kh = min(k, 2 * h - 1)
        kw = min(k, 2 * w - 1)
        weight = self.weight
        if (kh, kw) != (k, k):  # slicing has a costly gradient: only when it removes taps
            top, left = (k - kh) // 2, (k - kw) // 2
            weight = weight[:, :, top:top + kh, left:left + kw]
        # im2col: (n, c*kh*kw, h*w) -> (c*kh*kw, n*h*w); row order matches weight.reshape(out, c*kh*kw).
        cols = ops.unfold(x, kernel_size=(kh, kw), padding=((kh - 1) // 2, (kw - 1) // 2))
        cols = cols.transpose(1, 0, 2).reshape(c * kh * kw, n * h * w)
        out = ops.matmul(weight.reshape(self.out_channels, c * kh * kw).astype(x.dtype), cols)
        return out.reshape(self.out_channels, n, h, w).transpose(1, 0, 2, 3)

