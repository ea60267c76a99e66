"""Per-rank MindSpore datasets over the MindRecord files."""
from __future__ import annotations

from typing import Iterator, Tuple

import cv2
import numpy as np

import mindspore.dataset as ds

from fcn8s.config import Config
from fcn8s.data.mindrecord import dataset_files, read_errors
from fcn8s.data.sampling import eval_indices, rank_indices, steps_in_epoch
from fcn8s.data.transforms import PAD_LABEL, TrainTransform, decode_image, decode_label
from fcn8s.errors import UserError


def count_samples(dataset_dir: str, split: str = "train") -> int:
    """Number of samples in a split (all shard files)."""
    files = dataset_files(dataset_dir, split)
    with read_errors(dataset_dir, split):
        return ds.MindDataset(files, columns_list=["file_name"], shuffle=False).get_dataset_size()


def create_train_dataset(cfg: Config, rank: int = 0, size: int = 1, epoch: int = 0, consumed: int = 0
                         ) -> ds.Dataset:
    """Augmented, batched train samples of rank ``rank`` of ``size`` for the rest of one epoch.

    The order and each sample's augmentation depend only on (seed, epoch, sample), see
    fcn8s/data/sampling.py: every sample is read by exactly one rank per epoch, and skipping the
    ``consumed`` samples of the epoch resumes a run exactly. Batches are per device
    (global batch = batch x size). Samples are uint8 crops (images (3, crop, crop), labels with
    ``PAD_LABEL`` on padding); the train step normalises them with ``fcn8s.data.normalize.TrainInput``.
    """
    cv2.setNumThreads(1)
    data, batch_size = cfg.data, cfg.train.batch_size
    if cfg.model.num_classes > PAD_LABEL:
        raise UserError(f"model.num_classes: at most {PAD_LABEL} (label value {PAD_LABEL} marks padding in train "
                        f"crops), got {cfg.model.num_classes}")
    files = dataset_files(data.mindrecord_dir, "train")
    num_samples = count_samples(data.mindrecord_dir)
    if steps_in_epoch(num_samples, 0, batch_size, size) == 0:
        raise UserError(f"{data.mindrecord_dir}: the train split has {num_samples} samples, fewer than one global "
                        f"batch (train.batch_size={batch_size} x {size} rank(s))")
    indices = rank_indices(num_samples, cfg.train.seed, epoch, consumed, batch_size, rank, size)
    dataset = ds.MindDataset(files, columns_list=["file_name", "data", "label"],
                             sampler=ds.SubsetSampler(indices.tolist()))
    transform = TrainTransform(data.crop_size, data.min_scale, data.max_scale, seed=cfg.train.seed, epoch=epoch)
    dataset = dataset.map(operations=transform, input_columns=["data", "label", "file_name"],
                          output_columns=["data", "label"], num_parallel_workers=data.num_workers)
    return dataset.batch(batch_size, drop_remainder=True)


def iterate_eval_samples(dataset_dir: str, rank: int = 0, size: int = 1, split: str = "val"
                         ) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """Yield (file_name, BGR image, label) for this rank's share of a split, in file order.

    Every sample goes to exactly one rank (``num_shards`` would pad the shards by wrapping around).
    """
    indices = eval_indices(count_samples(dataset_dir, split), rank, size)
    if not indices:
        return
    dataset = ds.MindDataset(dataset_files(dataset_dir, split), columns_list=["file_name", "data", "label"],
                             sampler=ds.SubsetSampler(indices))
    with read_errors(dataset_dir, split):
        for row in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
            yield str(row["file_name"]), decode_image(row["data"].tobytes()), decode_label(row["label"].tobytes())
