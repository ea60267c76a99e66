"""python -m fcn8s.cluster render: Slurm script, Volcano Job, AscendJob; checked-in examples in sync."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_module

SHELLCHECK = os.path.join(os.path.dirname(sys.executable), "shellcheck")
EXAMPLES = sorted(glob.glob(os.path.join(REPO, "docker", "k8s", "*.yaml"))
                  + glob.glob(os.path.join(REPO, "docker", "slurm", "*.sbatch")))


def render(tmp_path, scheduler, *extra, nodes=2, devices=4, config="configs/cpu_smoke.yaml"):
    """Render into tmp_path; returns (CompletedProcess, text of the written file or None)."""
    result = run_module("fcn8s.cluster", "render", "--scheduler", scheduler, "--nodes", nodes,
                        "--devices-per-node", devices, "--config", config, "--out", tmp_path, *extra)
    written = [p for p in tmp_path.iterdir() if p.is_file()]
    return result, (written[0].read_text() if len(written) == 1 else None)


def test_slurm_script_requests_one_task_per_device(tmp_path):
    result, text = render(tmp_path, "slurm", "--job-name", "seg-run", "--partition", "debug", "--time", "01:00:00",
                          "--sbatch-arg=--gres=npu:4", "--set", "train.max_steps=7", "--set", "run.output_dir=out dir")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'fcn8s.sbatch'}"
    directives = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    assert directives == ["--job-name=seg-run", "--nodes=2", "--ntasks-per-node=4", "--output=%x-%j.out",
                          "--partition=debug", "--time=01:00:00", "--gres=npu:4"]
    srun = text[text.index("exec srun"):]
    assert "--kill-on-bad-exit=1" in srun and "--nodes=2 --ntasks-per-node=4" in srun
    assert ('-m fcn8s.train --config configs/cpu_smoke.yaml --set train.max_steps=7 '
            '--set "run.output_dir=${OUTPUT_DIR}"') in srun
    assert "DEFAULT_OUTPUT_DIR='out dir'" in text  # the override's value, shell-quoted
    checked = subprocess.run([SHELLCHECK, str(tmp_path / "fcn8s.sbatch")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_slurm_script_honours_python_repo_dir_and_output_dir(tmp_path):
    """Run the script with a stub srun on PATH that records what it would start."""
    result, _ = render(tmp_path, "slurm", "--set", "train.max_steps=7")
    assert result.returncode == 0, result.stderr
    stub = tmp_path / "bin" / "srun"
    stub.parent.mkdir()
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$PYTHONPATH" "$@" > "$RECORD"\n')
    stub.chmod(0o755)
    record = tmp_path / "record.txt"
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "RECORD": str(record),
           "SLURM_SUBMIT_DIR": REPO, "PYTHON": "/opt/py/bin/python", "OUTPUT_DIR": "/scratch/run1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(tmp_path / "fcn8s.sbatch")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = record.read_text().splitlines()
    assert lines[:2] == [REPO, REPO]
    assert lines[2:] == ["--kill-on-bad-exit=1", "--label", "--nodes=2", "--ntasks-per-node=4", "/opt/py/bin/python",
                         "-m", "fcn8s.train", "--config", "configs/cpu_smoke.yaml", "--set", "train.max_steps=7",
                         "--set", "run.output_dir=/scratch/run1"]
    assert "checkpoints in /scratch/run1/checkpoints" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "error: --nodes must be >= 1, got 0"),
    (["--devices-per-node", "-1"], "error: --devices-per-node must be >= 1, got -1"),
    (["--scheduler", "kubeflow"], "error: argument --scheduler: invalid choice: 'kubeflow'"),
    (["--config", "configs/missing.yaml"], "error: config file not found: configs/missing.yaml"),
    (["--set", "train.learning_rate=1"], "error: unknown key 'train.learning_rate'"),
    (["--set", "train.lr=fast"], "error: train.lr: expected a number, got 'fast'"),
    (["--job-name", "My_Job"], "error: --job-name 'My_Job': use 1-52 lowercase letters"),
    (["--sbatch-arg=gres=npu:8"], "error: sbatch option 'gres=npu:8': expected one '--key=value' word"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    base = ["--scheduler", "slurm", "--nodes", "1", "--devices-per-node", "2", "--config", "configs/cpu_smoke.yaml"]
    result = run_module("fcn8s.cluster", "render", *base, *args, "--out", tmp_path / "out")  # last one wins
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_help_lists_the_schedulers():
    result = run_module("fcn8s.cluster", "render", "--help")
    assert result.returncode == 0
    for word in ("volcano-job.yaml", "ascendjob.yaml", "fcn8s.sbatch", "--devices-per-node", "--partition"):
        assert word in result.stdout


def test_there_are_checked_in_examples():
    names = {os.path.relpath(path, REPO) for path in EXAMPLES}
    assert "docker/slurm/fcn8s.sbatch" in names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: os.path.relpath(p, REPO))
def test_checked_in_example_is_what_its_command_renders(example, tmp_path):
    text = open(example).read()
    command = re.search(r"^#   (python -m fcn8s\.cluster render .*)$", text, re.M)
    assert command, f"{example} does not name the command that generated it"
    args = shlex.split(command.group(1))[3:]
    result = run_module("fcn8s.cluster", *args, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / os.path.basename(example)).read_text() == text, \
        f"{example} is out of date: re-run the command in its header with --out {os.path.dirname(example)}"
