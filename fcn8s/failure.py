"""``LOG_DIR/failure.json`` and a short summary when a job fails: who, where, how, how far.

Written by the supervisor (``fcn8s.launch``, the pod entrypoint) on any failure: a rank that
exited non-zero, a hung rank, a dead scheduler, a lost node, a failure relayed from another node.
The summary logged with it names the failing process and host (in the message), the exit code and
signal, the step every rank reached, the restarts used, and the error lines (MindSpore/HCCL codes
such as EI0006, time-outs, tracebacks) and last lines of the failing process's log.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from typing import Dict, List, Optional

LOG = logging.getLogger("fcn8s.failure")
TAIL_LINES = 20  # in failure.json
SUMMARY_LINES = 5  # error lines and last lines each, in the logged summary
# MindSpore / HCCL / Python lines worth showing first (error codes like EI0006, timeouts, tracebacks).
ERROR_LINE = re.compile(r"\b(E[IEJZ]\d{4}|Traceback|[A-Za-z]*Error\b|error:|is timed out|timed out|"
                        r"Killed|Segmentation fault|ERROR\])")
# ... except MindSpore's routine waits while the cluster forms ("Topology build timed out., retry(2/3600)").
ROUTINE_LINE = re.compile(r"retry\(\d+/\d+\)")


def signal_name(code: int) -> Optional[str]:
    """SIGKILL for exit code 137 (128 + 9); None for codes that are not a signal."""
    try:
        return signal.Signals(code - 128).name if 128 < code < 160 else None
    except ValueError:
        return None


def log_excerpt(path: Optional[str]) -> Dict[str, List[str]]:
    """The last TAIL_LINES lines of a rank's log and the error lines among its last 500."""
    if not path or not os.path.exists(path):
        return {"log_tail": [], "error_lines": []}
    with open(path, errors="replace") as handle:
        lines = [line.rstrip() for line in handle.read().replace("\r", "\n").splitlines() if line.strip()][-500:]
    errors = [line for line in lines if ERROR_LINE.search(line) and not ROUTINE_LINE.search(line)][-10:]
    return {"log_tail": lines[-TAIL_LINES:], "error_lines": errors}


def write_failure_report(log_dir: str, *, message: str, exit_code: int, host: str, rank: Optional[int],
                         steps: Dict[int, int], log_path: Optional[str], restarts_used: int = 0,
                         process: Optional[str] = None) -> str:
    """Write LOG_DIR/failure.json and log a short summary; returns the file's path.

    ``process`` names what failed when it is not a rank (e.g. "scheduler"); default "rank R".
    """
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "message": message, "exit_code": exit_code,
              "signal": signal_name(exit_code), "rank": rank,
              "process": process or (f"rank {rank}" if rank is not None else None), "host": host,
              "steps": {str(k): v for k, v in sorted(steps.items())}, "restarts_used": restarts_used,
              "log": log_path, **log_excerpt(log_path)}
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "failure.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    os.replace(tmp, path)
    LOG.error("%s", summary(report, path))
    return path


def summary(report: Dict, path: str) -> str:
    """The report as a few log lines (what the user reads first)."""
    reached = ", ".join(f"rank {k}: {v}" for k, v in report["steps"].items()) or "unknown"
    how = f"exit code {report['exit_code']}" + (f", {report['signal']}" if report["signal"] else "")
    lines = [f"FAILED: {report['message']} ({how}); steps reached: {reached}; "
             f"restarts used: {report['restarts_used']}; report {path}"]
    name = os.path.basename(report["log"]) if report["log"] else None
    for title, picked in (("error lines", report["error_lines"]), ("last lines", report["log_tail"])):
        if picked:
            lines.append(f"  {title} of {name}:")
            lines.extend(f"    {line.strip()[:300]}" for line in picked[-SUMMARY_LINES:])
    return "\n".join(lines)
