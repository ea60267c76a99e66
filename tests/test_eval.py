"""Eval with test-time augmentation: scales x flip, canvases per scale, exact flip equivariance, CLI + JSON + plot."""
import json
import os
import subprocess

import cv2
import numpy as np
import pytest

import mindspore as ms

from fcn8s.data.voc import IGNORE_LABEL, list_voc_samples, read_label_png
from fcn8s.inference import Predictor, canvas_size
from fcn8s.model import FCN8s
from tests.conftest import PYTHON, REPO, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module

CONFIG = "configs/cpu_smoke.yaml"
MEAN, STD = (103.53, 116.28, 123.675), (57.375, 57.120, 58.395)


class IdentityNet:
    """Stands in for the network: logits = the normalised input (3 'classes'); records input shapes."""

    def __init__(self):
        self.shapes = []

    def set_train(self, mode):
        assert mode is False

    def __call__(self, x):
        self.shapes.append(tuple(x.shape))
        return x


def smooth_image(height, width):
    """A BGR image whose per-pixel argmax channel changes smoothly (resampling barely changes it)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [128 + 100 * np.sin(x / 9.0), 128 + 100 * np.cos(y / 11.0), 128 + 100 * np.sin((x + y) / 13.0)]
    return np.clip(np.stack(planes, axis=2), 0, 255).astype(np.uint8)


def test_each_scale_runs_on_its_own_canvas_with_flips_batched():
    net = IdentityNet()
    predictor = Predictor(net, 96, MEAN, STD)
    predictor.probabilities_tta([smooth_image(96, 80)], 2, scales=(0.5, 1.0, 1.75), flip=True)
    # 0.5 -> 48 px fits a 64 canvas; 1.75 -> 168 px on a 192 canvas instead of being shrunk back to 96,
    # in batches of 1 there (4x the pixels of the 96 canvas); image and mirror share a batch where they fit.
    assert net.shapes == [(2, 3, 64, 64), (2, 3, 96, 96), (1, 3, 192, 192), (1, 3, 192, 192)]
    assert [canvas_size(96, s) for s in (0.25, 0.5, 0.75, 1.0, 1.25, 1.75)] == [32, 64, 96, 96, 128, 192]


def test_multi_scale_flip_is_aligned_with_the_image():
    """With logits = pixels, every scale and the mirror must agree with scale 1 (no shift, crop or flip error)."""
    predictor = Predictor(IdentityNet(), 96, MEAN, STD)
    image = smooth_image(90, 71)
    single = predictor.probabilities_tta([image], 1)[0]
    for scales, flip in (((1.0,), True), ((0.5, 0.75, 1.25, 1.75), False), ((0.5, 1.75), True)):
        probs = predictor.probabilities_tta([image], 3, scales, flip)[0]
        assert probs.shape == (90, 71, 3)
        np.testing.assert_allclose(probs.sum(axis=2), 1.0, rtol=1e-5)
        assert np.abs(probs - single).mean() < 0.01
        assert (probs.argmax(axis=2) == single.argmax(axis=2)).mean() > 0.97


@pytest.fixture(scope="module")
def fcn_predictor():
    ms.set_seed(5)
    return Predictor(FCN8s(21, conv_impl="matmul", fc_channels=SMALL_FC_CHANNELS), 64, MEAN, STD)


def test_flip_tta_is_exactly_flip_equivariant(fcn_predictor):
    """flip-TTA(mirror(x)) == mirror(flip-TTA(x)) bit for bit at scale 1; the bare network is not equivariant."""
    image = np.random.default_rng(2).integers(0, 255, (50, 61, 3), dtype=np.uint8)
    mirror = np.ascontiguousarray(image[:, ::-1])
    probs, probs_of_mirror = fcn_predictor.probabilities_tta([image, mirror], 2, (1.0,), flip=True)
    np.testing.assert_array_equal(probs_of_mirror, probs[:, ::-1])
    plain, plain_of_mirror = fcn_predictor.probabilities_tta([image, mirror], 2, (1.0,), flip=False)
    assert np.abs(plain_of_mirror - plain[:, ::-1]).max() > 1e-3  # so the check above can fail
    labels, labels_of_mirror = fcn_predictor.predict_tta([image, mirror], 2, (1.0,), flip=True)
    np.testing.assert_array_equal(labels_of_mirror, labels[:, ::-1])


def test_multi_scale_flip_is_flip_equivariant_up_to_resampling(fcn_predictor):
    image = np.random.default_rng(3).integers(0, 255, (50, 61, 3), dtype=np.uint8)
    mirror = np.ascontiguousarray(image[:, ::-1])
    probs, probs_of_mirror = fcn_predictor.probabilities_tta([image, mirror], 2, (0.75, 1.25), flip=True)
    np.testing.assert_allclose(probs_of_mirror, probs[:, ::-1], atol=1e-4)


def test_single_scale_tta_is_the_plain_prediction(fcn_predictor):
    images = [np.random.default_rng(4).integers(0, 255, shape, dtype=np.uint8) for shape in ((40, 64, 3), (64, 33, 3))]
    plain = fcn_predictor.predict(images, 2)
    for got, expected in zip(fcn_predictor.predict_tta(images, 2), plain):
        np.testing.assert_array_equal(got, expected)
    probs = fcn_predictor.probabilities_tta(images, 2)
    for got, expected in zip(probs, plain):
        assert (got.argmax(axis=2) == expected).mean() > 0.999  # softmax is monotonic (ties aside)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ms.set_seed(6)
    path = str(tmp_path_factory.mktemp("ckpt") / "net.ckpt")
    ms.save_checkpoint(FCN8s(21, fc_channels=SMALL_FC_CHANNELS), path)
    yield path
    os.remove(path)


def labelled_pixels(voc_tree):
    return sum(int((read_label_png(s.label_path) != IGNORE_LABEL).sum()) for s in list_voc_samples(voc_tree, "val"))


@pytest.mark.slow
def test_eval_cli_multi_scale_flip_end_to_end(checkpoint, voc_tree, mindrecord_dir, tmp_path):
    out = tmp_path / "tta.json"
    result = run_module("fcn8s.eval", "--config", CONFIG, "--ckpt", checkpoint, "--out", out,
                        f"data.mindrecord_dir={mindrecord_dir}", "eval.image_size=96", "eval.batch_size=4",
                        *SMALL_NETWORK, "--scales", "0.5", "1.25", "--flip")  # each scale is a graph to compile
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads(out.read_text())
    assert metrics["scales"] == [0.5, 1.25] and metrics["flip"] is True
    assert metrics["pixels"] == labelled_pixels(voc_tree)  # every val image once, at original size
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert 0.0 <= metrics[key] <= 1.0
    assert len(metrics["class_iou"]) == 21 and "scales 0.5 1.25, flip" in result.stdout
    assert "per-class IoU:" in result.stdout and "background" in result.stdout
    plot = cv2.imread(metrics["plot"])
    assert metrics["plot"] == str(tmp_path / "tta.class_iou.png") and plot is not None and plot.shape[1] > 500


def test_eval_cli_single_scale_no_plot_and_bad_scales(checkpoint, mindrecord_dir, tmp_path):
    out = tmp_path / "plain.json"
    result = run_module("fcn8s.eval", "--config", CONFIG, "--ckpt", checkpoint, "--out", out, "--no-plot",
                        f"data.mindrecord_dir={mindrecord_dir}", "eval.image_size=96", *SMALL_NETWORK)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads(out.read_text())
    assert metrics["scales"] == [1.0] and metrics["flip"] is False and "plot" not in metrics
    assert list(tmp_path.iterdir()) == [out]
    for args, message in ((["--scales", "0"], "scale must be in (0, 4.0], got 0"),
                          (["--scales", "1.0", "eval.image_size=96"], "put KEY=VALUE overrides before --scales")):
        bad = run_module("fcn8s.eval", "--config", CONFIG, "--ckpt", checkpoint, *SMALL_NETWORK, *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def odd_val(tmp_path_factory):
    """(VOC tree, dataset) with 7 val images: neither 2 nor 3 ranks divide them."""
    from fcn8s.build_dataset import build
    from fcn8s.data.synthetic import generate

    root = str(tmp_path_factory.mktemp("odd") / "VOC2012")
    generate(root, num_train=4, num_val=7, num_classes=5, seed=4)
    out = str(tmp_path_factory.mktemp("odd_mr") / "dataset")
    build(root, out, shards=2, workers=1)
    return root, out


def launch_eval(nproc, log_dir, *eval_args, cwd=REPO):
    return subprocess.run([PYTHON, "-m", "fcn8s.launch", "--nproc", str(nproc), "--log-dir", str(log_dir),
                           "--module", "fcn8s.eval", "--", "--config", os.path.join(REPO, CONFIG), "--no-plot",
                           "eval.image_size=96", *SMALL_NETWORK, *map(str, eval_args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": REPO})


@pytest.mark.slow
def test_distributed_eval_scores_every_image_once(checkpoint, odd_val, tmp_path):
    """1, 2 and 3 ranks through the launcher give the same metrics, every labelled val pixel counted once."""
    voc_tree, dataset = odd_val
    results = []
    for nproc in (1, 2, 3):
        out = tmp_path / f"metrics_{nproc}.json"
        result = launch_eval(nproc, tmp_path / f"logs_{nproc}", "--ckpt", checkpoint, "--out", out,
                             "--set", f"data.mindrecord_dir={dataset}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        results.append(json.loads(out.read_text()))
    assert results[0]["pixels"] == labelled_pixels(voc_tree)
    assert results[1] == results[0] and results[2] == results[0]


@pytest.mark.slow
def test_relative_paths_under_the_launcher_are_taken_from_the_launch_dir(checkpoint, mindrecord_dir, tmp_path):
    """The rank runs in LOG_DIR/rank_0; --ckpt, --out and data.mindrecord_dir are relative to where we launched."""
    os.symlink(checkpoint, tmp_path / "net.ckpt")
    os.symlink(mindrecord_dir, tmp_path / "dataset")
    result = launch_eval(1, "logs", "--ckpt", "net.ckpt", "--out", "metrics.json", "--set", "data.mindrecord_dir=dataset",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(tmp_path / "net.ckpt") and os.listdir(tmp_path / "logs" / "rank_0") == []
