"""Pretrained VGG16-BN loading: real MindSpore VGG16-BN cells (model-zoo and mindcv layout) saved as
checkpoints with the real shapes, loaded into FCN-8s, compared layer by layer."""
import os

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from fcn8s.config import ModelConfig
from fcn8s.errors import UserError
from fcn8s.model import build_model
from fcn8s.pretrained import load_pretrained_backbone
from tests.conftest import HEAVY, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module

pytestmark = HEAVY

# torchvision / mindcv / model-zoo VGG16 configuration 'D', written out here independently of fcn8s.model.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
BACKBONE_PARAMS = 13 * 5  # conv weight + 4 BatchNorm parameters per conv


class VGG16BN(nn.Cell):
    """VGG16-BN laid out as both sources do: ``<features_attr>`` = [conv, bn, relu]*n + maxpool, ``classifier``."""

    def __init__(self, features_attr: str, conv_bias: bool, classifier: bool = True) -> None:
        super().__init__()
        layers, in_channels = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, pad_mode="pad", padding=1, has_bias=conv_bias),
                           nn.BatchNorm2d(v), nn.ReLU()]
                in_channels = v
        setattr(self, features_attr, nn.SequentialCell(layers))
        self.features_attr = features_attr
        if classifier:
            self.classifier = nn.SequentialCell([nn.Dense(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(p=0.5),
                                                 nn.Dense(4096, 4096), nn.ReLU(), nn.Dropout(p=0.5),
                                                 nn.Dense(4096, 1000)])

    def extract(self, x):
        return getattr(self, self.features_attr)(x)


def randomize(cell: nn.Cell, seed: int) -> None:
    """Distinct random values everywhere (variances positive, conv weights He-scaled)."""
    rng = np.random.default_rng(seed)
    for name, param in cell.parameters_and_names():
        shape = param.shape
        if name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("weight"):
            value = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / np.prod(shape[1:]))
        else:
            value = rng.normal(0.0, 0.1, shape)
        param.set_data(ms.Tensor(value.astype(np.float32)))


@pytest.fixture(scope="module", params=[("layers", True), ("features", False)], ids=["model-zoo", "mindcv"])
def vgg_checkpoint(request, tmp_path_factory):
    attr, conv_bias = request.param
    vgg = VGG16BN(attr, conv_bias)
    randomize(vgg, seed=7)
    vgg.set_train(False)
    path = str(tmp_path_factory.mktemp("vgg") / f"vgg16_bn_{attr}.ckpt")
    ms.save_checkpoint(vgg, path)
    yield vgg, path
    os.remove(path)  # 554 MB: freed once the module's tests of this naming are done


@pytest.fixture(scope="module")
def loaded(vgg_checkpoint):
    vgg, path = vgg_checkpoint
    net = build_model(ModelConfig(), "matmul")
    report = load_pretrained_backbone(net, path)
    net.set_train(False)
    return vgg, net, report


@pytest.mark.slow
def test_real_names_are_detected_and_counted(loaded, vgg_checkpoint):
    vgg, net, report = loaded
    assert report.naming == {"layers": "model-zoo", "features": "mindcv"}[vgg.features_attr]
    in_file = set(ms.load_checkpoint(vgg_checkpoint[1]))
    assert f"{vgg.features_attr}.1.gamma" in in_file and "classifier.0.weight" in in_file  # the real layout
    # 65 backbone + conv6/conv7 weights + conv6/conv7 moving_mean (fc biases folded)
    assert len(report.loaded) == BACKBONE_PARAMS + 4
    assert "conv6.1.moving_mean" in report.loaded and "conv6.1.gamma" in report.missing
    assert sorted(report.loaded + report.missing) == sorted(net.parameters_dict())
    assert {"score_fr.weight", "upscore8.weight"} <= set(report.missing)
    assert sorted(report.unexpected) == ["classifier.6.bias", "classifier.6.weight"]


