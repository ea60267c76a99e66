"""Convert PASCAL VOC 2012 (+ optional SBD) into sharded MindRecord files (train + val).

    python -m fcn8s.build_dataset --voc-root VOCdevkit/VOC2012 --sbd-root benchmark_RELEASE \
        --out data/mindrecord --shards 8 --workers 4

train = VOC train + SBD train + SBD val, duplicates removed (VOC's label wins), minus every VOC
val image (the standard "train_aug" set: 10,582 images on the real data); val = VOC val (1,449).

Every sample is checked (decodable JPEG, label present, same size, values in 0..20 or 255).
By default any bad sample stops the build (exit 2, list of bad files); --skip-bad leaves them out.
The output directory appears only when the build is complete.
"""
from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from fcn8s.config import resolve_path
from fcn8s.data import mindrecord
from fcn8s.data.sbd import SBD_SPLITS, list_sbd_samples, read_sbd_label
from fcn8s.data.voc import IGNORE_LABEL, NUM_VOC_CLASSES, Sample, list_voc_samples, read_label_png
from fcn8s.errors import UserError, run_cli
from fcn8s.logs import setup_logging

LOG = logging.getLogger("fcn8s.build_dataset")
SPLITS = ("train", "val")


class BadSample(Exception):
    """A sample that cannot go into the dataset; the message names the file and the problem."""


def encode_sample(sample: Sample) -> Dict[str, object]:
    """Validate one sample and return its MindRecord row (raw JPEG bytes, index PNG bytes)."""
    if not os.path.isfile(sample.image_path):
        raise BadSample(f"{sample.image_path}: image file missing")
    if not os.path.isfile(sample.label_path):
        raise BadSample(f"{sample.label_path}: label file missing")
    with open(sample.image_path, "rb") as handle:
        image_bytes = handle.read()
    image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadSample(f"{sample.image_path}: not a decodable image (corrupt or truncated)")
    try:
        label = read_sbd_label(sample.label_path) if sample.source == "sbd" else read_label_png(sample.label_path)
    except (OSError, ValueError, UserError) as err:
        raise BadSample(f"{sample.label_path}: unreadable label ({err})") from None
    if label.shape != image.shape[:2]:
        raise BadSample(f"{sample.label_path}: label size {label.shape[1]}x{label.shape[0]} != image size "
                        f"{image.shape[1]}x{image.shape[0]}")
    bad = np.setdiff1d(np.unique(label), np.r_[np.arange(NUM_VOC_CLASSES), IGNORE_LABEL])
    if bad.size:
        raise BadSample(f"{sample.label_path}: label values {bad.tolist()} outside 0..{NUM_VOC_CLASSES - 1} and 255")
    return {"file_name": sample.sample_id, "data": image_bytes, "label": mindrecord.encode_label(label)}


def check_ids(samples: List[Sample], split: str) -> None:
    seen = set()
    for sample in samples:
        if sample.sample_id in seen:
            raise UserError(f"split '{split}': id {sample.sample_id} is listed twice")
        seen.add(sample.sample_id)
    if not samples:
        raise UserError(f"split '{split}' is empty")


_PROGRESS = None  # multiprocessing.Value: samples processed, shared with the forked workers


def _write_shard(job: Tuple[List[Sample], str, str]) -> Tuple[Optional[str], List[str], List[str]]:
    """Worker: encode one shard's samples and write its file; returns (sha256, ids written, errors)."""
    samples, path, split = job
    rows: List[Dict[str, object]] = []
    errors: List[str] = []
    for sample in samples:
        try:
            rows.append(encode_sample(sample))
        except BadSample as err:
            errors.append(str(err))
        with _PROGRESS.get_lock():
            _PROGRESS.value += 1
    digest = mindrecord.write_file(rows, path, split) if rows else None
    return digest, [str(row["file_name"]) for row in rows], errors


