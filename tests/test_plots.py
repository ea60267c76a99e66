"""Training-curve and per-class IoU plots: real PNGs that decode, clear errors for bad input."""
import json
import os

import cv2
import numpy as np
import pytest

from fcn8s.errors import UserError
from fcn8s.plots import plot_class_iou, plot_training_curves, read_metrics
from tests.conftest import run_module


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def trainer_records(steps):
    """Records as Trainer._report writes them (images/s None for the compile-only first report)."""
    return [{"step": s, "epoch": 0, "loss": 2.0 / s, "lr": 0.01 * (1 - s / 100), "loss_scale": 2.0 ** (16 - s // 40),
             "step_seconds": None if s == 10 else 1.0, "images_per_second": None if s == 10 else 4.0 + s / 100}
            for s in steps]


def assert_png(path, min_bytes=5000):
    assert path.endswith(".png") and os.path.getsize(path) > min_bytes
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape[0] >= 300 and image.shape[1] >= 500
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10  # drawn, not blank


def test_training_curves_are_valid_pngs(tmp_path):
    metrics = write_jsonl(tmp_path / "metrics.jsonl", trainer_records(range(10, 101, 10)))
    paths = plot_training_curves(metrics, str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in paths] == ["loss.png", "lr.png", "loss_scale.png", "images_per_second.png"]
    for path in paths:
        assert_png(path)


def test_images_per_second_is_optional_and_resumed_steps_keep_the_last_record(tmp_path):
    records = [{k: v for k, v in r.items() if k != "images_per_second"} for r in trainer_records(range(10, 61, 10))]
    rerun = [dict(r, loss=99.0) for r in records[2:]]  # a resumed run logs steps 30.. again
    metrics = write_jsonl(tmp_path / "metrics.jsonl", records + rerun)
    assert [r["step"] for r in read_metrics(metrics)] == [10, 20, 30, 40, 50, 60]
    assert [r["loss"] for r in read_metrics(metrics)][2:] == [99.0] * 4
    paths = plot_training_curves(metrics, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["loss.png", "lr.png", "loss_scale.png"]


@pytest.mark.parametrize("content, message", [
    ("", "no metrics records"),
    ("\n\n", "no metrics records"),
    ('{"step": 1, "loss": 1.0, "lr": 0.1, "loss_scale": 1}\nnot json\n', "metrics.jsonl:2: not a JSON record"),
    ('{"step": 1, "loss": 1.0, "lr": 0.1}\n', "metrics.jsonl:1: record has no 'loss_scale'"),
    ('[1, 2]\n', "record has no 'step'"),
])
def test_bad_metrics_files(tmp_path, content, message):
    path = tmp_path / "metrics.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        plot_training_curves(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_metrics_file(tmp_path):
    with pytest.raises(UserError, match="metrics file not found"):
        plot_training_curves(str(tmp_path / "none.jsonl"), str(tmp_path))


def test_class_iou_bar_chart(tmp_path):
    summary = {"class_iou": [0.9, None, 0.25, 0.6, 0.0], "mean_iou": 0.4375,
               "class_names": ["background", "aeroplane", "bicycle", "bird", "boat"]}
    assert_png(plot_class_iou(summary, str(tmp_path / "iou.png")))
    with pytest.raises(UserError, match="5 class IoU values but 2 class names"):
        plot_class_iou(summary, str(tmp_path / "x.png"), names=["a", "b"])
    with pytest.raises(UserError, match="no per-class IoU"):
        plot_class_iou({"class_iou": []}, str(tmp_path / "x.png"))


def test_cli(tmp_path):
    metrics = write_jsonl(tmp_path / "metrics.jsonl", trainer_records(range(10, 51, 10)))
    eval_json = tmp_path / "m.eval.json"
    eval_json.write_text(json.dumps({"class_iou": [0.5, 0.7], "mean_iou": 0.6, "class_names": ["a", "b"]}))
    result = run_module("fcn8s.plots", "--metrics", metrics, "--eval-json", eval_json, "--out", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "p" / f"{n}.png")
                                     for n in ("loss", "lr", "loss_scale", "images_per_second", "class_iou")]
    bad = run_module("fcn8s.plots", "--metrics", tmp_path / "none.jsonl", "--out", tmp_path)
    assert bad.returncode == 2 and "error: metrics file not found" in bad.stderr and "Traceback" not in bad.stderr
    assert "--eval-json" in run_module("fcn8s.plots", "--help").stdout
