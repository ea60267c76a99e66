"""Pure functions that build, merge and validate HCCL rank tables (format version 1.0).

A table is the dict that MindSpore's ``RANK_TABLE_FILE`` holds; every number in it is a string::

    {"version": "1.0", "server_count": "1",
     "server_list": [{"server_id": "10.0.0.1",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}

Ascend Operator writes servers with ``container_ip`` (and sometimes ``host_ip``, in which case
``server_id`` is an opaque node identifier) instead of ``host_nic_ip``; both layouts validate.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rank_table import RankTableError

VERSION = "1.0"
COMPLETED = "completed"
INITIALIZING = "initializing"
HOST_NIC_IP = "reserve"
OPTIONAL_SERVER_IPS = ("container_ip", "host_ip")

_NUMBER = re.compile(r"[0-9]+")
_JSON_TYPES = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "an array",
               dict: "an object", type(None): "null"}


def is_ip(value: str) -> bool:
    """True if ``value`` is a valid IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def build_table(server_id: str, device_ips: Mapping[int, str]) -> dict[str, Any]:
    """Single-server table; rank ids follow the order of ``device_ips`` (device id -> device IP)."""
    devices = [{"device_id": str(device_id), "device_ip": ip, "rank_id": str(rank)}
               for rank, (device_id, ip) in enumerate(device_ips.items())]
    return _table([{"server_id": server_id, "device": devices, "host_nic_ip": HOST_NIC_IP}])


