"""SBD ("benchmark_RELEASE") layout: ``dataset/{img,cls}``, ``dataset/{train,val}.txt``, .mat labels."""
from __future__ import annotations

import os
from typing import List

import numpy as np
import scipy.io

from fcn8s.data.voc import Sample, read_id_list
from fcn8s.errors import UserError

SBD_SPLITS = ("train", "val")


def sbd_dataset_dir(sbd_root: str) -> str:
    """``<root>/dataset``; accepts the archive's top folder or the dataset folder itself."""
    nested = os.path.join(sbd_root, "dataset")
    if os.path.isdir(nested):
        return nested
    if os.path.isdir(os.path.join(sbd_root, "cls")):
        return sbd_root
    raise UserError(f"SBD root not found or not an SBD tree (no dataset/cls): {sbd_root}")


def list_sbd_samples(sbd_root: str, split: str) -> List[Sample]:
    """Samples listed in ``dataset/<split>.txt`` (image ``img/<id>.jpg``, label ``cls/<id>.mat``)."""
    base = sbd_dataset_dir(sbd_root)
    return [Sample(sid, os.path.join(base, "img", f"{sid}.jpg"), os.path.join(base, "cls", f"{sid}.mat"), "sbd")
            for sid in read_id_list(os.path.join(base, f"{split}.txt"))]


def read_sbd_label(path: str) -> np.ndarray:
    """Class-index map (H, W) uint8 from the ``GTcls.Segmentation`` field of an SBD .mat file."""
    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except (OSError, ValueError, TypeError, scipy.io.matlab.MatReadError) as err:
        raise UserError(f"{path}: not a readable .mat file ({err})") from None
    gt = mat.get("GTcls")
    segmentation = getattr(gt, "Segmentation", None)
    if segmentation is None:
        raise UserError(f"{path}: no GTcls.Segmentation field (not an SBD class label)")
    label = np.asarray(segmentation)
    if label.ndim != 2:
        raise UserError(f"{path}: GTcls.Segmentation has shape {label.shape}, expected (H, W)")
    return label.astype(np.uint8)
