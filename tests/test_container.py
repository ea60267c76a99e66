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
ASCEND_IMAGE = "localhost/fcn8s:ascend-test"
# What the images need from the repository: the sources their Dockerfiles COPY.
CONTEXT = ["pyproject.toml", "README.md", "fcn8s", "rank_table", "configs", "launch", "docker"]
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
LIBDIR = f"/usr/lib/{platform.machine()}-linux-gnu"  # Debian's multiarch library dir
pytestmark = [pytest.mark.slow, HEAVY]  # an image build takes about a minute


def _podman(*args, timeout=1200):
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def _build(context, dockerfile, tag, base, *options):
    started = time.monotonic()
    build = _podman("build", "--format=docker", "--network=host", "--build-arg", f"BASE_IMAGE={base}", *options,
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

    The CPU image holds ~1.3 GB; a fresh machine builds it anyway (about a minute).
    """
    try:
        _build(context, context / "docker" / "Dockerfile.cpu", IMAGE, BASE_IMAGE)
        yield IMAGE
    finally:
        _podman("rmi", "-f", IMAGE, ASCEND_IMAGE)
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


def test_ascend_image_keeps_the_base_images_mindspore(image, context):
    """Dockerfile.ascend on a stand-in for a site base: MindSpore etc. in the system Python (no CANN).

    The stand-in is the local base with the CPU image's packages (and libgomp, which site bases
    have) bind-mounted as its system ``dist-packages``, at build and at run time: a second copy of
    them as an image layer would put 3.6 GB on disk while podman commits it.
    """
    mounted = _podman("image", "mount", image)
    assert mounted.returncode == 0, mounted.stderr
    root = mounted.stdout.strip()
    packages = [f"--volume={root}/opt/venv/lib/python3.11/site-packages:/usr/local/lib/python3.11/dist-packages:ro",
                f"--volume={root}{LIBDIR}/libgomp.so.1:{LIBDIR}/libgomp.so.1:ro"]
    try:
        _build(context, context / "docker" / "Dockerfile.ascend", ASCEND_IMAGE, BASE_IMAGE, *packages)
        probe = _podman("run", "--rm", "--network=none", *packages, "--entrypoint", "python", ASCEND_IMAGE, "-c",
                        "import os, mindspore, fcn8s; print(os.getuid(), os.getgid(), mindspore.__file__); "
                        "print(open('/opt/fcn8s-build/requirements.txt').read())")
        entry = _podman("run", "--rm", "--network=none", *packages, ASCEND_IMAGE, "--help")  # the pod launcher
    finally:
        _podman("image", "unmount", image)
    assert probe.returncode == 0, probe.stderr[-3000:]
    ids_and_path, installed = probe.stdout.split("\n", 1)
    assert ids_and_path.split() == ["1000", "1000", "/usr/local/lib/python3.11/dist-packages/mindspore/__init__.py"]
    assert "numpy==1.26.4" in installed and "mindspore" not in installed  # the base's MindSpore is kept
    assert entry.returncode == 0 and "Start this pod's ranks" in entry.stdout, entry.stdout + entry.stderr
