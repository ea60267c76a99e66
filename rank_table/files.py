"""Rank tables on disk: read and validate, write atomically, generate this server's table.

The library behind ``python -m rank_table`` (fcn8s.launch calls :func:`generate_table` directly).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from rank_table import RankTableError, devices
from rank_table.table import build_table, validate_table

FILE_MODE = 0o644


def generate_table(path: str, requested: list[int] | None = None, hccn_conf: str = devices.DEFAULT_HCCN_CONF,
                   hccn_tool: str | None = None, server_ip: str | None = None,
                   environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Write this server's table for ``requested`` devices (default: all visible) to ``path``; return it."""
    chosen = devices.choose_devices(requested, devices.visible_devices(environ))
    ips = devices.device_ips(chosen, hccn_conf, hccn_tool)
    server_id = devices.check_ip(server_ip, "--server-ip") if server_ip else devices.host_ip()
    table = build_table(server_id, ips)
    write_table(path, table)
    return table


def load_table(path: str, expect_size: int | None = None) -> tuple[dict[str, Any], tuple[int, int]]:
    """Read and validate a table file; return it with its (servers, devices); errors name ``path``."""
    try:
        with open(path, encoding="utf-8") as source:
            table = json.load(source)
    except OSError as exc:
        raise RankTableError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise RankTableError(f"{path}: invalid JSON: {exc}") from None
    try:
        return table, validate_table(table, expect_size)
    except RankTableError as exc:
        raise RankTableError(f"{path}: {exc}") from None


def write_table(path: str, table: dict[str, Any]) -> None:
    """Write ``table`` as indented JSON atomically: a temporary file in the same directory, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".rank_table.", suffix=".tmp")
    except OSError as exc:
        raise RankTableError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as target:
            json.dump(table, target, indent=4)
            target.write("\n")
            os.fchmod(target.fileno(), FILE_MODE)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise RankTableError(f"cannot write {path}: {exc.strerror or exc}") from None
