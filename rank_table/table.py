"""Pure functions that build, merge and validate HCCL rank tables (format version 1.0).

A table is the dict that MindSpore's ``RANK_TABLE_FILE`` holds; every number in it is a string::

    {"version": "1.0", "server_count": "1",
     "server_list": [{"server_id": "10.0.0.1",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}

Three writers, all version 1.0, validate:

- hccl_tools.py (and ``generate``/``merge``): one entry per server, ``server_id`` = its IP,
  ``host_nic_ip`` = "reserve".
- hccl-controller (Volcano): one entry per *pod*, ``server_id`` = the node's IP. Two pods on one
  node give two entries with the same ``server_id``, so a server_id may repeat; what must not
  repeat is a (server_id, device_id) pair, since one physical NPU cannot belong to two pods.
- Ascend Operator: entries carry ``container_ip`` (the pod's IP, unique across the table) and
  always a ``host_ip`` key, which may be empty (""). ``server_id`` must be an IP address unless
  the entry names its machine otherwise, by a non-empty ``host_ip`` or by a ``container_ip``;
  then ``server_id`` is an opaque node identifier (e.g. the node name). Non-empty ``host_ip`` and
  every ``container_ip`` must be IP addresses.

Other versions are refused by name: "1.2" (A3 SuperPoD) and "2.0" (A5) have a different layout.
Device IPs and rank ids (exactly 0..N-1) are unique across the table in every layout.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from rank_table import RankTableError

VERSION = "1.0"
SUPPORTED_VERSIONS = (VERSION,)
# Versions the Ascend Operator writes for other hardware (different server_list layout).
OTHER_HARDWARE_VERSIONS = {"1.2": "A3 SuperPoD", "2.0": "A5"}
COMPLETED = "completed"
INITIALIZING = "initializing"
HOST_NIC_IP = "reserve"

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
    Raises RankTableError if the result is invalid (e.g. a device of a server or a device IP appears twice).
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
    located_devices = [(f"{where}.device[{index}]", server, device)
                       for where, server in located for index, device in enumerate(server["device"])]
    # hccl-controller writes one entry per pod: a server_id repeats when pods share a node, a device must not
    _check_unique("device_id", (((server["server_id"], device["device_id"]), where)
                                for where, server, device in located_devices),
                  show=lambda pair: f"{pair[1]!r} on server_id {pair[0]!r}")
    _check_unique("container_ip", ((server["container_ip"], where) for where, server in located
                                   if "container_ip" in server))
    _check_unique("device_ip", ((device["device_ip"], where) for where, _, device in located_devices))
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
    if version not in SUPPORTED_VERSIONS:
        hardware = f" ({OTHER_HARDWARE_VERSIONS[version]})" if version in OTHER_HARDWARE_VERSIONS else ""
        supported = ", ".join(f'"{known}"' for known in SUPPORTED_VERSIONS)
        raise RankTableError(f'rank table version "{version}"{hardware} is not supported; supported: {supported}')
    _number(table, "server_count", "table")


def _check_server(server: Any, where: str) -> None:
    """Check one server entry and its devices (uniqueness across entries is checked by the caller)."""
    _require_object(server, where)
    server_id = _string(server, "server_id", where)
    if "container_ip" in server:
        _ip(server, "container_ip", where)
    host_ip = _string(server, "host_ip", where) if "host_ip" in server else ""
    if host_ip:  # the Ascend Operator writes "host_ip": "" when it does not know the node's IP
        _ip(server, "host_ip", where)
    if not (host_ip or "container_ip" in server or is_ip(server_id)):
        raise RankTableError(f"{where}.server_id: {server_id!r} is not a valid IP address "
                             "(a node name needs a container_ip or a non-empty host_ip)")
    if "host_nic_ip" in server:
        _string(server, "host_nic_ip", where)
    devices = _nonempty_list(server, "device", where)
    for index, device in enumerate(devices):
        _check_device(device, f"{where}.device[{index}]")


def _check_device(device: Any, where: str) -> None:
    """Check one device entry: numeric device_id and rank_id, valid device_ip."""
    _require_object(device, where)
    _number(device, "device_id", where)
    _ip(device, "device_ip", where)
    _number(device, "rank_id", where)


def _check_unique(field: str, values: Iterable[tuple[Hashable, str]],
                  show: Callable[[Any], str] = repr) -> None:
    """Raise on the first value seen twice; ``values`` yields (value, where) pairs, ``show`` words a value."""
    seen: dict[Hashable, str] = {}
    for value, where in values:
        if value in seen:
            raise RankTableError(f"duplicate {field} {show(value)} ({seen[value]} and {where})")
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