def merge_tables(tables: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate the servers of valid tables in the given order, renumbering ranks across them.

    Each table keeps its own rank layout, offset by the number of devices in the tables before it.
    Raises RankTableError if the result is invalid (e.g. a server_id or device IP appears twice).
    """
    servers: list[dict[str, Any]] = []
    offset = 0
    for table in tables:
        servers.extend(_offset_ranks(server, offset) for server in table["server_list"])
        offset += sum(len(server["device"]) for server in table["server_list"])
    merged = _table(servers)
    validate_table(merged)
    return merged


def validate_table(table: Any, expect_size: int | None = None) -> tuple[int, int]:
    """Return (servers, devices) of a valid table; raise RankTableError naming the first problem."""
    if not isinstance(table, dict):
        raise RankTableError(f"top level must be a JSON object, got {_json_type(table)}")
    _check_header(table)
    servers = _nonempty_list(table, "server_list", "table")
    if table["server_count"] != str(len(servers)):
        raise RankTableError(f"server_count is {table['server_count']!r} but server_list has {len(servers)} servers")
    located = [(f"server_list[{index}]", server) for index, server in enumerate(servers)]
    for where, server in located:
        _check_server(server, where)
    _check_unique("server_id", ((server["server_id"], where) for where, server in located))
    _check_unique("device_ip", ((device["device_ip"], f"{where}.device[{index}]")
                                for where, server in located for index, device in enumerate(server["device"])))
    ranks = [int(device["rank_id"]) for _, server in located for device in server["device"]]
    _check_ranks(ranks)
    if expect_size is not None and len(ranks) != expect_size:
        raise RankTableError(f"table has {len(ranks)} devices, expected {expect_size}")
    return len(servers), len(ranks)


def _table(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """Complete table around a server list, keys in hccl_tools.py order."""
    return {"version": VERSION, "server_count": str(len(servers)), "server_list": servers, "status": COMPLETED}


def _offset_ranks(server: Mapping[str, Any], offset: int) -> dict[str, Any]:
    """Copy of ``server`` with every rank_id shifted by ``offset`` (other keys kept in place)."""
    devices = [{**device, "rank_id": str(int(device["rank_id"]) + offset)} for device in server["device"]]
    return {**server, "device": devices}


def _check_header(table: Mapping[str, Any]) -> None:
    """Status first (a table still being written may lack everything else), then version and server_count."""
    status = _string(table, "status", "table")
    if status == INITIALIZING:
        raise RankTableError(f'status is "{INITIALIZING}": the cluster controller (e.g. Ascend Operator) '
                             "has not filled in the table yet; wait for it and retry")
    if status != COMPLETED:
        raise RankTableError(f'status must be "{COMPLETED}", got {status!r}')
    version = _string(table, "version", "table")
    if version != VERSION:
        raise RankTableError(f'version must be "{VERSION}", got {version!r}')
    _number(table, "server_count", "table")


def _check_server(server: Any, where: str) -> None:
    """Check one server entry and its devices (uniqueness of device_id within it included)."""
    _require_object(server, where)
    server_id = _string(server, "server_id", where)
    for key in OPTIONAL_SERVER_IPS:
        if key in server:
            _ip(server, key, where)
    if "host_ip" not in server and not is_ip(server_id):
        raise RankTableError(f"{where}.server_id: {server_id!r} is not a valid IP address")
    if "host_nic_ip" in server:
        _string(server, "host_nic_ip", where)
    devices = _nonempty_list(server, "device", where)
    for index, device in enumerate(devices):
        _check_device(device, f"{where}.device[{index}]")
    _check_unique("device_id", ((device["device_id"], f"{where}.device[{index}]")
                                for index, device in enumerate(devices)))


def _check_device(device: Any, where: str) -> None:
    """Check one device entry: numeric device_id and rank_id, valid device_ip."""
    _require_object(device, where)
    _number(device, "device_id", where)
    _ip(device, "device_ip", where)
    _number(device, "rank_id", where)


def _check_unique(field: str, values: Iterable[tuple[str, str]]) -> None:
    """Raise on the first value seen twice; ``values`` yields (value, where) pairs."""
    seen: dict[str, str] = {}
    for value, where in values:
        if value in seen:
            raise RankTableError(f"duplicate {field} {value!r} ({seen[value]} and {where})")
        seen[value] = where


def _check_ranks(ranks: list[int]) -> None:
    """Rank ids must be exactly 0..N-1, each once."""
    _check_unique("rank_id", ((str(rank), f"rank {rank}") for rank in ranks))
    missing = sorted(set(range(len(ranks))) - set(ranks))
    if missing:
        raise RankTableError(f"rank ids must be contiguous 0..{len(ranks) - 1}; "
                             f"missing {', '.join(map(str, missing))}")


def _require_object(value: Any, where: str) -> None:
    """Raise unless ``value`` is a JSON object."""
    if not isinstance(value, dict):
        raise RankTableError(f"{where}: must be an object, got {_json_type(value)}")


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    """``obj[key]`` or a 'missing' error."""
    if key not in obj:
        raise RankTableError(f'{where}: missing "{key}"')
    return obj[key]


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    """``obj[key]``, which must be a JSON string."""
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise RankTableError(f"{where}.{key}: must be a string, got {_json_type(value)}")
    return value


def _number(obj: Mapping[str, Any], key: str, where: str) -> str:
    """``obj[key]``, which must be a string of decimal digits."""
    value = _string(obj, key, where)
    if not _NUMBER.fullmatch(value):
        raise RankTableError(f"{where}.{key}: {value!r} is not a non-negative integer")
    return value


def _ip(obj: Mapping[str, Any], key: str, where: str) -> str:
    """``obj[key]``, which must be a string holding an IP address."""
    value = _string(obj, key, where)
    if not is_ip(value):
        raise RankTableError(f"{where}.{key}: {value!r} is not a valid IP address")
    return value


def _nonempty_list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """``obj[key]``, which must be a non-empty JSON array."""
    value = _field(obj, key, where)
    if not isinstance(value, list):
        raise RankTableError(f"{where}.{key}: must be an array, got {_json_type(value)}")
    if not value:
        raise RankTableError(f"{where}.{key}: is empty")
    return value


def _json_type(value: Any) -> str:
    """JSON name of a parsed value's type, for messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)
