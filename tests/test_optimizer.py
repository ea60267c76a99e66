"""The optimizer in the gradients' unit: with a fixed loss scale the step skips the unscale pass and trains
exactly as with it; checkpoints carry the moments' unit and convert them on resume."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn
from mindspore import amp

from fcn8s.checkpoint import CheckpointManager, restore_training_state, training_state
from fcn8s.loss_scale import FixedLossScaler
from fcn8s.losses import SegmentationCrossEntropy
from fcn8s.optimizer import UnitMomentum, gradient_unit
from fcn8s.trainer import make_train_step

LR = np.array([0.1, 0.05, 0.025, 0.0125], np.float32)
SCALE = 1024.0


def _net():
    ms.set_seed(3)
    return nn.SequentialCell(nn.Conv2d(3, 4, 3, has_bias=True), nn.ReLU(), nn.Conv2d(4, 21, 1, has_bias=True))


def _train(unit):
    """Three fixed-scale steps with weight decay; returns the net, optimizer, scaler and reported lrs."""
    net = _net()
    optimizer = UnitMomentum(net.trainable_params(), LR, 0.9, 1e-2, unit)
    scaler = FixedLossScaler(SCALE)
    step = make_train_step(net, SegmentationCrossEntropy(21), optimizer, scaler, jit=False)
    rng = np.random.default_rng(0)
    lrs = []
    for _ in range(3):
        images = ms.Tensor(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
        labels = ms.Tensor(rng.integers(0, 21, (2, 8, 8)).astype(np.int32))
        lrs.append(float(step(images, labels)[3].asnumpy()))
    return net, optimizer, scaler, lrs


def test_the_unit_is_the_fixed_scale_times_the_ranks_and_one_for_a_dynamic_scale():
    assert gradient_unit(FixedLossScaler(1024), 8) == 8192.0
    assert gradient_unit(amp.DynamicLossScaler(1024, 2, 50), 8) == 1.0


def test_no_unscale_pass_trains_bit_for_bit_as_the_unscaled_update(tmp_path):
    """The trainer's optimizer (unit = loss scale) against nn.Momentum's units (the step unscales): the same
    weights and reported learning rates, moments ``unit`` times larger; a checkpoint of the first resumes
    into the second with the moments converted."""
    folded_net, folded, scaler, folded_lrs = _train(gradient_unit(FixedLossScaler(SCALE), 1))
    plain_net, plain, _, plain_lrs = _train(1.0)
    assert folded_lrs == plain_lrs == [float(lr) for lr in LR[:3]]
    for a, b in zip(folded_net.trainable_params(), plain_net.trainable_params()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    for a, b in zip(folded.moments, plain.moments):
        np.testing.assert_array_equal(a.asnumpy(), SCALE * b.asnumpy())
        assert np.any(b.asnumpy() != 0)
    path = CheckpointManager(str(tmp_path), 1, "digest").save(training_state(folded_net, folded, scaler), 3,
                                                             {"epoch": 0, "consumed": 6, "global_batch": 2,
                                                              "ranks": 1})
    net = _net()
    optimizer = UnitMomentum(net.trainable_params(), LR, 0.9, 1e-2)
    restore_training_state(path, net, optimizer, FixedLossScaler(512.0))
    for a, b in zip(optimizer.moments, plain.moments):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


@pytest.mark.parametrize("saved_scale", [256.0, 4096.0])
def test_a_fixed_scale_stays_the_configured_one_on_resume(tmp_path, saved_scale):
    net = _net()
    optimizer = UnitMomentum(net.trainable_params(), LR, 0.9, 0.0)
    path = CheckpointManager(str(tmp_path), 1, "digest").save(
        training_state(net, optimizer, amp.DynamicLossScaler(saved_scale, 2, 50)), 1,
        {"epoch": 0, "consumed": 2, "global_batch": 2, "ranks": 1})
    scaler, resumed = FixedLossScaler(SCALE), _net()
    restore_training_state(path, resumed, UnitMomentum(resumed.trainable_params(), LR, 0.9, 0.0), scaler)
    assert float(scaler.scale_value.asnumpy()) == SCALE
