"""Shared fixtures (a small synthetic VOC tree and its MindRecord build, once per session) and the rules
that let ``make test`` run the suite in parallel (pytest-xdist, ``--dist loadgroup``):

- tests that share a host-wide resource are one ``xdist_group`` (one worker runs them in turn):
  ``netns`` (the simulated servers and their Slurm), ``slurm`` (the host's Slurm node) and
  :data:`HEAVY` (memory and disk);
- a test marked ``alone`` (it compares timings) runs while no other test runs: see :func:`cpu_share`;
- processes a test must find again are tagged with :func:`job_tag`, unique across workers.
"""
import contextlib
import fcntl
import os
import subprocess
import sys
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
# Tests of plumbing (launchers, restarts, retention, CLI errors) train this small FCN-8s: conv6/conv7
# 16 wide instead of 4096 (15 M parameters instead of 134.5 M) on 32 px crops, about 5x faster with
# checkpoints of ~120 MB (weights and momentum) instead of 1.08 GB. The tutorial's network keeps its own tests: seed
# compatibility (test_model), the conv fast path (test_fast_conv), one resume (test_resume),
# pretrained weights, the container and Slurm jobs.
# These jobs also run the fused train step only (train.straggler_intervals=0): the straggler check compiles
# the step's two halves as a second graph, a 3-step 2-rank job's CPU 31 s -> 19.5 s; test_stragglers turns it on.
SMALL_FC_CHANNELS = 16
SMALL_NETWORK = (f"model.fc_channels={SMALL_FC_CHANNELS}", "data.crop_size=32", "train.straggler_intervals=0")
# After a rank fails, the survivors (blocked in a collective with the dead one) wait out the launcher's stop grace
# before SIGKILL: 10 s in production, 2 s in the suite's jobs (~25 failure stops; stopping after the grace is
# tested on its own in test_restart). The signal grace keeps its default.
os.environ.setdefault("FCN8S_STOP_GRACE_SECONDS", "2")


def run_module(module, *args, timeout=900, env=None, check=False):
    """Run ``python -m module args`` from the repo root; returns the CompletedProcess."""
    result = subprocess.run([PYTHON, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


# The tests that hold the tutorial's network in memory (a worker never gives an in-process network back to the
# OS) or its ~1 GB checkpoints or the container images on disk: one worker runs them one after the other, so
# no two of them add up (the full-network Slurm job, in the ``slurm`` group, may run beside one of them).
HEAVY = pytest.mark.xdist_group("heavy")


def job_tag():
    """A value for ``FCN8S_TEST_MARKER`` that no other test's processes carry (tmp_path names can repeat
    across xdist workers)."""
    return f"fcn8s-test-{uuid.uuid4().hex}"


@contextlib.contextmanager
def cpu_share(run_dir, alone):
    """Hold the machine shared with the other xdist workers' tests, or ``alone`` (none of them running).

    Two flock files in ``run_dir`` (the run's temp dir, common to its workers): every test passes the gate, then
    holds ``shared`` in shared mode; a test that must run alone keeps the gate closed while it waits for
    ``shared`` in exclusive mode, so no new test starts and it is not starved.
    """
    with open(os.path.join(run_dir, "cpu.gate"), "a") as gate, \
            open(os.path.join(run_dir, "cpu.shared"), "a") as shared:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(shared, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(shared, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist every test (with the fixtures it sets up and tears down) runs inside :func:`cpu_share`."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nobody to share with
        return (yield)
    run_dir = item.config._tmp_path_factory.getbasetemp().parent  # pytest-N/ above this worker's popen-gwK/
    with cpu_share(run_dir, alone=item.get_closest_marker("alone") is not None):
        return (yield)


def pytest_collection_modifyitems(items):
    """The multi-server tests (four FCN-8s processes at a time) first, then the other slow ones, then the rest:
    the long tests start early and the short ones fill the workers' last minutes. The ``alone`` tests come
    last: in the middle of the run, the gate idled the other workers while their running tests drained
    and then while it ran (~3 min of the 2 cores half used, measured); at the end they would be idle anyway."""
    items.sort(key=lambda item: (item.get_closest_marker("alone") is not None,
                                 item.get_closest_marker("multiserver") is None,
                                 item.get_closest_marker("slow") is None))


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
