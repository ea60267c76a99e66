"""Print the project's pinned runtime requirements from pyproject.toml, one per line (image builds).

    python3 docker/requirements.py [--pyproject FILE] [--from-base MODULE ...] [--only NAME ... | --without NAME ...]

Installing these before copying the sources keeps the dependency layer cached across code changes.
``--only`` / ``--without`` split them between layers (the CPU image gives MindSpore a layer of its own).
``--from-base mindspore`` leaves MindSpore out when the base image already provides it (the
Ascend images ship one built for their CANN version); a version other than the pin is reported.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import sys
from typing import List, Optional, Sequence

try:
    import tomllib
except ImportError:  # Python < 3.11 (site Ascend images): pip vendors the same parser
    from pip._vendor import tomli as tomllib


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: str, from_base: Sequence[str] = (), only: Sequence[str] = (),
                 without: Sequence[str] = ()) -> List[str]:
    """Runtime dependencies of the project, minus those in ``from_base`` that are importable here.

    ``only`` keeps just the named ones, ``without`` leaves the named ones out.
    """
    with open(pyproject, "rb") as handle:
        deps = tomllib.load(handle)["project"]["dependencies"]
    kept = []
    for dep in deps:
        name = _name(dep)
        if (only and name not in only) or name in without:
            continue
        if name in from_base and importlib.util.find_spec(name.replace("-", "_")) is not None:
            try:
                found = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found = "unknown version"
            note = "" if dep.endswith(f"=={found}") else f" (this project pins {dep})"
            print(f"using the base image's {name} {found}{note}", file=sys.stderr)
            continue
        kept.append(dep)
    return kept


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pyproject", default="pyproject.toml")
    parser.add_argument("--from-base", nargs="*", default=[], metavar="MODULE",
                        help="leave out these packages when the base image already provides them")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--only", nargs="+", default=[], metavar="NAME", help="print just these")
    split.add_argument("--without", nargs="+", default=[], metavar="NAME", help="leave these out")
    args = parser.parse_args(argv)
    names = {key: [_name(n) for n in getattr(args, key)] for key in ("from_base", "only", "without")}
    print("\n".join(requirements(args.pyproject, **names)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
