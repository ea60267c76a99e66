"""This host's network addresses, and which of them another host can reach.

Used to find this server in a rank table and to publish a scheduler address that every rank can
connect to (``mpirun`` across hosts). Only the standard library: interface addresses come from
the ``SIOCGIFADDR`` ioctl, routes from a UDP ``connect`` (which sends no packet).
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from typing import Iterable, List, Optional, Set

from fcn8s.errors import UserError

SIOCGIFADDR = 0x8915
LOOPBACK = "127.0.0.1"


def interface_addresses() -> Set[str]:
    """IPv4 addresses of this host's (or network namespace's) interfaces that are up, loopback excluded."""
    found: Set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not ipaddress.ip_address(address).is_loopback:
                found.add(address)
    return found


def local_addresses() -> Set[str]:
    """Every address naming this host: interface addresses, the hostname's, and loopback."""
    found = interface_addresses() | {LOOPBACK}
    try:
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return found


def source_address_towards(peer: str) -> Optional[str]:
    """The local address this host would use to reach ``peer``, or None without a route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((peer, 9))
        except OSError:
            return None
        return sock.getsockname()[0]


def reachable_address(mine: Iterable[str], peers: Iterable[Iterable[str]]) -> str:
    """An address of this host that every peer host can connect to.

    ``peers`` holds each other process's interface addresses. Processes with the same addresses
    as this one run on this host and are reached over loopback; if all do, the answer is
    127.0.0.1. Otherwise it is the local address that routes to the first remote peer.
    """
    own = set(mine)
    remote: List[List[str]] = [sorted(addresses) for addresses in map(set, peers) if addresses != own]
    if not remote:
        return LOOPBACK
    for addresses in remote:
        if not addresses:
            raise UserError("a remote rank reported no network address; set MS_SCHED_HOST to an address "
                            "every rank can reach")
        for peer in addresses:
            source = source_address_towards(peer)
            if source and source != LOOPBACK:
                return source
    raise UserError(f"no route from rank 0's host to {remote[0]}; set MS_SCHED_HOST to an address every rank "
                    "can reach")


def resolve_host(name: str, what: str) -> str:
    """IPv4 address of ``name`` (an address or a resolvable host name), or a UserError naming ``what``."""
    try:
        return socket.gethostbyname(name)
    except (OSError, UnicodeError):
        raise UserError(f"{what} {name!r} is neither an IP address nor a resolvable host name") from None
