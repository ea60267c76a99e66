import glob
import os
import subprocess
import sys

from tests.conftest import REPO

SHELLCHECK = os.path.join(os.path.dirname(sys.executable), "shellcheck")


def test_shell_scripts_pass_shellcheck():
    scripts = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) + [os.path.join(REPO, ".ci", "run")])
    assert scripts
    result = subprocess.run([SHELLCHECK, "-x", *scripts], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout
    for script in scripts:
        assert "set -euo pipefail" in open(script).read(), script
