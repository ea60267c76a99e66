"""predict and export CLIs with real processes (an untrained network is enough to test the plumbing)."""
import glob
import os

import cv2
import numpy as np
import onnxruntime
import pytest
from PIL import Image

import mindspore as ms
import mindspore.nn as nn

from fcn8s.checkpoint import load_weights
from fcn8s.config import load_config
from fcn8s.data.transforms import prepare_eval_image
from fcn8s.model import FCN8s
from fcn8s.onnx_compat import SubpixelUpsample
from fcn8s.predict import overlay
from tests.conftest import REPO, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module

CONFIG = "configs/cpu_smoke.yaml"
SMALL = ("--config", CONFIG, *SMALL_NETWORK)  # KEY=VALUE overrides right after the config file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "net.ckpt")
    ms.set_seed(1)  # an initialisation whose masks vary with the image (some seeds predict one class everywhere)
    ms.save_checkpoint(FCN8s(21, fc_channels=SMALL_FC_CHANNELS), path)
    yield path
    os.remove(path)


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


@pytest.mark.slow
def test_batched_predictions_equal_one_image_per_call(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    # Five sizes, 3 per call (a partial last batch); two are larger than the 96 px canvas and get shrunk.
    for i, shape in enumerate(((131, 47), (40, 150), (96, 96), (200, 120), (33, 33))):
        noise = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
        cv2.imwrite(str(images / f"im{i}.jpg"), cv2.GaussianBlur(noise, (7, 7), 2))
    outputs = {}
    for batch_size in (1, 3):
        out = tmp_path / f"batch{batch_size}"
        result = run_module("fcn8s.predict", *SMALL, "--ckpt", checkpoint, "--input", str(images),
                            "--out", str(out), "--batch-size", batch_size)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"5 image(s), {batch_size} per network call" in result.stderr
        outputs[batch_size] = {path.name: path.read_bytes() for path in sorted(out.iterdir())}
    assert len(outputs[1]) == 10 and outputs[3] == outputs[1]  # masks and overlays, byte for byte
    masks = [np.array(Image.open(tmp_path / "batch1" / f"im{i}.png")) for i in range(5)]
    assert all(len(np.unique(mask)) > 1 for mask in masks)  # not a constant map that would match anyway


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
    (["--input", "configs", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got '0'"),
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


def test_subpixel_upsample_equals_the_transposed_convolution():
    rng = np.random.default_rng(3)
    for kernel, stride in ((4, 2), (16, 8)):
        layer = nn.Conv2dTranspose(3, 5, kernel, stride=stride)
        layer.weight.set_data(ms.Tensor(rng.normal(size=(3, 5, kernel, kernel)).astype(np.float32)))
        x = ms.Tensor(rng.normal(size=(2, 3, 4, 6)).astype(np.float32))
        expected = layer(x).asnumpy()
        np.testing.assert_allclose(SubpixelUpsample(layer)(x).asnumpy(), expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow
def test_exported_onnx_runs_in_onnxruntime_with_the_networks_logits(checkpoint, voc_tree, tmp_path):
    out = str(tmp_path / "fcn8s")
    result = run_module("fcn8s.export", *SMALL, "--ckpt", checkpoint, "--format", "ONNX", "--size", "64", "96",
                        "--batch", "2", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = load_config(CONFIG)
    photos = sorted(glob.glob(os.path.join(voc_tree, "JPEGImages", "*.jpg")))[:2]
    canvases = [prepare_eval_image(cv2.imread(p), 96, cfg.data.image_mean, cfg.data.image_std)[0] for p in photos]
    x = np.stack(canvases)[:, :, :64]  # two real images, normalised as predict does, on a 64 x 96 input
    session = onnxruntime.InferenceSession(out + ".onnx", providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": x})
    net = FCN8s(21, fc_channels=SMALL_FC_CHANNELS)
    load_weights(net, checkpoint)
    net.set_train(False)
    expected = net(ms.Tensor(x)).asnumpy()
    assert logits.shape == expected.shape == (2, 21, 64, 96)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("file_format, suffix", [("ONNX", ".onnx"), ("MINDIR", ".mindir")])
def test_export_write_failure_is_one_line(checkpoint, tmp_path, file_format, suffix):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "net"
    result = run_module("fcn8s.export", *SMALL, "--ckpt", checkpoint, "--format", file_format, "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: cannot create the directory of {out}{suffix}: [Errno 17] File exists" in result.stderr
