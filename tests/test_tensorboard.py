"""TensorBoard scalars of real training runs, read back with tensorboard's EventAccumulator."""
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import SMALL_NETWORK, run_module

STEPS = 6


def _train(mindrecord_dir, out, *extra, env=None):
    return run_module("fcn8s.train", "--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={mindrecord_dir}",
                      f"run.output_dir={out}", "train.log_interval=1", f"train.max_steps={STEPS}",
                      "train.batch_size=2", "train.eval_interval=3", "train.checkpoint_interval=4",
                      "eval.image_size=64", *SMALL_NETWORK, *extra, env=env)


def _events(out):
    acc = EventAccumulator(os.path.join(out, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(event.step, event.value) for event in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _records(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def _assert_train_scalars_match(out):
    events, records = _events(out), _records(out)
    for key in ("loss", "lr", "loss_scale", "images_per_second", "step_seconds"):
        expected = [(r["step"], r[key]) for r in records if r[key] is not None]
        got = events[f"train/{key}"]
        assert [step for step, _ in got] == [step for step, _ in expected], key
        assert [value for _, value in got] == pytest.approx([value for _, value in expected], rel=1e-6), key
    return events


def _assert_val_scalars_match(out, events):
    meta = json.load(open(os.path.join(out, "checkpoints", "fcn8s-step00000003.json")))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert events[f"val/{key}"] == [(3, pytest.approx(meta["metrics"][key], rel=1e-6))], key
    class_tags = [tag for tag in events if tag.startswith("val/class_iou/")]
    assert "val/class_iou/background" in class_tags and len(class_tags) >= 2


def _assert_every_step_once_equal_to_the_records(out):
    events = _assert_train_scalars_match(out)
    assert [step for step, _ in events["train/loss"]] == list(range(1, STEPS + 1))
    _assert_val_scalars_match(out, events)


@pytest.mark.slow
def test_events_equal_metrics_jsonl_and_val_metrics(mindrecord_dir, tmp_path):
    out = tmp_path / "run"
    result = _train(mindrecord_dir, out)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_every_step_once_equal_to_the_records(out)


@pytest.mark.slow
def test_resume_appends_without_duplicate_steps(mindrecord_dir, tmp_path):
    out = tmp_path / "run"
    crashed = _train(mindrecord_dir, out, env={"FCN8S_FAULT": "raise:rank=0:step=5"})  # a crash after step 5
    assert crashed.returncode == 1, crashed.stderr[-3000:]
    assert [step for step, _ in _events(out)["train/loss"]] == [1, 2, 3, 4, 5]  # step 5: after the checkpoint
    resumed = _train(mindrecord_dir, out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 4" in resumed.stderr
    assert len(os.listdir(out / "tensorboard")) == 2  # the resumed run appends a new event file
    _assert_every_step_once_equal_to_the_records(out)


@pytest.mark.slow
def test_tensorboard_off(mindrecord_dir, tmp_path):
    out = tmp_path / "run"
    result = run_module("fcn8s.train", "--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={mindrecord_dir}",
                        f"run.output_dir={out}", "train.max_steps=1", "train.batch_size=2", "train.eval_interval=0",
                        "run.tensorboard=false", *SMALL_NETWORK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(out / "metrics.jsonl") and not os.path.exists(out / "tensorboard")
