"""MindRecord files with the reference schema ``{file_name: string, data: bytes, label: bytes}``.

``data`` holds the original JPEG bytes; ``label`` a single-channel PNG of class indices (0..20,
255 = ignore), written with zlib level 3 and the default strategy: such label maps decode ~3x
faster than with OpenCV's default PNG settings, at about the same size. A dataset directory
holds ``<split>.mindrecord*`` shard files and ``manifest.json``; it is written under a temporary
name and renamed into place only when complete. The manifest records each shard's sha256 and
size; readers compare sizes (and the ``.db`` index) on every open, sha256 on request.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
from typing import Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np

from fcn8s.errors import UserError

SCHEMA = {"file_name": {"type": "string"}, "data": {"type": "bytes"}, "label": {"type": "bytes"}}
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial"  # suffix of the directory a build writes into until it is complete
WRITE_BATCH = 64
HEADER_SIZE = 1 << 20  # bytes; the MindSpore defaults (16/32 MiB) bloat small datasets
PAGE_SIZE = 1 << 22
LABEL_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT]


def encode_label(label: np.ndarray) -> bytes:
    """Class-index map (H, W) uint8 -> the single-channel PNG stored in the ``label`` field."""
    ok, png = cv2.imencode(".png", label, LABEL_PNG_PARAMS)
    if not ok:  # pragma: no cover - cv2 failure on a valid uint8 array
        raise ValueError("cannot encode label")
    return png.tobytes()


def split_prefix(dataset_dir: str, split: str) -> str:
    return os.path.join(dataset_dir, f"{split}.mindrecord")


def shard_path(dataset_dir: str, split: str, index: int, count: int) -> str:
    """``<dir>/<split>.mindrecord-00000-of-00004``: one self-contained MindRecord file per shard."""
    return f"{split_prefix(dataset_dir, split)}-{index:05d}-of-{count:05d}"


def write_file(records: Sequence[Dict[str, object]], path: str, split: str) -> str:
    """Write ``records`` as one MindRecord file (plus its ``.db`` index); returns its sha256."""
    from mindspore.mindrecord import FileWriter  # here: readers of this module (preflight) need no MindSpore

    writer = FileWriter(file_name=path, shard_num=1, overwrite=True)
    writer.set_header_size(HEADER_SIZE)
    writer.set_page_size(PAGE_SIZE)
    writer.add_schema(SCHEMA, f"fcn8s_{split}")
    for start in range(0, len(records), WRITE_BATCH):
        writer.write_raw_data(list(records[start:start + WRITE_BATCH]))
    writer.commit()
    return sha256_file(path)


def split_files(dataset_dir: str, split: str) -> List[str]:
    """The MindRecord files of a split: ``<split>.mindrecord`` or its shards, in name order."""
    prefix = split_prefix(dataset_dir, split)
    if os.path.isfile(prefix):
        return [prefix]
    return sorted(f for f in glob.glob(prefix + "*") if not f.endswith(".db"))


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _partial(out_dir: str) -> str:
    return f"{out_dir.rstrip(os.sep)}{PARTIAL}"


def staging_dir(out_dir: str) -> str:
    """A fresh temporary directory beside ``out_dir`` (removed first if a crash left one)."""
    tmp = _partial(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def publish(tmp_dir: str, out_dir: str, manifest: Dict[str, object]) -> None:
    """Write the manifest, then atomically replace ``out_dir`` with the finished staging dir."""
    with open(os.path.join(tmp_dir, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    old = f"{out_dir.rstrip(os.sep)}.old"
    if os.path.exists(out_dir):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
    os.rename(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def dataset_files(dataset_dir: str, split: str) -> List[str]:
    """Shard files for ``split``, checked with :func:`check_files`; accepts a dataset directory or a MindRecord file."""
    if os.path.isfile(dataset_dir) and not dataset_dir.endswith(".db"):
        check_files([dataset_dir], None, split)
        return [dataset_dir]
    incomplete = os.path.exists(_partial(dataset_dir))
    if not os.path.isdir(dataset_dir):
        hint = f"; {_partial(dataset_dir)} is an incomplete build: rerun it" if incomplete else ""
        raise UserError(f"dataset not found: {dataset_dir} (build it with python -m fcn8s.build_dataset{hint})")
    unfinished = dataset_dir.rstrip(os.sep).endswith(PARTIAL) or (
        incomplete and not os.path.isfile(os.path.join(dataset_dir, MANIFEST)))  # a rebuild over a manifest-less dir
    if unfinished:
        raise UserError(f"{dataset_dir}: incomplete build (build_dataset did not finish); rerun build_dataset")
    files = split_files(dataset_dir, split)
    if not files:
        raise UserError(f"{dataset_dir}: no '{split}' MindRecord files ({split}.mindrecord*)")
    check_files(files, read_manifest(dataset_dir), split)
    return files


def read_manifest(dataset_dir: str) -> Optional[Dict[str, object]]:
    """``manifest.json`` of a dataset directory (None if it has none: built by other tools)."""
    path = os.path.join(dataset_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the dataset manifest ({err}); rebuild the dataset") from None


def check_files(files: Sequence[str], manifest: Optional[Dict[str, object]], split: str,
                checksums: bool = False) -> None:
    """Refuse shard files that MindSpore could not read or that differ from the manifest.

    Always: each file has its ``.db`` index and, with a manifest, the manifest's shard set and
    byte sizes. ``checksums``: also the manifest's sha256 (reads every byte).
    """
    for path in files:
        if not os.path.isfile(path + ".db"):
            raise UserError(f"{path}: its index {os.path.basename(path)}.db is missing (rebuild the dataset)")
    if manifest is None:
        if checksums:
            raise UserError(f"{os.path.dirname(files[0]) or '.'}: no {MANIFEST} to verify the '{split}' files against")
        return
    entry = manifest.get("splits", {}).get(split, {})
    digests, sizes = entry.get("files", {}), entry.get("bytes", {})
    names = {os.path.basename(path): path for path in files}
    directory = os.path.dirname(files[0])
    for name in sorted(set(digests) - set(names)):
        raise UserError(f"{os.path.join(directory, name)}: shard file listed in {MANIFEST} is missing")
    for name, path in names.items():
        if name not in digests:
            raise UserError(f"{path}: not a '{split}' shard of {MANIFEST} (a stray or renamed file?)")
        if name in sizes and os.path.getsize(path) != sizes[name]:
            raise UserError(f"{path}: {os.path.getsize(path)} bytes, {MANIFEST} says {sizes[name]} "
                            "(truncated or damaged; rebuild the dataset)")
        if checksums and sha256_file(path) != digests[name]:
            raise UserError(f"{path}: sha256 differs from {MANIFEST} (damaged file; rebuild the dataset)")


def verify_split(dataset_dir: str, split: str, checksums: bool = False) -> None:
    """Check the shard files of ``split`` before a run starts; ``checksums`` (``--verify-data``): sha256 too."""
    files = dataset_files(dataset_dir, split)
    if checksums:
        check_files(files, None if os.path.isfile(dataset_dir) else read_manifest(dataset_dir), split, checksums=True)


@contextlib.contextmanager
def read_errors(dataset_dir: str, split: str) -> Iterator[None]:
    """Turn MindSpore's reader errors (RuntimeError, C++ stack) into one UserError naming the file."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        files = [dataset_dir] if os.path.isfile(dataset_dir) else split_files(dataset_dir, split)
        named = [path for path in files if path in text]
        where = named[0] if named else f"{dataset_dir} ('{split}' MindRecord files)"
        raise UserError(f"{where}: cannot read: {_reader_message(text)} (damaged? rebuild the dataset)") from None


def _reader_message(text: str) -> str:
    """The one informative line of a MindSpore dataset error (its 'Dataset Pipeline Error Message')."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("---")]
    marker = next((i for i, line in enumerate(lines) if line.startswith("- Dataset Pipeline Error Message")), None)
    return lines[marker + 1] if marker is not None and marker + 1 < len(lines) else (lines[0] if lines else "error")
