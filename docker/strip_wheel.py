"""Rewrite a wheel without the members that match shell patterns (and without their RECORD lines).

    python3 docker/strip_wheel.py WHEEL PATTERN [PATTERN ...]

The CPU image installs MindSpore from its wheel stripped of the GPU and Ascend plugins (1.9 GB
unpacked; the CPU runtime never loads them), so the build never holds them on disk. Patterns
match whole member paths with ``fnmatch`` (``*`` crosses ``/``). The wheel is replaced in place by
an uncompressed one (no CPU spent compressing what pip unpacks a moment later).
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import sys
import zipfile
from typing import Optional, Sequence, Tuple


def strip_wheel(path: str, patterns: Sequence[str]) -> Tuple[int, int]:
    """Drop the matching members of the wheel at ``path``; returns (files dropped, their unpacked bytes)."""
    def dropped(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    partial = path + ".partial"
    count = size = 0
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            if dropped(info.filename):
                count, size = count + 1, size + info.file_size
                continue
            kept = zipfile.ZipInfo(info.filename, info.date_time)
            kept.external_attr = info.external_attr  # file modes (executable bits)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = source.read(info).decode("utf-8").splitlines(keepends=True)
                target.writestr(kept, "".join(line for line in lines if not dropped(line.split(",", 1)[0])))
            else:
                kept.file_size = info.file_size  # zipfile then knows whether it needs ZIP64
                with source.open(info) as member, target.open(kept, "w") as copy:
                    shutil.copyfileobj(member, copy, 1 << 20)
    os.replace(partial, path)
    return count, size


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel")
    parser.add_argument("patterns", nargs="+", metavar="PATTERN")
    args = parser.parse_args(argv)
    try:
        count, size = strip_wheel(args.wheel, args.patterns)
    except (OSError, zipfile.BadZipFile) as err:
        print(f"strip_wheel: {args.wheel}: {err}", file=sys.stderr)
        return 1
    if count == 0:
        print(f"strip_wheel: no member of {args.wheel} matches {' '.join(args.patterns)}", file=sys.stderr)
        return 1
    print(f"strip_wheel: dropped {count} files ({size / 1e9:.2f} GB unpacked) from {os.path.basename(args.wheel)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
