"""Per-epoch sample order: disjoint across ranks, reproducible, resumable at any rank count."""
import numpy as np
import pytest

from fcn8s.config import load_config
from fcn8s.data.pipeline import create_train_dataset
from fcn8s.data.sampling import epoch_order, rank_indices, steps_in_epoch


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ranks_read_disjoint_samples_covering_all_full_global_batches(size):
    num, batch = 50, 4
    parts = [rank_indices(num, 7, 0, 0, batch, rank, size) for rank in range(size)]
    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist())) == steps_in_epoch(num, 0, batch, size) * batch * size
    assert all(len(part) == len(parts[0]) for part in parts)  # equal steps on every rank
    assert set(flat.tolist()) == set(epoch_order(num, 7, 0)[:len(flat)].tolist())


def test_epochs_reshuffle_and_the_order_is_reproducible():
    assert not np.array_equal(epoch_order(100, 1, 0), epoch_order(100, 1, 1))
    np.testing.assert_array_equal(epoch_order(100, 1, 3), epoch_order(100, 1, 3))


@pytest.mark.parametrize("old_size, new_size", [(2, 2), (2, 1), (1, 3)])
def test_resuming_skips_exactly_the_consumed_samples(old_size, new_size):
    num, batch, steps_done = 60, 2, 5
    consumed = steps_done * batch * old_size
    before = np.concatenate([rank_indices(num, 3, 2, 0, batch, r, old_size)[:steps_done * batch]
                             for r in range(old_size)])
    after = np.concatenate([rank_indices(num, 3, 2, consumed, batch, r, new_size) for r in range(new_size)])
    assert not set(before.tolist()) & set(after.tolist())
    assert set(before.tolist()) == set(epoch_order(num, 3, 2)[:consumed].tolist())


def test_resumed_dataset_yields_the_same_augmented_batches(mindrecord_dir):
    cfg = load_config("configs/cpu_smoke.yaml", [f"data.mindrecord_dir={mindrecord_dir}", "train.batch_size=2"])
    full = list(create_train_dataset(cfg, 1, 2, epoch=1).create_tuple_iterator(num_epochs=1, output_numpy=True))
    rest = list(create_train_dataset(cfg, 1, 2, epoch=1, consumed=8).create_tuple_iterator(
        num_epochs=1, output_numpy=True))
    assert len(full) == 6 and len(rest) == 4  # 24 samples / (2 x 2); 8 consumed = 2 steps
    for (images, labels), (images_r, labels_r) in zip(full[2:], rest):
        np.testing.assert_array_equal(images, images_r)
        np.testing.assert_array_equal(labels, labels_r)
