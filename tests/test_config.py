import os

import pytest

from fcn8s.config import Config, load_config, save_config
from fcn8s.errors import ConfigError
from tests.conftest import REPO, run_module

CONFIGS = os.path.join(REPO, "configs")


def test_voc_config_holds_the_seed_recipe():
    cfg = load_config(os.path.join(CONFIGS, "voc_fcn8s.yaml"))
    assert cfg.model.num_classes == 21
    assert (cfg.data.crop_size, cfg.data.min_scale, cfg.data.max_scale) == (512, 0.5, 2.0)
    assert cfg.data.image_mean == (103.53, 116.28, 123.675) and cfg.data.image_std == (57.375, 57.120, 58.395)
    assert (cfg.train.batch_size, cfg.train.momentum, cfg.train.weight_decay) == (4, 0.9, 1e-4)
    assert (cfg.train.lr, cfg.train.min_lr) == (0.05, 0.0005)
    assert cfg.data.ignore_label == 255
    # seed bug 9: the intended keywords, not 4 as the initial scale
    assert cfg.loss_scale.scale_factor == 4 and cfg.loss_scale.scale_window == 3000
    assert cfg.loss_scale.init_loss_scale == 65536


def test_cpu_smoke_config_is_small_and_stable():
    cfg = load_config(os.path.join(CONFIGS, "cpu_smoke.yaml"))
    assert cfg.data.crop_size == 64 and cfg.train.lr == 0.01 and cfg.run.device_target == "CPU"


def test_overrides_take_precedence_and_are_typed(tmp_path):
    cfg = load_config(os.path.join(CONFIGS, "cpu_smoke.yaml"), ["train.lr=0.02", "data.image_mean=[1, 2, 3]",
                                                                "run.mode=pynative", "train.max_steps=7"])
    assert cfg.train.lr == 0.02 and cfg.data.image_mean == (1.0, 2.0, 3.0)
    assert cfg.run.mode == "pynative" and cfg.train.max_steps == 7
    path = tmp_path / "resolved.yaml"
    save_config(cfg, str(path))
    assert load_config(str(path)) == cfg


def test_defaults_without_file_and_paths_are_absolute(monkeypatch, tmp_path):
    cfg = load_config()
    assert (cfg.train, cfg.model, cfg.loss_scale) == (Config().train, Config().model, Config().loss_scale)
    assert cfg.run.output_dir == os.path.abspath("runs/fcn8s")
    monkeypatch.setenv("FCN8S_LAUNCH_DIR", str(tmp_path))
    assert load_config(None, ["data.mindrecord_dir=mr"]).data.mindrecord_dir == str(tmp_path / "mr")


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", "unknown key 'train.lrr'"),
    ("bogus.x=1", "unknown key 'bogus'"),
    ("train.batch_size=abc", "train.batch_size: expected an integer"),
    ("train.batch_size=2.5", "train.batch_size: expected an integer"),
    ("train.batch_size=0", "train.batch_size: must be >= 1"),
    ("train.lr=0", "train.lr: must be > 0"),
    ("run.mode=eager", "run.mode: must be one of graph, pynative"),
    ("data.min_scale=3.0", "data.min_scale (3.0) must not exceed data.max_scale"),
    ("data.image_std=[1, 2]", "data.image_std: expected 3 values"),
    ("data.image_mean=5", "data.image_mean: expected a list"),
    ("data.crop_size=100", "data.crop_size: must be a multiple of 32"),
    ("model.fc_channels=0", "model.fc_channels: must be >= 1"),
    ("data.ignore_label=0", "data.ignore_label: must be 255, the value the dataset gives VOC's boundary pixels"),
    ("train=3", "train: expected a mapping"),
    ("train.lr", "expected KEY=VALUE"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(os.path.join(CONFIGS, "cpu_smoke.yaml"), [override])
    assert message in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(bad))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(listing))


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/missing.yaml"], "config file not found: configs/missing.yaml"),
    (["--config", "configs/cpu_smoke.yaml", "train.nope=1"], "unknown key 'train.nope'"),
    (["--config", "configs/cpu_smoke.yaml", "--set", "train.lr=-1"], "train.lr: must be > 0"),
    (["--config", "configs/cpu_smoke.yaml", "data.ignore_label=250"], "data.ignore_label: must be 255"),
])
@pytest.mark.parametrize("module", ["fcn8s.train", "fcn8s.eval"])
def test_cli_reports_one_line_and_exit_2(args, message, module):
    if module == "fcn8s.eval":
        args = ["--ckpt", "unused.ckpt", *args]
    result = run_module(module, *args, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {message}" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_every_cli_path_argument_is_taken_from_the_launch_dir(monkeypatch, tmp_path):
    """Under a launcher the rank's cwd is LOG_DIR/rank_K: paths must resolve against FCN8S_LAUNCH_DIR."""
    from fcn8s import build_dataset, eval as eval_cli, export, predict, train_args
    from fcn8s.config import LAUNCH_DIR_ENV

    monkeypatch.setenv(LAUNCH_DIR_ENV, str(tmp_path))
    monkeypatch.chdir(REPO)
    cases = [
        (train_args, ["--resume", "ck/a.ckpt", "--pretrained", "w.ckpt"],
         {"resume": "ck/a.ckpt", "pretrained": "w.ckpt"}),
        (eval_cli, ["--ckpt", "a.ckpt", "--out", "m.json"], {"ckpt": "a.ckpt", "out": "m.json"}),
        (predict, ["--ckpt", "a.ckpt", "--input", "img", "--out", "masks"],
         {"ckpt": "a.ckpt", "input": "img", "out": "masks"}),
        (export, ["--ckpt", "a.ckpt"], {"ckpt": "a.ckpt", "out": "fcn8s"}),
        (build_dataset, ["--voc-root", "VOC", "--sbd-root", "SBD", "--out", "mr"],
         {"voc_root": "VOC", "sbd_root": "SBD", "out": "mr"}),
    ]
    for module, argv, expected in cases:
        args = module.build_parser().parse_args(argv)
        assert {name: getattr(args, name) for name in expected} == {
            name: str(tmp_path / rel) for name, rel in expected.items()}, module.__name__
    assert train_args.build_parser().parse_args(["--resume", "auto"]).resume == "auto"
    assert load_config(None, ["model.pretrained=w.ckpt"]).model.pretrained == str(tmp_path / "w.ckpt")
