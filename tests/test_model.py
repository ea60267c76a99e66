import cv2
import numpy as np
import pytest

import mindspore as ms

from fcn8s.checkpoint import load_weights
from fcn8s.model import FCN8s, bilinear_kernel
from tests.conftest import HEAVY
from tests.seed_reference import SeedFCN8s

pytestmark = HEAVY


@pytest.fixture(scope="module")
def seed_net():
    return SeedFCN8s(21)


@pytest.fixture(scope="module")
def our_net():
    return FCN8s(21, conv_impl="matmul")


def _shapes(net):
    return {name: tuple(p.shape) for name, p in net.parameters_dict().items()}


def test_parameter_names_and_shapes_equal_the_seed(seed_net, our_net):
    ours = _shapes(our_net)
    assert ours == _shapes(seed_net)
    assert ours["conv6.0.weight"] == (4096, 512, 7, 7)
    assert ours["upscore8.weight"] == (21, 21, 16, 16)
    assert sum(int(np.prod(s)) for s in ours.values()) == 134_526_944


def test_checkpoints_cross_load_both_ways(seed_net, our_net, tmp_path):
    seed_ckpt = str(tmp_path / "seed.ckpt")
    ms.save_checkpoint(seed_net, seed_ckpt)
    load_weights(our_net, seed_ckpt)
    np.testing.assert_array_equal(our_net.conv6[0].weight.asnumpy(), seed_net.conv6[0].weight.asnumpy())
    ours_ckpt = str(tmp_path / "ours.ckpt")
    ms.save_checkpoint(our_net, ours_ckpt)
    target = SeedFCN8s(21)
    not_loaded, unexpected = ms.load_param_into_net(target, ms.load_checkpoint(ours_ckpt), strict_load=True)
    assert not not_loaded and not unexpected
    np.testing.assert_array_equal(target.score_fr.weight.asnumpy(), our_net.score_fr.weight.asnumpy())


def test_bilinear_kernel_closed_form():
    kernel = bilinear_kernel(3, 4)
    expected_1d = np.array([0.25, 0.75, 0.75, 0.25])  # 1 - |i - 1.5| / 2
    np.testing.assert_allclose(kernel[1, 1], np.outer(expected_1d, expected_1d))
    assert kernel[0, 1].sum() == 0  # no cross-channel mixing


@pytest.mark.parametrize("layer, stride", [("upscore2", 2), ("upscore_pool4", 2), ("upscore8", 8)])
def test_upsamplers_start_as_opencv_bilinear_resize(layer, stride):
    """Away from the zero-padded border each transposed conv equals cv2.resize(INTER_LINEAR) (half-pixel centres)."""
    net = FCN8s(3, "matmul", fc_channels=16)
    x = np.random.default_rng(0).normal(size=(1, 3, 6, 7)).astype(np.float32)
    out = getattr(net, layer)(ms.Tensor(x)).asnumpy()[0]
    reference = np.stack([cv2.resize(plane, (7 * stride, 6 * stride), interpolation=cv2.INTER_LINEAR)
                          for plane in x[0]])
    assert out.shape == reference.shape
    inner = (slice(None), slice(stride, -stride), slice(stride, -stride))
    np.testing.assert_allclose(out[inner], reference[inner], rtol=0, atol=1e-5)


@pytest.mark.parametrize("height, width", [(64, 96), (32, 32)])
def test_output_keeps_input_size(our_net, height, width):
    our_net.set_train(False)
    out = our_net(ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)))
    assert out.shape == (2, 21, height, width)
    assert np.isfinite(out.asnumpy()).all()


@pytest.mark.slow
def test_o2_mixed_precision_builds_and_trains_on_cpu():
    """model.amp_level=O2: float16 compute, float32 master weights, the same parameter names, finite steps."""
    from mindspore import amp
    import mindspore.nn as nn
    from fcn8s.losses import SegmentationCrossEntropy
    from fcn8s.config import ModelConfig
    from fcn8s.model import build_model
    from fcn8s.trainer import make_train_step
    ms.set_seed(1)
    fp32 = build_model(ModelConfig(amp_level="O0", fc_channels=16), "matmul")
    ms.set_seed(1)
    mixed = build_model(ModelConfig(amp_level="O2", fc_channels=16), "matmul")
    assert _shapes(mixed) == _shapes(fp32)  # O2 checkpoints load into O0 networks and back
    assert {p.dtype for p in mixed.get_parameters()} == {ms.float32}
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 21, size=(2, 32, 32)).astype(np.int32))
    fp32.set_train(False)
    mixed.set_train(False)
    expected, got = fp32(images).asnumpy(), mixed(images).asnumpy()
    assert got.dtype == np.float32
    difference = np.abs(got - expected).max() / np.abs(expected).max()
    assert 1e-6 < difference < 1e-2, difference  # float16 rounding, not float32's and not garbage
    mixed.set_train(True)
    optimizer = nn.Momentum(mixed.trainable_params(), learning_rate=0.01, momentum=0.9)
    step = make_train_step(mixed, SegmentationCrossEntropy(21, 255), optimizer,
                           amp.DynamicLossScaler(1024.0, 2, 50))
    weight = mixed.parameters_dict()["score_fr.weight"]
    before = weight.asnumpy().copy()
    for _ in range(2):
        loss, finite, *_ = step(images, labels)
        assert np.isfinite(float(loss.asnumpy())) and bool(finite.asnumpy())
    assert weight.dtype == ms.float32 and not np.array_equal(weight.asnumpy(), before)
