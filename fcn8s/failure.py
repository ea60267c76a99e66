"""``LOG_DIR/failure.json`` and a short summary when a job fails: who, where, how, how far.

Written by the supervisor (``fcn8s.launch``, the pod entrypoint) on any failure: a rank that
exited non-zero, a hung rank, a dead scheduler, a lost node, a failure relayed from another node.
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
TAIL_LINES = 20
# MindSpore / HCCL / Python lines worth showing first (error codes like EI0006, timeouts, tracebacks).
ERROR_LINE = re.compile(r"\b(E[IEJZ]\d{4}|Traceback|[A-Za-z]*Error\b|error:|is timed out|timed out|"
                        r"Killed|Segmentation fault|ERROR\])")


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
        lines = handle.read().splitlines()[-500:]
    errors = [line for line in lines if ERROR_LINE.search(line)][-10:]
    return {"log_tail": lines[-TAIL_LINES:], "error_lines": errors}


def write_failure_report(log_dir: str, *, message: str, exit_code: int, host: str, rank: Optional[int],
                         steps: Dict[int, int], log_path: Optional[str], restarts_used: int = 0) -> str:
    """Write LOG_DIR/failure.json and log a short summary; returns the file's path."""
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "message": message, "exit_code": exit_code,
              "signal": signal_name(exit_code), "rank": rank, "host": host,
              "steps": {str(k): v for k, v in sorted(steps.items())}, "restarts_used": restarts_used,
              "log": log_path, **log_excerpt(log_path)}
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "failure.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    os.replace(tmp, path)
    reached = ", ".join(f"rank {k}: {v}" for k, v in sorted(steps.items())) or "unknown"
    LOG.error("FAILED: %s (exit code %d%s); steps reached: %s; report %s", message, exit_code,
              f", {report['signal']}" if report["signal"] else "", reached, path)
    for line in report["error_lines"][-5:]:
        LOG.error("  %s", line.strip()[:300])
    return path
