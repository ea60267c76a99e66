"""Static checks of the images: hadolint, build-context completeness, the dependency helper, scripts."""
import fnmatch
import glob
import os
import re
import subprocess
import sys

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


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_image_and_infra_scripts_pass_shellcheck(script):
    result = subprocess.run([os.path.join(BIN, "shellcheck"), "-x", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout
    assert "set -euo pipefail" in open(script).read()