@pytest.mark.slow
def test_weights_are_copied_exactly(loaded):
    vgg, net, _ = loaded
    src = {name: p.asnumpy() for name, p in vgg.parameters_and_names()}
    prefix = vgg.features_attr
    np.testing.assert_array_equal(net.conv1[0].weight.asnumpy(), src[f"{prefix}.0.weight"])
    np.testing.assert_array_equal(net.conv2[3].weight.asnumpy(), src[f"{prefix}.10.weight"])  # block 2, conv 2
    np.testing.assert_array_equal(net.conv5[7].gamma.asnumpy(), src[f"{prefix}.41.gamma"])  # last BN
    np.testing.assert_array_equal(net.conv6[0].weight.asnumpy().reshape(4096, -1), src["classifier.0.weight"])
    np.testing.assert_array_equal(net.conv7[0].weight.asnumpy()[:, :, 0, 0], src["classifier.3.weight"])


@pytest.mark.slow
def test_backbone_features_equal_the_vgg_features(loaded):
    """Inference-mode pool5 of FCN-8s equals the source VGG16-BN's features (conv biases folded exactly)."""
    vgg, net, _ = loaded
    x = ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32))
    expected = vgg.extract(x).asnumpy()
    h = x
    for block, pool in ((net.conv1, net.pool1), (net.conv2, net.pool2), (net.conv3, net.pool3),
                        (net.conv4, net.pool4), (net.conv5, net.pool5)):
        h = pool(block(h))
    np.testing.assert_allclose(h.asnumpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_conv6_conv7_compute_fc6_fc7(loaded):
    """FCN paper: fc6 = 'same' 7x7 conv at the centre of a 7x7 map, fc7 = 1x1 conv (BN with folded bias)."""
    vgg, net, _ = loaded
    pool5 = np.random.default_rng(1).normal(size=(1, 512, 7, 7)).astype(np.float32)
    eps_scale = 1.0 / np.sqrt(1.0 + net.conv6[1].eps)  # fresh BN: variance 1, gamma 1, beta 0
    fc6 = vgg.classifier[1](vgg.classifier[0](ms.Tensor(pool5.reshape(1, -1)))).asnumpy()
    conv6 = net.conv6(ms.Tensor(pool5)).asnumpy()
    np.testing.assert_allclose(conv6[:, :, 3, 3], fc6 * eps_scale, rtol=1e-4, atol=1e-4 * np.abs(fc6).max())
    fc7 = vgg.classifier[4](vgg.classifier[3](ms.Tensor(conv6[:, :, 3, 3]))).asnumpy()
    conv7 = net.conv7(ms.Tensor(conv6)).asnumpy()
    np.testing.assert_allclose(conv7[:, :, 3, 3], fc7 * eps_scale, rtol=1e-4, atol=1e-4 * np.abs(fc7).max())


@pytest.mark.slow
def test_fc6_fc7_do_not_fit_a_narrower_conv6(vgg_checkpoint):
    net = build_model(ModelConfig(fc_channels=SMALL_FC_CHANNELS), "matmul")
    path = vgg_checkpoint[1]
    expect_error(net, path, path, "conv6.0.weight would get shape (4096, 512, 7, 7)", "(16, 512, 7, 7)")


def save(path, arrays):
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in arrays.items()], str(path))
    return str(path)


def backbone_arrays(prefix="features", skip=(), override=None):
    """A features-only VGG16-BN checkpoint (name -> array), names from a real cell."""
    arrays = {n: p.asnumpy() for n, p in VGG16BN(prefix, False, classifier=False).parameters_and_names()
              if n not in skip}
    arrays.update(override or {})
    return arrays


@pytest.fixture(scope="module")
def fcn():
    """One (narrow) FCN-8s for the tests below (a refused file changes nothing, as expect_error checks)."""
    return build_model(ModelConfig(fc_channels=SMALL_FC_CHANNELS), "matmul")


