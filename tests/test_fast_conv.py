"""SameConv2d(impl='matmul') must equal nn.Conv2d(pad_mode='same', has_bias=False): outputs and gradients.

Real MindSpore on CPU. The reference shares the exact weight values; gradients are taken of
``sum(out * cotangent)`` with a fixed random cotangent, so they are nontrivial and comparable.
"""
from __future__ import annotations

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from fcn8s.fast_conv import SameConv2d
from tests.conftest import HEAVY

RTOL = 1e-4


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0, "reference is identically zero: the comparison would prove nothing"
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} * max|ref| ({scale:.3g})"


def _pair(cin: int, cout: int, k: int, seed: int = 0):
    """The fast layer and an nn.Conv2d reference holding the same weight values."""
    fast = SameConv2d(cin, cout, k, impl="matmul")
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((cout, cin, k, k), dtype=np.float32) / np.float32(np.sqrt(cin * k * k))
    fast.weight.set_data(ms.Tensor(weight))
    ref = nn.Conv2d(cin, cout, k, pad_mode="same", has_bias=False, weight_init=ms.Tensor(weight))
    return fast, ref


def _forward_and_grads(net: nn.Cell, x: np.ndarray, cot: np.ndarray, jit: bool, with_dx: bool = True):
    """(output, d/dx or None, d/dweight) of sum(net(x) * cot)."""
    cot_t = ms.Tensor(cot)

    def objective(inp):
        out = net(inp)
        return (out * cot_t).sum(), out

    grad_fn = ms.value_and_grad(objective, grad_position=0 if with_dx else None,
                                weights=net.trainable_params(), has_aux=True)
    if jit:
        grad_fn = ms.jit(grad_fn)
    (_, out), grads = grad_fn(ms.Tensor(x))
    if with_dx:
        dx, (dw,) = grads
        return out.asnumpy(), dx.asnumpy(), dw.asnumpy()
    (dw,) = grads
    return out.asnumpy(), None, dw.asnumpy()


def _check_equivalence(cin: int, cout: int, k: int, h: int, w: int, n: int = 2, jit: bool = False) -> None:
    fast, ref = _pair(cin, cout, k, seed=h * 100 + w)
    rng = np.random.default_rng(k * 1000 + h * 10 + w)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    cot = rng.standard_normal((n, cout, h, w)).astype(np.float32)
    out_f, dx_f, dw_f = _forward_and_grads(fast, x, cot, jit)
    out_r, dx_r, dw_r = _forward_and_grads(ref, x, cot, jit)
    _close(out_f, out_r)
    _close(dx_f, dx_r)
    _close(dw_f, dw_r)  # full (cout, cin, k, k) shape; the cropped-away taps must be zero in both


@pytest.mark.parametrize("h,w", [(2, 2), (4, 4), (7, 7), (16, 16), (2, 5), (5, 3)])
def test_kernel7_matches_conv2d(h, w):
    _check_equivalence(16, 32, 7, h, w)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (8, 8), (6, 9)])
def test_kernel3_matches_conv2d(h, w):
    _check_equivalence(16, 32, 3, h, w)


@pytest.mark.parametrize("k,h,w", [(7, 2, 2), (7, 2, 5), (3, 8, 8)])
def test_matches_conv2d_in_graph_mode(k, h, w):
    """Same comparison with both sides compiled by ms.jit (how the trainer runs the model)."""
    _check_equivalence(8, 16, k, h, w, jit=True)


@HEAVY
def test_real_conv6_shape():
    """conv6 of FCN-8s at 64 px input: 512 -> 4096, 7x7, on the 2x2 pool5 map."""
    fast, ref = _pair(512, 4096, 7, seed=6)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 512, 2, 2)).astype(np.float32)
    cot = rng.standard_normal((1, 4096, 2, 2)).astype(np.float32)
    out_f, _, dw_f = _forward_and_grads(fast, x, cot, jit=False, with_dx=False)
    out_r, _, dw_r = _forward_and_grads(ref, x, cot, jit=False, with_dx=False)
    assert dw_f.shape == (4096, 512, 7, 7)
    _close(out_f, out_r)
    _close(dw_f, dw_r)


def test_reference_weight_grad_is_zero_outside_central_window():
    """On a 2x2 map only the central 3x3 taps of a 7x7 'same' kernel ever meet a real pixel.

    This is why cropping the kernel is exact: nn.Conv2d's own gradient is exactly zero elsewhere.
    """
    _, ref = _pair(4, 8, 7, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 2, 2)).astype(np.float32)
    cot = rng.standard_normal((2, 8, 2, 2)).astype(np.float32)
    _, _, dw = _forward_and_grads(ref, x, cot, jit=False)
    outside = np.ones((7, 7), dtype=bool)
    outside[2:5, 2:5] = False
    assert np.all(dw[:, :, outside] == 0.0)
    assert np.abs(dw[:, :, 2:5, 2:5]).min(axis=(2, 3)).max() > 0  # the central window does get gradient


@HEAVY
def test_fcn8s_parameters_identical_across_impls():
    from fcn8s.model import FCN8s

    def shapes(net):
        return [(p.name, tuple(p.shape)) for p in net.get_parameters()]

    conv, fast = shapes(FCN8s(21, "conv")), shapes(FCN8s(21, "matmul"))
    assert conv == fast
    named = dict(fast)
    assert named["conv6.0.weight"] == (4096, 512, 7, 7)
    assert named["conv1.0.weight"] == (64, 3, 3, 3)


def test_unknown_impl_and_even_kernel_rejected():
    with pytest.raises(ValueError):
        SameConv2d(4, 4, 3, impl="winograd")
    with pytest.raises(ValueError):
        SameConv2d(4, 4, 4)


def test_auto_bounds_the_unfold_memory():
    conv1_2 = SameConv2d(64, 64, 3, impl="auto")
    assert conv1_2.uses_matmul((4, 64, 64, 64))  # demo size: 38 MB unfolded
    assert not conv1_2.uses_matmul((4, 64, 512, 512))  # 512 crops: 2.4 GB -> Conv2D
    conv6 = SameConv2d(512, 4096, 7, impl="auto")
    assert conv6.uses_matmul((4, 512, 16, 16))
    assert SameConv2d(64, 64, 3, impl="matmul").uses_matmul((4, 64, 512, 512))
    assert not SameConv2d(64, 64, 3, impl="conv").uses_matmul((1, 64, 2, 2))
    x = ms.Tensor(np.random.default_rng(0).normal(size=(1, 4, 5, 5)).astype(np.float32))
    auto, conv = SameConv2d(4, 8, 3, impl="auto"), SameConv2d(4, 8, 3, impl="conv")
    conv.weight.set_data(auto.weight.data)
    np.testing.assert_allclose(auto(x).asnumpy(), conv(x).asnumpy(), rtol=1e-4, atol=1e-5)
