"""Device-list parsing and device/host IP discovery on an Ascend server.

Device IPs come from hccn.conf (lines ``address_N=IP``) when that file exists, otherwise from
``hccn_tool -i N -ip -g`` (output line ``ipaddr:IP``).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Mapping

from rank_table import RankTableError
from rank_table.table import is_ip

DEFAULT_HCCN_CONF = "/etc/hccn.conf"
DRIVER_TOOLS_DIR = "/usr/local/Ascend/driver/tools"
VISIBLE_ENV = "ASCEND_VISIBLE_DEVICES"
HCCN_TOOL_TIMEOUT = 10.0
NO_ROUTE_IP = "127.0.0.1"

_HALF_OPEN = re.compile(r"\[\s*([0-9]+)\s*,\s*([0-9]+)\s*\)")
_ITEM = re.compile(r"([0-9]+)(?:\s*-\s*([0-9]+))?")
_ADDRESS = re.compile(r"address_([0-9]+)\s*=\s*(.*)")
_IPADDR = re.compile(r"^\s*ipaddr\s*:\s*(\S+)", re.MULTILINE)
_DEV_NODE = re.compile(r"davinci([0-9]+)")


def parse_device_spec(spec: str) -> list[int]:
    """Sorted device ids of ``0-7`` (inclusive), ``0,2,4,6``, ``0-3,8-11``, ``[0,8)`` (half-open) or ``4``."""
    half_open = _HALF_OPEN.fullmatch(spec.strip())
    if half_open:
        ids = list(range(int(half_open[1]), int(half_open[2])))
    else:
        ids = [device for item in spec.split(",") for device in _parse_item(item.strip(), spec)]
    if not ids:
        raise RankTableError(f"device list {spec!r} selects no devices")
    repeated = sorted(device for device, count in Counter(ids).items() if count > 1)
    if repeated:
        raise RankTableError(f"device list {spec!r} repeats device {_join(repeated)}")
    return sorted(ids)


def _parse_item(item: str, spec: str) -> range:
    """One comma-separated item: ``N`` or an inclusive range ``A-B``."""
    match = _ITEM.fullmatch(item)
    if not match:
        raise RankTableError(f"device list {spec!r}: cannot parse {item!r} "
                             "(use e.g. 0-7, 0,2,4,6, [0,8) or 4)")
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    if last < first:
        raise RankTableError(f"device list {spec!r}: range {item!r} is reversed")
    return range(first, last + 1)


def visible_devices(environ: Mapping[str, str]) -> list[int] | None:
    """Devices listed in ASCEND_VISIBLE_DEVICES, or None when it is unset or empty."""
    value = environ.get(VISIBLE_ENV, "").strip()
    if not value:
        return None
    try:
        return parse_device_spec(value)
    except RankTableError as exc:
        raise RankTableError(f"{VISIBLE_ENV}: {exc}") from None


def choose_devices(requested: list[int] | None, visible: list[int] | None) -> list[int] | None:
    """Requested devices (which must be visible), else the visible ones; None means every device found."""
    if requested is None or visible is None:
        return visible if requested is None else requested
    hidden = [device for device in requested if device not in visible]
    if hidden:
        raise RankTableError(f"device {_join(hidden)} not visible ({VISIBLE_ENV}={_join(visible)}); "
                             f"request a subset of the visible devices")
    return requested


def device_ips(devices: list[int] | None, hccn_conf: str, hccn_tool: str | None) -> dict[int, str]:
    """Map each device (default: all on this host) to its IP, from hccn.conf if it exists, else hccn_tool."""
    if os.path.isfile(hccn_conf):
        known = read_hccn_conf(hccn_conf)
        return _pick(sorted(known) if devices is None else devices, known, hccn_conf)
    tool = find_hccn_tool(hccn_tool)
    if tool is None:
        raise RankTableError(_no_ip_source(hccn_conf, hccn_tool))
    return {device: query_hccn_tool(tool, device) for device in (list_dev_nodes() if devices is None else devices)}


def read_hccn_conf(path: str) -> dict[int, str]:
    """Device IPs from the ``address_N=IP`` lines of an hccn.conf; other keys and comments are ignored."""
    try:
        with open(path, encoding="utf-8") as conf:
            lines = conf.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RankTableError(f"cannot read {path}: {exc}") from None
    ips: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        match = _ADDRESS.fullmatch(line.strip())
        if not match:
            continue
        device, ip = int(match[1]), match[2].strip()
        if device in ips:
            raise RankTableError(f"{path}:{number}: address_{device} is set twice")
        ips[device] = check_ip(ip, f"{path}:{number}: address_{device}")
    if not ips:
        raise RankTableError(f"{path} has no address_N=IP lines")
    return ips


def _pick(devices: list[int], known: Mapping[int, str], path: str) -> dict[int, str]:
    """The IPs of ``devices`` from ``known``; every device must be listed in ``path``."""
    missing = [device for device in devices if device not in known]
    if missing:
        raise RankTableError(f"{path} has no address_N line for device {_join(missing)} "
                             f"(it lists {_join(sorted(known))})")
    return {device: known[device] for device in devices}


def find_hccn_tool(explicit: str | None) -> str | None:
    """The hccn_tool to run: ``explicit`` if executable, else hccn_tool on PATH or in the driver tools dir."""
    if explicit is not None:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    return shutil.which("hccn_tool") or shutil.which("hccn_tool", path=DRIVER_TOOLS_DIR)


def _no_ip_source(hccn_conf: str, hccn_tool: str | None) -> str:
    """Error message naming the missing hccn.conf and hccn_tool and how to provide them."""
    tool = (f"hccn_tool {hccn_tool} is not an executable file" if hccn_tool is not None
            else f"hccn_tool is not on PATH or in {DRIVER_TOOLS_DIR}")
    return (f"cannot find device IPs: {hccn_conf} does not exist and {tool}; "
            "pass --hccn-conf FILE (lines address_N=IP) or --hccn-tool PATH")


def query_hccn_tool(tool: str, device: int) -> str:
    """Device IP reported by ``hccn_tool -i N -ip -g``."""
    command = [tool, "-i", str(device), "-ip", "-g"]
    shown = " ".join(command)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=HCCN_TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RankTableError(f"{shown} failed: {exc}") from None
    match = _IPADDR.search(result.stdout)
    if result.returncode != 0 or not match:
        output = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[0]
        raise RankTableError(f"{shown} exited with {result.returncode} without an ipaddr line: {output}")
    return check_ip(match[1], f"{shown}: ipaddr")


def list_dev_nodes(dev_dir: str = "/dev") -> list[int]:
    """Device ids of the ``davinciN`` nodes in ``dev_dir`` (the NPUs this host or container can use)."""
    try:
        names = os.listdir(dev_dir)
    except OSError as exc:
        raise RankTableError(f"cannot list {dev_dir}: {exc}") from None
    ids = sorted(int(match[1]) for match in map(_DEV_NODE.fullmatch, names) if match)
    if not ids:
        raise RankTableError(f"no {dev_dir}/davinciN devices found; pass --devices or set {VISIBLE_ENV}")
    return ids


def host_ip() -> str:
    """This host's primary IPv4 address (UDP connect, sends nothing); 127.0.0.1 without a route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
        except OSError:
            return NO_ROUTE_IP
        return sock.getsockname()[0]


def check_ip(value: str, what: str) -> str:
    """``value`` if it is a valid IP address, else a RankTableError naming ``what``."""
    if not is_ip(value):
        raise RankTableError(f"{what}: {value!r} is not a valid IP address")
    return value


def _join(ids: list[int]) -> str:
    """``[0, 2]`` -> ``"0,2"``."""
    return ",".join(map(str, ids))
