import numpy as np
import pytest

import mindspore as ms

from fcn8s.checkpoint import load_weights
from fcn8s.model import FCN8s, bilinear_kernel
from tests.seed_reference import SeedFCN8s


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


def test_wrong_class_count_checkpoint_is_a_clear_error(tmp_path):
    from fcn8s.errors import UserError
    small = FCN8s(5)
    path = str(tmp_path / "five.ckpt")
    ms.save_checkpoint(small, path)
    with pytest.raises(UserError, match=r"five.ckpt: parameter score_fr.weight has shape \(5,"):
        load_weights(FCN8s(21), path)


def test_bilinear_initialisation():
    kernel = bilinear_kernel(3, 4)
    expected_1d = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(kernel[1, 1], np.outer(expected_1d, expected_1d))
    assert kernel[0, 1].sum() == 0  # no cross-channel mixing
    net = FCN8s(21)
    np.testing.assert_array_equal(net.upscore8.weight.asnumpy(), bilinear_kernel(21, 16))


def test_upsampler_reproduces_constant_maps():
    """A bilinear transposed conv maps a constant interior to the same constant (x2 and x8)."""
    net = FCN8s(2)
    x = ms.Tensor(np.full((1, 2, 6, 6), 3.0, np.float32))
    up2 = net.upscore2(x).asnumpy()
    assert up2.shape == (1, 2, 12, 12)
    np.testing.assert_allclose(up2[:, :, 2:-2, 2:-2], 3.0, rtol=1e-5)
    up8 = net.upscore8(x).asnumpy()
    assert up8.shape == (1, 2, 48, 48)
    np.testing.assert_allclose(up8[:, :, 8:-8, 8:-8], 3.0, rtol=1e-5)


@pytest.mark.parametrize("height, width", [(64, 96), (32, 32)])
def test_output_keeps_input_size(our_net, height, width):
    our_net.set_train(False)
    out = our_net(ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)))
    assert out.shape == (2, 21, height, width)
    assert np.isfinite(out.asnumpy()).all()
