"""predict and export CLIs with real processes (an untrained network is enough to test the plumbing)."""

import cv2
import numpy as np
import pytest
from PIL import Image

import mindspore as ms
import mindspore.nn as nn

from fcn8s.checkpoint import load_weights
from fcn8s.model import FCN8s
from fcn8s.predict import overlay
from tests.conftest import REPO, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module

CONFIG = "configs/cpu_smoke.yaml"
SMALL = ("--config", CONFIG, *SMALL_NETWORK)  # KEY=VALUE overrides right after the config file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "net.ckpt")
    ms.save_checkpoint(FCN8s(21, fc_channels=SMALL_FC_CHANNELS), path)
    return path


def test_predict_any_size_writes_palette_masks_and_overlays(checkpoint, voc_tree, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("tall", (131, 47, 3)), ("wide", (40, 150, 3))):  # not multiples of 32
        cv2.imwrite(str(images / f"{name}.jpg"), rng.integers(0, 255, shape, dtype=np.uint8))
    out = tmp_path / "pred"
    result = run_module("fcn8s.predict", *SMALL, "--ckpt", checkpoint, "--input", str(images),
                        "--out", str(out), "--flip", "--scales", "0.75", "1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (height, width) in (("tall", (131, 47)), ("wide", (40, 150))):
        with Image.open(out / f"{name}.png") as mask:
            assert mask.mode == "P" and mask.size == (width, height)
            assert np.array(mask).max() < 21
        assert cv2.imread(str(out / f"{name}_overlay.png")).shape == (height, 2 * width, 3)


def test_overlay_shows_the_original_image_not_a_normalised_one():
    image = np.full((4, 5, 3), 200, np.uint8)
    side = overlay(image, np.zeros((4, 5), np.uint8))
    np.testing.assert_array_equal(side[:, :5], image)  # left half: untouched pixels
    np.testing.assert_array_equal(side[:, 5:], np.full((4, 5, 3), 100, np.uint8))  # half of black background


@pytest.mark.parametrize("args, message", [
    (["--input", "nowhere.jpg"], f"error: input not found: {REPO}/nowhere.jpg"),  # relative to where we ran
    (["--input", "configs"], "no images"),
    (["--input", "configs/cpu_smoke.yaml"], "not a readable image"),
    (["--input", "configs", "--scales", "-1"], "scale must be in (0, 4.0], got -1"),
])
def test_predict_input_errors(checkpoint, tmp_path, args, message):
    result = run_module("fcn8s.predict", *SMALL, "--ckpt", checkpoint, "--out", str(tmp_path), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr


def test_exported_mindir_matches_the_network(checkpoint, tmp_path):
    out = str(tmp_path / "fcn8s")
    result = run_module("fcn8s.export", *SMALL, "--ckpt", checkpoint, "--size", "64", "96", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    graph = nn.GraphCell(ms.load(out + ".mindir"))
    net = FCN8s(21, fc_channels=SMALL_FC_CHANNELS)
    load_weights(net, checkpoint)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).normal(size=(1, 3, 64, 96)).astype(np.float32))
    expected = net(x).asnumpy()
    np.testing.assert_allclose(graph(x).asnumpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("args, message", [
    (["--size", "50", "64"], "--size must be positive multiples of 32"),
    (["--format", "AIR"], "AIR export needs an Ascend device"),
])
def test_export_errors(checkpoint, tmp_path, args, message):
    result = run_module("fcn8s.export", *SMALL, "--ckpt", checkpoint, "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2 and message in result.stderr