def test_features_only_checkpoint_leaves_conv6_conv7(fcn, tmp_path):
    net = fcn
    conv6_before = net.conv6[0].weight.asnumpy().copy()
    arrays = backbone_arrays()
    report = load_pretrained_backbone(net, save(tmp_path / "f.ckpt", arrays))
    assert len(report.loaded) == BACKBONE_PARAMS and report.unexpected == []
    np.testing.assert_array_equal(net.conv3[6].weight.asnumpy(), arrays["features.20.weight"])
    assert "conv6.0.weight" in report.missing
    np.testing.assert_array_equal(net.conv6[0].weight.asnumpy(), conv6_before)


def expect_error(net, path, *fragments):
    before = net.conv1[0].weight.asnumpy().copy()
    with pytest.raises(UserError) as err:
        load_pretrained_backbone(net, str(path))
    for fragment in fragments:
        assert fragment in str(err.value)
    np.testing.assert_array_equal(net.conv1[0].weight.asnumpy(), before)  # nothing half-loaded


def test_shape_mismatch_names_parameter_and_file(fcn, tmp_path):
    bad = backbone_arrays(override={"features.7.weight": np.zeros((128, 64, 5, 5), np.float32)})
    path = save(tmp_path / "bad.ckpt", bad)
    expect_error(fcn, path, path, "features.7.weight has shape (128, 64, 5, 5)", "conv2.0.weight needs (128, 64, 3, 3)")


def test_cifar_classifier_is_refused(fcn, tmp_path):
    arrays = backbone_arrays("layers", override={"classifier.0.weight": np.zeros((4096, 512), np.float32)})
    path = save(tmp_path / "cifar.ckpt", arrays)
    expect_error(fcn, path, "classifier.0.weight has shape (4096, 512)", "ImageNet 224x224")


def test_vgg_without_batchnorm_is_refused(fcn, tmp_path):
    arrays = backbone_arrays(skip=("features.1.gamma",))
    expect_error(fcn, save(tmp_path / "nobn.ckpt", arrays), "missing features.1.gamma", "VGG16-BN")


def test_unknown_naming_and_unreadable_files(fcn, tmp_path):
    resnet = save(tmp_path / "resnet.ckpt", {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    expect_error(fcn, resnet, resnet, "'layers.0.weight' (model-zoo)", "'features.0.weight' (mindcv)")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_error(fcn, garbage, str(garbage), "not a readable MindSpore checkpoint")
    full = backbone_arrays()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(save(tmp_path / "whole.ckpt", full), "rb").read()[:100000])
    expect_error(fcn, truncated, "not a readable MindSpore checkpoint")
    expect_error(fcn, tmp_path / "absent.ckpt", "pretrained checkpoint not found")


def test_cli_checks_a_file_and_prints_the_table(tmp_path):
    path = save(tmp_path / "f.ckpt", backbone_arrays("layers"))
    result = run_module("fcn8s.pretrained", path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "naming model-zoo: loaded 65, missing" in result.stdout
    table = run_module("fcn8s.pretrained", "--table", "mindcv")
    assert "features.7.weight -> conv2.0.weight (128, 64, 3, 3)" in table.stdout
    assert "classifier.0.weight -> conv6.0.weight (4096, 512, 7, 7)" in table.stdout
    bad = run_module("fcn8s.pretrained", str(tmp_path / "none.ckpt"))
    assert bad.returncode == 2 and "error: pretrained checkpoint not found" in bad.stderr


def test_train_cli_starts_from_pretrained_weights(mindrecord_dir, tmp_path):
    arrays = backbone_arrays()
    path = save(tmp_path / "vgg16_bn_features.ckpt", arrays)
    args = ["--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={mindrecord_dir}", "train.max_steps=1",
            *SMALL_NETWORK]  # the backbone fits any conv6/conv7 width
    result = run_module("fcn8s.train", *args, f"run.output_dir={tmp_path / 'run'}", "--pretrained", path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"vgg16_bn_features.ckpt: loaded {BACKBONE_PARAMS}, missing" in result.stderr
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"\0" * 64)
    result = run_module("fcn8s.train", *args, f"run.output_dir={tmp_path / 'run2'}", f"model.pretrained={bad}")
    assert result.returncode == 2 and "broken.ckpt" in result.stderr and "Traceback" not in result.stderr
