"""Print the project's pinned runtime requirements from pyproject.toml, one per line (image builds).

    python3 docker/requirements.py [--pyproject FILE] [--from-base MODULE ...]

Installing these before copying the sources keeps the dependency layer cached across code changes.
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


def requirements(pyproject: str, from_base: Sequence[str] = ()) -> List[str]:
    """Runtime dependencies of the project, minus those in ``from_base`` that are importable here."""
    with open(pyproject, "rb") as handle:
        deps = tomllib.load(handle)["project"]["dependencies"]
    kept = []
    for dep in deps:
        name = _name(dep)
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
    args = parser.parse_args(argv)
    print("\n".join(requirements(args.pyproject, [_name(m) for m in args.from_base])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
