"""Continual-learning, calibration and novelty metrics against hand values and references."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.classification import MulticlassCalibrationError

from clap4cl.evaluation.metrics import (average_incremental_accuracy, backward_transfer,
                                        calibration_bins, expected_calibration_error, forgetting,
                                        novelty_metrics, softmax)


def torchmetrics_ece(logits, targets, n_bins=15, norm="l1"):
    logits = torch.as_tensor(np.asarray(logits))
    metric = MulticlassCalibrationError(num_classes=logits.shape[1], n_bins=n_bins, norm=norm)
    return metric(logits, torch.as_tensor(np.asarray(targets))).item()


# ---- ECE -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale", [0.5, 3.0, 20.0, 300.0])
def test_ece_equals_torchmetrics_on_random_logits(seed, scale):
    rng = np.random.default_rng(seed)
    n, c = 400, 10
    logits = (rng.standard_normal((n, c)) * scale).astype(np.float32)
    # make about half of the predictions right so that bins hold both outcomes
    targets = np.where(rng.random(n) < 0.5, logits.argmax(1), rng.integers(0, c, n))
    assert np.abs(logits).max() > 1  # torchmetrics only applies softmax outside [0, 1]
    ours = expected_calibration_error(logits, targets)
    assert ours == pytest.approx(torchmetrics_ece(logits, targets), abs=2e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_bins", [2, 4, 10, 15])
def test_ece_equals_torchmetrics_with_saturated_and_tied_logits(seed, n_bins):
    # Integer logits repeat the same confidences (many exactly 1.0, 0.5, 0.25 ... on bin
    # edges) and contain ties; float64 logits exercise the other dtype path.
    rng = np.random.default_rng(100 + seed)
    n, c = 300, 4
    logits = rng.integers(-2, 3, (n, c)).astype(np.float64)
    saturated = rng.random(n) < 0.4
    logits[saturated, rng.integers(0, c, saturated.sum())] = 200.0
    exact_half = rng.random(n) < 0.1  # two tied classes, the others impossible: conf 0.5
    logits[exact_half] = [0.0, 0.0, -1e4, -1e4]
    targets = rng.integers(0, c, n)
    confidence = softmax(logits).max(1)
    assert (confidence == 1.0).sum() > 50 and (confidence == 0.5).sum() > 10
    for dtype in (np.float64, np.float32):
        x = logits.astype(dtype)
        assert expected_calibration_error(x, targets, n_bins=n_bins) == pytest.approx(
            torchmetrics_ece(x, targets, n_bins=n_bins), abs=2e-6)


def test_ece_hand_computed_four_samples():
    # confidences 0.9 (right), 0.7 (wrong), 0.75 (wrong), 0.92 (right); 15 bins of width 1/15:
    # bin 13 = {0.9, 0.92}: |1 - 0.91| * 2/4; bin 10 = {0.7}: 0.7 / 4; bin 11 = {0.75}: 0.75 / 4
    logits = np.log([[9.0, 1.0], [3.0, 7.0], [3.0, 1.0], [11.5, 1.0]])
    targets = np.array([0, 0, 1, 0])
    np.testing.assert_allclose(softmax(logits).max(1), [0.9, 0.7, 0.75, 0.92])
    expected = 0.09 * 2 / 4 + 0.7 / 4 + 0.75 / 4
    assert expected_calibration_error(logits, targets) == pytest.approx(0.4075, abs=1e-6)
    assert expected == pytest.approx(0.4075)
    # one bin: |0.5 - mean confidence 0.8175|
    assert expected_calibration_error(logits, targets, n_bins=1) == pytest.approx(0.3175, abs=1e-6)


def test_ece_bin_edges_follow_torchmetrics():
    # torchmetrics bins are [i/n, (i+1)/n) and a confidence of exactly 1.0 has a bin of its own.
    # 15 bins: conf 1.0 (wrong) and 0.95 (right) -> 0.5 * 1 + 0.5 * 0.05 (not 0.5 * |0.5 - 0.975|)
    logits = np.array([[0.0, 100.0], [math.log(19.0), 0.0]])
    targets = np.array([0, 0])
    assert expected_calibration_error(logits, targets) == pytest.approx(0.525, abs=1e-6)
    assert torchmetrics_ece(logits, targets) == pytest.approx(0.525, abs=1e-6)
    # 4 bins: conf 0.5 exactly (wrong) shares [0.5, 0.75) with 0.6 (right); 0.4 (right) alone
    logits = np.array([[0.0, 0.0, -1e4], [math.log(3.0), 0.0, 0.0], [math.log(4 / 3), 0.0, 0.0]])
    targets = np.array([2, 0, 0])
    np.testing.assert_allclose(softmax(logits).max(1), [0.5, 0.6, 0.4])
    expected = (2 / 3) * abs(0.5 - 0.55) + (1 / 3) * abs(1 - 0.4)
    assert expected_calibration_error(logits, targets, n_bins=4) == pytest.approx(expected, abs=1e-6)
    assert torchmetrics_ece(logits, targets, n_bins=4) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("n_bins", [4, 15])
def test_calibration_bins_are_torchmetrics_bins(n_bins):
    # Saturated rows (confidence exactly 1.0) and confidences on bin edges: the per-bin gaps
    # give torchmetrics' l1 (ECE), max (MCE) and l2 (RMSCE) errors, so every bin matches.
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(500, 5)) * 4
    logits[:120, 0] = 300.0
    logits[120:160] = [0.0, 0.0, -1e4, -1e4, -1e4]                    # confidence 0.5
    targets = np.where(rng.random(500) < 0.6, logits.argmax(1), rng.integers(0, 5, 500))
    bins = calibration_bins(logits, targets, n_bins)
    assert len(bins.counts) == n_bins + 1 and bins.counts[n_bins] >= 120
    assert bins.counts.sum() == 500 and bins.counts[n_bins // 2] >= 40
    gaps, share = np.abs(bins.accuracy - bins.confidence), bins.counts / 500
    assert bins.ece == expected_calibration_error(logits, targets, n_bins)
    assert bins.ece == pytest.approx(torchmetrics_ece(logits, targets, n_bins), abs=1e-6)
    assert gaps.max() == pytest.approx(torchmetrics_ece(logits, targets, n_bins, "max"), abs=1e-6)
    assert np.sqrt((share * gaps ** 2).sum()) == pytest.approx(
        torchmetrics_ece(logits, targets, n_bins, "l2"), abs=1e-6)


def test_calibration_bins_of_no_samples_have_zero_ece():
    bins = calibration_bins(np.zeros((0, 3)), np.zeros(0, dtype=int), 5)
    assert bins.counts.tolist() == [0] * 6 and bins.ece == 0.0


def test_ece_of_perfectly_calibrated_and_confidently_wrong_predictions():
    # four samples at confidence 0.5 (2 tied classes among 3), half right: ECE 0
    logits = np.array([[5.0, 5.0, -1e4]] * 4)
    assert expected_calibration_error(logits, np.array([0, 2, 0, 2])) == pytest.approx(0.0, abs=1e-7)
    # saturated and always wrong: ECE 1
    logits = np.array([[300.0, 0.0], [0.0, 300.0]])
    assert expected_calibration_error(logits, np.array([1, 0])) == pytest.approx(1.0, abs=1e-7)


# ---- continual-learning metrics ---------------------------------------------------------

ACC = [[0.90, None, None],
       [0.70, 0.80, None],
       [0.60, 0.85, 0.75]]


def test_backward_transfer_hand_computed():
    # ((0.60 - 0.90) + (0.85 - 0.80)) / 2
    assert backward_transfer(ACC) == pytest.approx(-0.125)
    assert backward_transfer([[0.5]]) is None
    assert backward_transfer([[0.5, None], [0.7, 0.4]]) == pytest.approx(0.2)


def test_forgetting_hand_computed():
    # task 0: max(0.90, 0.70) - 0.60 = 0.30; task 1: max(0.80) - 0.85 = -0.05
    assert forgetting(ACC) == pytest.approx(0.125)
    # the best earlier accuracy counts, not the first one
    acc = [[0.5, None, None], [0.9, 0.6, None], [0.4, 0.6, 0.7]]
    assert forgetting(acc) == pytest.approx(((0.9 - 0.4) + (0.6 - 0.6)) / 2)
    assert forgetting([[0.5]]) is None


def test_average_incremental_accuracy():
    assert average_incremental_accuracy([0.9, 0.8, 0.4]) == pytest.approx(0.7)


def test_softmax_rows_sum_to_one_and_are_shift_invariant():
    logits = np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]])
    np.testing.assert_allclose(softmax(logits), [[0.5, 0.5], [0.25, 0.75]])


# ---- novelty detection --------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_auroc_and_aupr_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, 200)
    ood_scores = rng.normal(0.0, 1.0, 150)
    ood_scores[:20] = id_scores[:20]  # ties across the two sets
    y = np.r_[np.ones(200), np.zeros(150)]
    s = np.r_[id_scores, ood_scores]
    out = novelty_metrics(id_scores, ood_scores)
    assert out["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert out["aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert 0.5 < out["auroc"] < 1


@pytest.mark.parametrize("k", [0, 7, 30, 100])
def test_fpr95_on_a_constructed_case(k):
    # ID scores 1..100: a threshold keeping 95 % of them keeps 6..100. Exactly k of the 100
    # OOD scores lie above it (at 50.5, between ID scores), the others below 6.
    id_scores = np.arange(1, 101, dtype=float)
    ood_scores = np.r_[np.full(k, 50.5), np.linspace(-10, 5.5, 100 - k)]
    out = novelty_metrics(id_scores, ood_scores)
    assert out["fpr95"] == pytest.approx(k / 100)


def test_separable_scores_are_perfect():
    out = novelty_metrics(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0]))
    assert out == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    out = novelty_metrics(np.array([1.0, 2.0]), np.array([5.0, 6.0, 7.0]))
    assert out["auroc"] == 0.0 and out["fpr95"] == 1.0
