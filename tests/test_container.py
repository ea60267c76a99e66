"""Real containers: build the images with podman and run them offline.

The base image comes from no registry: tests/infra/podman.sh makes it with mmdebstrap from the
Debian mirror and imports it (``make infra``). Builds need PyPI (``--network=host``); the
containers run with ``--network=none``.
"""
import json
import os
import platform
import shutil
import subprocess
import time

import pytest

from tests.conftest import HEAVY, REPO
from tests.infra import unavailable

BASE_IMAGE = os.environ.get("FCN8S_BASE_IMAGE", "localhost/localbase:bookworm-py")
IMAGE = "localhost/fcn8s:cpu-test"
SITE_BASE = "localhost/fcn8s:site-base-test"
ASCEND_IMAGE = "localhost/fcn8s:ascend-test"
# What the images need from the repository: the sources their Dockerfiles COPY.
CONTEXT = ["pyproject.toml", "README.md", "fcn8s", "rank_table", "configs", "launch", "docker"]
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
LIBDIR = f"/usr/lib/{platform.machine()}-linux-gnu"  # Debian's multiarch library dir
pytestmark = [pytest.mark.slow, HEAVY]  # an image build takes about a minute


def _podman(*args, timeout=1200):
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def _build(context, dockerfile, tag, base):
    started = time.monotonic()
    build = _podman("build", "--format=docker", "--network=host", "--build-arg", f"BASE_IMAGE={base}",
                    "-f", str(dockerfile), "-t", tag, str(context))
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    print(f"podman build {tag}: {time.monotonic() - started:.0f} s")
    _podman("image", "prune", "-f")  # drop superseded builds
    return build.stdout + build.stderr


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """A build context like the repository's, plus the host's CA bundle for the extra-CA hook."""
    if shutil.which("podman") is None:
        unavailable("podman is not installed: run `make infra` as root (tests/infra/podman.sh)")
    if _podman("image", "exists", BASE_IMAGE).returncode != 0:
        unavailable(f"base image {BASE_IMAGE} is missing: run `make infra` as root (tests/infra/podman.sh)")
    context = tmp_path_factory.mktemp("context")
    for name in CONTEXT:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, context / name)
    if os.path.isfile(HOST_CA):  # HTTPS may go through an intercepting proxy
        shutil.copy(HOST_CA, context / "docker" / "extra-ca" / "host-ca.crt")
    return context


@pytest.fixture(scope="module")
def image(context):
    """docker/Dockerfile.cpu on the local base image; this module's images are removed after it.

    They hold ~1.5 GB each (layers shared); a fresh machine builds them anyway (about a minute each).
    """
    try:
        _build(context, context / "docker" / "Dockerfile.cpu", IMAGE, BASE_IMAGE)
        yield IMAGE
    finally:
        _podman("rmi", "-f", IMAGE, ASCEND_IMAGE, SITE_BASE)
        _podman("image", "prune", "-f")


def test_cpu_image_defaults_to_the_smoke_job_as_a_non_root_user(image):
    config = json.loads(_podman("image", "inspect", image).stdout)[0]
    assert config["Config"]["Cmd"] == ["bash", "launch/run_demo.sh", "runs/demo"]
    assert config["Config"]["User"] == "1000:1000"
    assert config["Size"] < 2.5e9  # MindSpore's GPU/Ascend plugins (1.9 GB) are not in the CPU image


def test_smoke_job_runs_offline_in_the_cpu_image(image, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    started = time.monotonic()
    run = _podman("run", "--rm", "--network=none", "-v", f"{out}:/work/runs:Z,U", "-e", "TRAIN_IMAGES=16",
                  "-e", "VAL_IMAGES=4", image, "bash", "launch/run_demo.sh", "runs/smoke", "train.max_steps=3",
                  "train.batch_size=2", timeout=900)
    print(f"podman run (smoke job): {time.monotonic() - started:.0f} s")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    ckpt = out / "smoke" / "checkpoints" / "fcn8s-final.ckpt"
    assert ckpt.is_file() and ckpt.stat().st_size > 500e6  # 134.5 M float32 parameters
    assert ckpt.stat().st_uid == 1000  # written by the image's user, not root
    metrics = json.loads((out / "smoke" / "checkpoints" / "fcn8s-final.eval.json").read_text())
    assert metrics["split"] == "val" and metrics["checkpoint"] == "/work/runs/smoke/checkpoints/fcn8s-final.ckpt"
    assert 0.0 <= metrics["mean_iou"] <= metrics["pixel_accuracy"] <= 1.0, metrics


def test_ascend_image_keeps_the_base_images_mindspore(image, context, tmp_path):
    """Dockerfile.ascend on a stand-in for a site base: MindSpore etc. in the system Python (no CANN)."""
    stand_in = tmp_path / "Containerfile"
    stand_in.write_text(f"FROM {image} AS packages\nFROM {BASE_IMAGE}\n"
                        "COPY --from=packages /opt/venv/lib/python3.11/site-packages "
                        "/usr/local/lib/python3.11/dist-packages\n"
                        f"COPY --from=packages {LIBDIR}/libgomp.so.1 {LIBDIR}/\n")  # site bases have it
    _build(context, stand_in, SITE_BASE, BASE_IMAGE)
    _podman("rmi", image)  # the stand-in holds copies of its packages: 1.5 GB less on disk from here on
    _podman("image", "prune", "-f")
    _build(context, context / "docker" / "Dockerfile.ascend", ASCEND_IMAGE, SITE_BASE)
    probe = _podman("run", "--rm", "--network=none", "--entrypoint", "python", ASCEND_IMAGE, "-c",
                    "import os, mindspore, fcn8s; print(os.getuid(), os.getgid(), mindspore.__file__); "
                    "print(open('/opt/fcn8s-build/requirements.txt').read())")
    assert probe.returncode == 0, probe.stderr[-3000:]
    ids_and_path, installed = probe.stdout.split("\n", 1)
    assert ids_and_path.split() == ["1000", "1000", "/usr/local/lib/python3.11/dist-packages/mindspore/__init__.py"]
    assert "numpy==1.26.4" in installed and "mindspore" not in installed  # the base's MindSpore is kept
    entry = _podman("run", "--rm", "--network=none", ASCEND_IMAGE, "--help")  # ENTRYPOINT: the pod launcher
    assert entry.returncode == 0 and "Start this pod's ranks" in entry.stdout, entry.stdout + entry.stderr
