import numpy as np
import pytest

from fcn8s import metrics


def test_confusion_matrix_by_hand_with_ignore_pixels():
    label = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    hist = metrics.confusion_matrix(label, pred, 3)
    expected = np.array([[1, 1, 0],   # class 0: one right, one as 1
                         [0, 2, 0],   # class 1: both right
                         [1, 0, 0]])  # class 2: predicted 0; the 255 pixel is ignored
    np.testing.assert_array_equal(hist, expected)
    assert metrics.pixel_accuracy(hist) == pytest.approx(3 / 5)
    # per-class recall 1/2, 1, 0
    assert metrics.mean_accuracy(hist) == pytest.approx((0.5 + 1 + 0) / 3)
    # IoU: c0 = 1/(2+2-1) = 1/3, c1 = 2/(2+3-2) = 2/3, c2 = 0/(1+0-0) = 0
    assert metrics.mean_iou(hist) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    # FWIoU: freq 2/5, 2/5, 1/5
    assert metrics.frequency_weighted_iou(hist) == pytest.approx(0.4 / 3 + 0.4 * 2 / 3)


def test_absent_classes_are_left_out_of_means():
    label = np.array([[0, 0], [3, 3]])
    pred = np.array([[0, 0], [3, 0]])
    hist = metrics.confusion_matrix(label, pred, 5)
    iou = metrics.class_iou(hist)
    assert np.isnan(iou[1]) and np.isnan(iou[2]) and np.isnan(iou[4])
    assert metrics.mean_iou(hist) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics.summarize(hist)["class_iou"][1] is None


def test_any_batch_and_shape_and_sum_over_ranks_equals_whole():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 21, size=(3, 37, 53))
    label[:, :4] = 255
    pred = rng.integers(0, 21, size=(3, 37, 53))
    whole = metrics.confusion_matrix(label, pred, 21)
    parts = sum(metrics.confusion_matrix(label[i], pred[i], 21) for i in range(3))
    np.testing.assert_array_equal(whole, parts)
    assert whole.sum() == 3 * 33 * 53


def test_all_ignored_gives_nan_not_crash():
    hist = metrics.confusion_matrix(np.full((2, 2), 255), np.zeros((2, 2), int), 21)
    assert hist.sum() == 0 and np.isnan(metrics.mean_iou(hist)) and np.isnan(metrics.pixel_accuracy(hist))


def test_shape_mismatch_and_out_of_range_labels_are_errors():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="label values"):
        metrics.confusion_matrix(np.array([5]), np.array([0]), 3)
