"""Shared fixtures: a small synthetic VOC tree and its MindRecord build (built once per session)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
# Tests of plumbing (launchers, restarts, retention, CLI errors) train this small FCN-8s: conv6/conv7
# 16 wide instead of 4096 (15 M parameters instead of 134.5 M) on 32 px crops, about 5x faster with
# checkpoints of 80 MB instead of 1 GB. The tutorial's network keeps its own tests: seed
# compatibility (test_model), the conv fast path (test_fast_conv), one resume (test_resume),
# pretrained weights, the container and Slurm jobs.
SMALL_FC_CHANNELS = 16
SMALL_NETWORK = (f"model.fc_channels={SMALL_FC_CHANNELS}", "data.crop_size=32")


def run_module(module, *args, timeout=900, env=None, check=False):
    """Run ``python -m module args`` from the repo root; returns the CompletedProcess."""
    result = subprocess.run([PYTHON, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def pytest_collection_modifyitems(items):
    """Run the multi-server tests (four FCN-8s processes at a time) before any in-process network."""
    items.sort(key=lambda item: item.get_closest_marker("multiserver") is None)


@pytest.fixture(scope="session")
def voc_tree(tmp_path_factory):
    from fcn8s.data.synthetic import generate
    root = str(tmp_path_factory.mktemp("voc") / "VOC2012")
    generate(root, num_train=24, num_val=6, num_classes=5, seed=3)
    return root


@pytest.fixture(scope="session")
def mindrecord_dir(voc_tree, tmp_path_factory):
    from fcn8s.build_dataset import build
    out = str(tmp_path_factory.mktemp("mr") / "dataset")
    build(voc_tree, out, shards=2, workers=1)
    return out
