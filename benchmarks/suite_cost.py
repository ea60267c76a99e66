"""What `make test` costs on a fresh clone: wall time, peak extra disk, temp files left, slowest tests.

Clones the committed HEAD of this repository (or ``--ref``) into a scratch directory, creates its
``.venv`` (timed apart: ``make install``), then runs ``bash .ci/run`` (the README's test command)
while sampling the disk in use on the filesystems of the clone, pytest's temp root and podman's
storage every ``--every`` seconds, and the machine's CPU time over the run (``/proc/stat``: every
process counts, also Slurm's job steps and the containers, which pytest does not see). Prints the
figures against the targets of issue 15 and pytest's ``--durations`` table. The CPU figure bounds
the wall time from below: ``busy core-seconds / cores`` is what the run would take with every core
busy all the time, whatever the scheduling of the tests. Run as root for the Slurm and podman tests,
as CI does.

    .venv/bin/python benchmarks/suite_cost.py                 # HEAD, scratch dir under /tmp
    .venv/bin/python benchmarks/suite_cost.py --ref a799562 --keep
"""
from __future__ import annotations

import argparse
import getpass
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_MINUTES = 15
TARGET_EXTRA_GB = 4.0
PODMAN_STORAGE = "/var/lib/containers"


def pytest_temp_root() -> str:
    """Where pytest puts its numbered temp dirs for this user (``tmp_path_factory``'s root)."""
    return os.path.join(tempfile.gettempdir(), f"pytest-of-{getpass.getuser()}")


def used_bytes(paths: List[str]) -> int:
    """Bytes in use summed over the distinct filesystems holding ``paths``."""
    devices: Dict[int, int] = {}
    for path in paths:
        while not os.path.exists(path):
            path = os.path.dirname(path)
        usage = shutil.disk_usage(path)
        devices[os.stat(path).st_dev] = usage.total - usage.free
    return sum(devices.values())


def tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (0 if absent)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


class DiskSampler(threading.Thread):
    """Samples the disk in use every ``every`` seconds until stopped; keeps the peak."""

    def __init__(self, paths: List[str], every: float) -> None:
        super().__init__(daemon=True)
        self.paths, self.every = paths, every
        self.start_bytes = used_bytes(paths)
        self.peak_bytes = self.start_bytes
        self.peak_seconds = 0.0  # when the peak was sampled, from the start
        self.done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.wait(self.every):
            used = used_bytes(self.paths)
            if used > self.peak_bytes:
                self.peak_bytes, self.peak_seconds = used, time.monotonic() - started


def cpu_seconds() -> "tuple[float, float]":
    """(busy, idle) CPU seconds of the whole machine since boot, summed over its cores (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    busy = sum(fields[:3]) + fields[5] + fields[6]  # user nice system, irq softirq (not a VM's steal)
    return busy / ticks, idle / ticks


def run_timed(cmd: List[str], cwd: str, log_path: str) -> "tuple[int, float]":
    """Run ``cmd`` with its output teed to ``log_path``; returns (exit code, seconds)."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(line)
        code = proc.wait()
    return code, time.monotonic() - started


def durations_table(log_text: str) -> str:
    """pytest's 'slowest N durations' section of ``log_text`` ('' if it never got there)."""
    found = re.search(r"=+ slowest \d+ durations =+\n((?:\s*[\d.]+s .*\n)+)", log_text)
    return found.group(1).rstrip("\n") if found else ""


def main(argv: "List[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--ref", default="HEAD", help="commit to clone (default %(default)s)")
    parser.add_argument("--every", type=float, default=2.0, help="disk sampling period, s (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone (default: delete it)")
    args = parser.parse_args(argv)

    scratch = tempfile.mkdtemp(prefix="fcn8s-suite-")
    clone = os.path.join(scratch, "repo")
    subprocess.run(["git", "clone", "-q", REPO, clone], check=True)
    subprocess.run(["git", "checkout", "-q", args.ref], cwd=clone, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    print(f"fresh clone of {commit} in {clone}", flush=True)
    code, install_seconds = run_timed(["make", "install"], clone, os.path.join(scratch, "install.log"))
    if code != 0:
        print(f"make install failed (exit {code}); see {scratch}/install.log")
        return code

    sampler = DiskSampler([clone, pytest_temp_root(), PODMAN_STORAGE], args.every)
    sampler.start()
    busy_before, idle_before = cpu_seconds()
    code, test_seconds = run_timed(["bash", ".ci/run"], clone, os.path.join(scratch, "test.log"))
    busy_after, idle_after = cpu_seconds()
    sampler.done.set()
    sampler.join()
    busy, idle = busy_after - busy_before, idle_after - idle_before
    left_gb = tree_bytes(pytest_temp_root()) / 1e9
    peak_gb = (sampler.peak_bytes - sampler.start_bytes) / 1e9
    log_text = open(os.path.join(scratch, "test.log")).read()

    print(f"\n== make test on a fresh clone of {commit} ({os.cpu_count()} cores) ==")
    print(f"{'':32} {'measured':>12} {'target':>12}")
    print(f"{'make install (.venv), not counted':32} {install_seconds / 60:10.1f} m {'':>12}")
    print(f"{'bash .ci/run (make test)':32} {test_seconds / 60:10.1f} m {f'<= {TARGET_MINUTES} m':>12}")
    print(f"{'peak extra disk during the run':32} {peak_gb:9.2f} GB {f'<= {TARGET_EXTRA_GB:.0f} GB':>12}"
          f"  (at {sampler.peak_seconds:.0f} s)")
    print(f"{'left in ' + pytest_temp_root():32} {left_gb:9.2f} GB {'one run':>12}")
    print(f"{'CPU busy during the run':32} {100 * busy / (busy + idle):10.0f} % {'':>12}")
    print(f"{'its CPU work / cores (a bound)':32} {busy / os.cpu_count() / 60:10.1f} m {f'<= {TARGET_MINUTES} m':>12}")
    print(f"exit code {code}; slowest tests:\n{durations_table(log_text)}")
    if args.keep:
        print(f"kept {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
