"""Static checks of the images: hadolint, build-context completeness, the dependency helper, scripts."""
import fnmatch
import glob
import os
import re
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

BIN = os.path.dirname(sys.executable)
DOCKERFILES = ["docker/Dockerfile.cpu", "docker/Dockerfile.ascend"]
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "docker", "*.sh")) + glob.glob(os.path.join(REPO, "tests", "infra", "*.sh")))


def _hadolint(path):
    return subprocess.run([os.path.join(BIN, "hadolint"), path], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    result = _hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install -y curl && pip install requests\n")
    result = _hadolint(str(bad))
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3015"):  # latest tag, unpinned apt/pip, recommends
        assert rule in result.stdout


def _dockerignored(path, patterns):
    return any(fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path.split("/")[0], pat) for pat in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copied_paths_exist_and_are_in_the_build_context(dockerfile):
    lines = open(os.path.join(REPO, dockerfile)).read().splitlines()
    ignore = [line.strip() for line in open(os.path.join(REPO, ".dockerignore")) if line.strip()[:1] not in ("", "#")]
    sources = [src for line in lines if line.startswith("COPY ") and "--from" not in line
               for src in line.split()[1:-1]]
    assert "launch" in sources and "fcn8s" in sources and "pyproject.toml" in sources
    for src in sources:
        assert os.path.exists(os.path.join(REPO, src)), src
        assert not _dockerignored(src.rstrip("/"), ignore), f"{src} is excluded by .dockerignore"
    assert _dockerignored(".venv", ignore) and _dockerignored(".git", ignore)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_runs_as_a_non_root_user(dockerfile):
    users = re.findall(r"^USER (\S+)", open(os.path.join(REPO, dockerfile)).read(), flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_ascend_image_needs_a_site_base_and_enters_through_the_pod_entrypoint():
    text = open(os.path.join(REPO, "docker/Dockerfile.ascend")).read()
    assert re.search(r"^ARG BASE_IMAGE$", text, flags=re.M)  # no default: the site's CANN + MindSpore image
    assert "--from-base mindspore" in text
    entrypoint = re.search(r'^ENTRYPOINT \["bash", "/work/(\S+)"\]$', text, flags=re.M).group(1)
    assert os.path.isfile(os.path.join(REPO, entrypoint)), entrypoint


def _requirements(*args):
    return subprocess.run([sys.executable, "docker/requirements.py", *args], capture_output=True, text=True, cwd=REPO,
                          check=True)


def test_requirements_helper_prints_the_pinned_runtime_dependencies():
    printed = _requirements().stdout.split()
    assert "mindspore==2.10.0" in printed and "numpy==1.26.4" in printed
    assert all("==" in req for req in printed)
    assert not any(req.startswith("pytest") for req in printed)  # the test extra stays out


def test_requirements_helper_leaves_out_what_the_base_provides():
    result = _requirements("--from-base", "mindspore", "not-installed-pkg")
    assert "mindspore" not in result.stdout and "numpy==1.26.4" in result.stdout
    assert "using the base image's mindspore 2.10.0" in result.stderr


def test_requirements_helper_splits_the_pins_between_layers():
    assert _requirements("--only", "mindspore").stdout.split() == ["mindspore==2.10.0"]
    rest = _requirements("--without", "mindspore").stdout.split()
    assert "numpy==1.26.4" in rest and not any(req.startswith("mindspore") for req in rest)


def _wheel(path, members):
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in members.items())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
            wheel.writestr(info, data, zipfile.ZIP_DEFLATED)
        wheel.writestr("demo-1.0.dist-info/RECORD", record + "demo-1.0.dist-info/RECORD,,\n")
        wheel.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")


def test_strip_wheel_drops_the_plugins_and_their_record_lines_and_pip_installs_the_rest(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    _wheel(wheel, {"demo/__init__.py": b"VALUE = 7\n", "demo/lib/plugin/cpu/libcpu.so": b"c" * 1000,
                   "demo/lib/plugin/gpu11.1/libgpu.so": b"g" * 5000, "demo/lib/plugin/libdemo_ascend.so.2": b"a" * 300})
    strip = [sys.executable, "docker/strip_wheel.py", str(wheel), "demo/lib/plugin/gpu*",
             "demo/lib/plugin/libdemo_*ascend.so*"]
    result = subprocess.run(strip, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "dropped 2 files" in result.stdout, result.stdout + result.stderr
    with zipfile.ZipFile(wheel) as stripped:
        names = stripped.namelist()
        record = stripped.read("demo-1.0.dist-info/RECORD").decode()
        assert stripped.read("demo/lib/plugin/cpu/libcpu.so") == b"c" * 1000
        assert stripped.getinfo("demo/lib/plugin/cpu/libcpu.so").external_attr >> 16 == 0o755
    assert not any("gpu" in name or "ascend" in name for name in names) and "demo/__init__.py" in names
    assert "gpu" not in record and "ascend" not in record and "demo/lib/plugin/cpu/libcpu.so," in record
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--target", str(target), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    assert sorted(p.name for p in (target / "demo" / "lib" / "plugin").iterdir()) == ["cpu"]
    again = subprocess.run(strip, capture_output=True, text=True, cwd=REPO)  # nothing left to drop: an error
    assert again.returncode == 1 and "no member of" in again.stderr and wheel.is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_image_and_infra_scripts_pass_shellcheck(script):
    result = subprocess.run([os.path.join(BIN, "shellcheck"), "-x", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout
    assert "set -euo pipefail" in open(script).read()
