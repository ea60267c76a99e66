"""Per-rank MindSpore datasets over the MindRecord files."""
from __future__ import annotations

from typing import Iterator, Tuple

import cv2
import numpy as np

import mindspore.dataset as ds

from fcn8s.config import Config
from fcn8s.data.mindrecord import dataset_files
from fcn8s.data.transforms import TrainTransform, decode_image, decode_label
from fcn8s.errors import UserError


def create_train_dataset(cfg: Config, rank: int = 0, size: int = 1) -> ds.Dataset:
    """Shuffled, augmented, batched train split; rank ``rank`` of ``size`` reads only its shard.

    MindDataset shards by sample index after a shuffle seeded identically on every rank, so each
    sample is read by exactly one rank per epoch. Batches are per device (global = batch x size).
    """
    cv2.setNumThreads(1)
    data = cfg.data
    ds.config.set_seed(cfg.train.seed)
    dataset = ds.MindDataset(dataset_files(data.mindrecord_dir, "train"), columns_list=["data", "label"],
                             shuffle=True, num_shards=size, shard_id=rank)
    transform = TrainTransform(data.crop_size, data.min_scale, data.max_scale, data.image_mean, data.image_std,
                               data.ignore_label, seed=cfg.train.seed * 1000 + rank)
    dataset = dataset.map(operations=transform, input_columns=["data", "label"], output_columns=["data", "label"],
                          num_parallel_workers=data.num_workers)
    dataset = dataset.batch(cfg.train.batch_size, drop_remainder=True)
    if dataset.get_dataset_size() == 0:
        raise UserError(f"{data.mindrecord_dir}: the train shard of rank {rank} has fewer samples than "
                        f"train.batch_size={cfg.train.batch_size}")
    return dataset


def iterate_eval_samples(dataset_dir: str, rank: int = 0, size: int = 1, split: str = "val"
                         ) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """Yield (file_name, BGR image, label) for this rank's share of a split, in file order."""
    dataset = ds.MindDataset(dataset_files(dataset_dir, split), columns_list=["file_name", "data", "label"],
                             shuffle=False, num_shards=size, shard_id=rank)
    for row in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
        yield str(row["file_name"]), decode_image(row["data"].tobytes()), decode_label(row["label"].tobytes())