def write_split(samples: List[Sample], tmp_dir: str, split: str, shards: int, workers: int
                ) -> Tuple[Dict[str, object], List[str], List[str]]:
    """Encode and write ``shards`` files in parallel (one worker per shard at a time).

    Returns the split's manifest entry, the ids written (in order) and the bad-sample messages.
    """
    global _PROGRESS
    shards = min(shards, len(samples))
    bounds = [len(samples) * k // shards for k in range(shards + 1)]
    jobs = [(samples[bounds[k]:bounds[k + 1]], mindrecord.shard_path(tmp_dir, split, k, shards), split)
            for k in range(shards)]
    context = multiprocessing.get_context("fork")
    _PROGRESS = context.Value("l", 0)
    with context.Pool(min(workers, shards)) as pool, \
            tqdm(total=len(samples), desc=f"build {split}", unit="img", leave=False) as bar:
        pending = pool.map_async(_write_shard, jobs, chunksize=1)
        while not pending.ready():
            pending.wait(0.2)
            bar.update(_PROGRESS.value - bar.n)
        bar.update(_PROGRESS.value - bar.n)
        results = pending.get()
    shards_written = [(os.path.basename(path), digest, os.path.getsize(path))
                      for (_, path, _), (digest, _, _) in zip(jobs, results) if digest]
    files = {name: digest for name, digest, _ in shards_written}
    sizes = {name: size for name, _, size in shards_written}
    written = [sid for _, ids, _ in results for sid in ids]
    errors = [error for _, _, errs in results for error in errs]
    return {"count": len(written), "files": files, "bytes": sizes}, written, errors


def compose_splits(voc_root: str, sbd_root: Optional[str]) -> Tuple[Dict[str, List[Sample]], Dict[str, int]]:
    """train_aug / val sample lists and the counts of what was merged away."""
    voc = {split: list_voc_samples(voc_root, split) for split in SPLITS}
    candidates = list(voc["train"])
    check_ids(voc["train"], "train")
    check_ids(voc["val"], "val")
    if sbd_root:
        for split in SBD_SPLITS:
            sbd = list_sbd_samples(sbd_root, split)
            check_ids(sbd, f"sbd {split}")
            candidates += sbd
    train: Dict[str, Sample] = {}
    duplicates = 0
    for sample in candidates:
        if sample.sample_id in train:
            duplicates += 1
        else:
            train[sample.sample_id] = sample
    val_ids = {s.sample_id for s in voc["val"]}
    overlap = sum(1 for sid in train if sid in val_ids)
    splits = {"train": [s for sid, s in train.items() if sid not in val_ids], "val": voc["val"]}
    return splits, {"duplicates_removed": duplicates, "excluded_val_overlap": overlap}


def build(voc_root: str, out_dir: str, shards: Optional[int] = None, workers: int = 1, skip_bad: bool = False,
          sbd_root: Optional[str] = None) -> Dict[str, object]:
    """Build ``out_dir`` with train/val MindRecord shards and a manifest; returns the manifest.

    ``shards`` files per split (default: one per worker); workers encode and write shards in parallel.
    """
    shards = workers if shards is None else shards
    if shards < 1 or workers < 1:
        raise UserError("--shards and --workers must be >= 1")
    splits, merged = compose_splits(voc_root, sbd_root)
    tmp_dir = mindrecord.staging_dir(out_dir)
    sources = {"voc": os.path.abspath(voc_root)}
    if sbd_root:
        sources["sbd"] = os.path.abspath(sbd_root)
    manifest: Dict[str, object] = {"schema_version": mindrecord.SCHEMA_VERSION, "schema": mindrecord.SCHEMA,
                                   "sources": sources, **merged, "splits": {}, "label_source": {}}
    for split, samples in splits.items():
        info, written_ids, errors = write_split(samples, tmp_dir, split, shards, workers)
        if errors and not skip_bad:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise UserError(f"{len(errors)} bad sample(s) in '{split}', nothing written "
                            f"(use --skip-bad to leave them out):\n  " + "\n  ".join(errors))
        for error in errors:
            LOG.warning("skipped: %s", error)
        if not written_ids:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise UserError(f"split '{split}' is empty after leaving out bad samples: nothing to write")
        written = set(written_ids)
        info["skipped"] = len(errors)
        info["by_source"] = dict(collections.Counter(s.source for s in samples if s.sample_id in written))
        manifest["splits"][split] = info
        manifest["label_source"].update({s.sample_id: s.source for s in samples if s.sample_id in written})
        LOG.info("%s: %d samples %s, %d skipped, %d shard file(s)", split, info["count"], info["by_source"],
                 len(errors), len(info["files"]))
    mindrecord.publish(tmp_dir, out_dir, manifest)
    print(f"dataset ready in {out_dir}: train {manifest['splits']['train']['count']}, "
          f"val {manifest['splits']['val']['count']}, duplicates removed {merged['duplicates_removed']}, "
          f"val images excluded from train {merged['excluded_val_overlap']}")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcn8s.build_dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-root", required=True, type=resolve_path,
                        help="VOC2012 directory (JPEGImages, SegmentationClass, ImageSets)")
    parser.add_argument("--sbd-root", type=resolve_path,
                        help="optional SBD benchmark_RELEASE directory (dataset/img, dataset/cls)")
    parser.add_argument("--out", required=True, type=resolve_path, help="output dataset directory")
    parser.add_argument("--shards", type=int, help="MindRecord files per split (default: one per worker)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="encoding processes (default: min(4, cores))")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad samples out instead of stopping")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    build(args.voc_root, args.out, args.shards, args.workers, args.skip_bad, args.sbd_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
