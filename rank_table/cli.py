"""Command line: ``python -m rank_table generate|merge|validate`` (see ``--help`` of each)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from rank_table import RankTableError, devices
from rank_table.files import generate_table, load_table, write_table
from rank_table.table import merge_tables

EXIT_USER_ERROR = 2

GENERATE_HELP = f"""\
Write the rank table of this server.

The format is version 1.0, as MindSpore's hccl_tools.py writes it.

Device IPs are read from --hccn-conf (lines address_N=IP) when that file exists, otherwise
from `hccn_tool -i N -ip -g` (--hccn-tool, default: on PATH or in {devices.DRIVER_TOOLS_DIR}).
If {devices.VISIBLE_ENV} is set, --devices must be a subset of it and defaults to it;
otherwise --devices defaults to every device in hccn.conf (or every /dev/davinciN).
Rank ids are 0..N-1 in ascending device id order.

examples:
  python -m rank_table generate -o hccl_8p.json
  python -m rank_table generate --devices "[0,4)" --server-ip 10.0.0.1 -o hccl_4p.json
  python -m rank_table generate --devices 8-15 -o hccl_8p_hi.json
"""

MERGE_HELP = """\
Merge single-server rank tables into one cluster table.

Servers keep the order of the arguments (do not rely on shell glob order); rank ids are
renumbered 0..N-1 across them. A device that appears twice (same server_id and device_id, e.g.
the same table given twice) or a repeated device IP is an error.

example:
  python -m rank_table merge hccl_node0.json hccl_node1.json -o hccl_16p.json
"""

VALIDATE_HELP = """\
Check a rank table before launching.

Checks: JSON, version "1.0", status "completed", server_count, string fields, numeric device
ids, valid IPs, unique device IPs, container_ip values and rank ids (0..N-1), and no device
listed twice: a server_id may appear in several entries (hccl-controller writes one entry per
pod, and pods can share a node) but a (server_id, device_id) pair may not, since one NPU cannot
belong to two pods.
Ascend Operator tables (container_ip / host_ip, no host_nic_ip) are accepted, also with an
empty host_ip; server_id must be an IP address unless the entry has a container_ip or a
non-empty host_ip (then it may be a node name). Versions "1.2" (A3 SuperPoD) and "2.0" (A5) are
refused. "initializing" means the cluster controller has not filled the table in yet.
Prints a one-line summary and exits 0, or prints "error: FILE: problem" and exits 2.

example:
  python -m rank_table validate /user/serverid/devindex/config/hccl.json --expect-size 16
"""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one ``error: ...`` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print a one-line usage error and exit."""
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``rank_table`` parser with its three subcommands."""
    parser = _Parser(prog="python -m rank_table", description="HCCL rank table tools for MindSpore on Ascend.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{generate,merge,validate}")
    _add_generate(commands)
    _add_merge(commands)
    _add_validate(commands)
    return parser


def _subcommand(commands: Any, name: str, text: str) -> argparse.ArgumentParser:
    """Add a subcommand whose --help shows ``text`` verbatim; its first line is the summary."""
    return commands.add_parser(name, help=text.splitlines()[0], description=text,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_generate(commands: Any) -> None:
    """``generate``: this server's table from hccn.conf / hccn_tool."""
    sub = _subcommand(commands, "generate", GENERATE_HELP)
    sub.add_argument("--devices", metavar="SPEC",
                     help="devices to use: 0-7, 0,2,4,6, [0,8) (half-open), 8-15 or 4 (default: all visible)")
    sub.add_argument("--server-ip", metavar="IP", help="server_id to write (default: this host's primary IP)")
    sub.add_argument("--hccn-conf", metavar="PATH", default=devices.DEFAULT_HCCN_CONF,
                     help="hccn.conf with address_N=IP lines (default: %(default)s)")
    sub.add_argument("--hccn-tool", metavar="PATH",
                     help="hccn_tool executable, used when --hccn-conf does not exist")
    sub.add_argument("-o", "--output", metavar="FILE", required=True, help="rank table to write")
    sub.set_defaults(run=_generate)


def _add_merge(commands: Any) -> None:
    """``merge``: several tables into one."""
    sub = _subcommand(commands, "merge", MERGE_HELP)
    sub.add_argument("inputs", nargs="+", metavar="TABLE", help="rank tables to merge, in server order (two or more)")
    sub.add_argument("-o", "--output", metavar="FILE", required=True, help="merged rank table to write")
    sub.set_defaults(run=_merge)


def _add_validate(commands: Any) -> None:
    """``validate``: check one table."""
    sub = _subcommand(commands, "validate", VALIDATE_HELP)
    sub.add_argument("file", metavar="FILE", help="rank table to check")
    sub.add_argument("--expect-size", metavar="N", type=_positive_int,
                     help="required total number of devices (ranks)")
    sub.set_defaults(run=_validate)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _generate(args: argparse.Namespace) -> str:
    """Build and write this server's table; return the summary line."""
    requested = devices.parse_device_spec(args.devices) if args.devices is not None else None
    table = generate_table(args.output, requested, args.hccn_conf, args.hccn_tool, args.server_ip)
    server = table["server_list"][0]
    return f"wrote {args.output} ({len(server['device'])} devices, server {server['server_id']})"


def _merge(args: argparse.Namespace) -> str:
    """Merge the input tables in order and write the result; return the summary line."""
    if len(args.inputs) < 2:
        raise RankTableError("merge needs at least two tables")
    tables = [load_table(path)[0] for path in args.inputs]
    try:
        merged = merge_tables(tables)
    except RankTableError as exc:
        raise RankTableError(f"merged table: {exc}") from None
    write_table(args.output, merged)
    count = sum(len(server["device"]) for server in merged["server_list"])
    return f"wrote {args.output} ({merged['server_count']} servers, {count} devices)"


def _validate(args: argparse.Namespace) -> str:
    """Validate one file; return the summary line."""
    servers, count = load_table(args.file, args.expect_size)[1]
    return f"{args.file}: ok ({servers} servers, {count} devices)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        print(args.run(args))
    except RankTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0

