"""Real infrastructure for tests/test_slurm.py and tests/test_container.py.

``make test`` provisions it when it can (root + apt-get: tests/infra/provision.sh). Where it is
missing the tests skip with the reason, except under FCN8S_REQUIRE_INFRA=1 (set by .ci/run),
where a missing piece is a failure: CI must never pass by skipping them.
"""
import os
import subprocess

import pytest

INFRA_DIR = os.path.dirname(os.path.abspath(__file__))
REQUIRED = os.environ.get("FCN8S_REQUIRE_INFRA") == "1"


def unavailable(reason: str) -> None:
    """Skip the test for ``reason``, or fail it when the infrastructure is required."""
    if REQUIRED:
        pytest.fail(f"{reason} (FCN8S_REQUIRE_INFRA=1)", pytrace=False)
    pytest.skip(reason)


def run_script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run tests/infra/NAME (root only: it starts system services)."""
    return subprocess.run(["bash", os.path.join(INFRA_DIR, name), *args], capture_output=True, text=True,
                          timeout=timeout)
