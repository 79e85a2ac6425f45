"""Continual-learning, calibration and novelty-detection metrics on plain arrays.

All accuracies are fractions in [0, 1]. ``acc[t][k]`` is the accuracy on experience k's
test data after training experience t (None where k > t).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width top-label confidence bins, as torchmetrics' ``MulticlassCalibrationError``
    forms them: slot i < n holds confidences in [i/n, (i+1)/n); slot n holds the
    confidences of exactly 1.0 (saturated logits), a bin of its own.

    Attributes:
        edges: the n + 1 bin edges 0, 1/n, ..., 1.
        counts: samples per slot, shape (n + 1,).
        accuracy, confidence: per slot, the fraction of correct predictions and the
            mean confidence (0 in empty slots).
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    @property
    def ece(self) -> float:
        """Σ_b (n_b / N) · |accuracy_b − mean confidence_b| (0 for no samples)."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        return float(np.sum(self.counts / total * np.abs(self.accuracy - self.confidence)))


def calibration_bins(logits: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> CalibrationBins:
    """The confidence bins of ``logits`` (N, C): the one binning of the toolkit, behind
    both the reported ECE and the reliability diagram.

    Like torchmetrics, the softmax runs in the logits' dtype (integers as float64) and
    confidences are rounded to float32 before binning.
    """
    x = torch.as_tensor(np.asarray(logits))
    if not x.is_floating_point():
        x = x.double()
    confidence, prediction = x.softmax(dim=1).max(dim=1)
    confidence = confidence.float()
    correct = prediction.eq(torch.as_tensor(np.asarray(targets))).numpy().astype(np.float64)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    index = (torch.bucketize(confidence, edges, right=True) - 1).numpy()
    confidence = confidence.numpy().astype(np.float64)
    counts = np.bincount(index, minlength=n_bins + 1)
    safe = np.maximum(counts, 1)
    return CalibrationBins(edges=edges.numpy().astype(np.float64), counts=counts,
                           accuracy=np.bincount(index, correct, minlength=n_bins + 1) / safe,
                           confidence=np.bincount(index, confidence, minlength=n_bins + 1) / safe)


def expected_calibration_error(logits: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Dataset-level top-label ECE of :func:`calibration_bins`, equal to torchmetrics'
    ``MulticlassCalibrationError(norm="l1")``.

    ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|.
    """
    return calibration_bins(logits, targets, n_bins).ece


def average_incremental_accuracy(step_accuracy: Sequence[float]) -> float:
    return float(np.mean(step_accuracy))


def backward_transfer(acc: List[List[Optional[float]]]) -> Optional[float]:
    """Mean over k < T−1 of acc[T−1][k] − acc[k][k]; None for a single experience."""
    last = len(acc) - 1
    if last < 1:
        return None
    return float(np.mean([acc[last][k] - acc[k][k] for k in range(last)]))


def forgetting(acc: List[List[Optional[float]]]) -> Optional[float]:
    """Mean over k < T−1 of max_{k ≤ t < T−1} acc[t][k] − acc[T−1][k]."""
    last = len(acc) - 1
    if last < 1:
        return None
    drops = [max(acc[t][k] for t in range(k, last)) - acc[last][k] for k in range(last)]
    return float(np.mean(drops))


def novelty_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict:
    """AUROC and AUPR with in-distribution as the positive class, and FPR at 95 % TPR."""
    y = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    s = np.concatenate([id_scores, ood_scores])
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def novelty_scores_metrics(id_samples, ood_samples) -> dict:
    """``novelty_metrics`` of every novelty score (``clap4cl.evaluation.scores.NOVELTY_SCORES``)
    from in-distribution and novel sample logits, (N, M, C) or (N, C)."""
    from clap4cl.evaluation.scores import NOVELTY_SCORES, novelty_score

    return {name: novelty_metrics(novelty_score(name, id_samples).numpy(),
                                  novelty_score(name, ood_samples).numpy())
            for name in NOVELTY_SCORES}


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean of −log p_y."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    p_true = probs[np.arange(len(probs)), np.asarray(targets)]
    return float(-np.log(np.clip(p_true, 1e-300, None)).mean())


def brier_score(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean over samples of Σ_c (p_c − 1[c = y])² (no 1/C factor, as the CML code)."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    onehot = np.eye(probs.shape[1])[np.asarray(targets)]
    return float(((probs - onehot) ** 2).sum(1).mean())


def aurc(logits: np.ndarray, targets: np.ndarray) -> float:
    """Area under the risk-coverage curve: samples sorted by MSP (descending); the risk at
    coverage k/N is the error rate of the k most confident; AURC is its mean over k."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    errors = (probs.argmax(1) != np.asarray(targets)).astype(np.float64)
    order = np.argsort(-probs.max(1), kind="stable")
    risks = np.cumsum(errors[order]) / np.arange(1, len(errors) + 1)
    return float(risks.mean())


def excess_aurc(logits: np.ndarray, targets: np.ndarray) -> float:
    """E-AURC = AURC − (r + (1 − r)·ln(1 − r)), r the overall error rate."""
    r = float((np.asarray(logits).argmax(1) != np.asarray(targets)).mean())
    optimal = r + (1 - r) * np.log(1 - r) if r < 1 else 1.0
    return aurc(logits, targets) - optimal


def batch_mean_ece(logits: np.ndarray, targets: np.ndarray, batch_size: int = 32) -> float:
    """The reference's ECE: the mean of per-batch ECEs over consecutive batches (biased
    upward compared with the dataset-level ECE; kept for comparison with the paper)."""
    values = [expected_calibration_error(logits[i:i + batch_size], targets[i:i + batch_size])
              for i in range(0, len(targets), batch_size)]
    return float(np.mean(values))


def task_mean_accuracy(per_experience: Sequence[float]) -> float:
    """The reference's step accuracy: the unweighted mean of the per-experience accuracies."""
    return float(np.mean(per_experience))


def task_aware_hits(logits: np.ndarray, targets: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Per sample: is the prediction restricted to ``classes`` (the task is known) correct?"""
    classes = np.asarray(sorted(classes))
    return classes[np.asarray(logits)[:, classes].argmax(1)] == np.asarray(targets)


def task_aware_accuracy(logits: np.ndarray, targets: np.ndarray, classes: Sequence[int]) -> float:
    """Accuracy with the prediction restricted to ``classes`` (the task is known)."""
    return float(task_aware_hits(logits, targets, classes).mean())


def step_metrics(per_experience: Sequence, classes_per_experience: Sequence[Sequence[int]],
                 batch_size: int = 32, predictions: Optional[Sequence] = None) -> dict:
    """The numbers of one evaluation step, computed once from the logits of every seen
    experience: ``per_experience[k] = (sample logits (N, M, C), targets)``.

    Predictions use the mean over the M samples, or ``predictions[k]`` (N, C) when given
    (e.g. CLAP's closed-form mean logits). Returns ``row`` (accuracy per seen
    experience), ``step_accuracy`` (over all seen samples), ``ece`` and ``calibration``
    (:func:`calibration_metrics`) of the seen samples, and ``task_aware_accuracy`` (each
    sample's prediction restricted to its experience's classes, ``classes_per_experience[k]``).
    """
    mean_logits = ([np.asarray(l).mean(1) for l, _ in per_experience] if predictions is None
                   else [np.asarray(p) for p in predictions])
    targets = [np.asarray(y) for _, y in per_experience]
    seen_logits, seen_y = np.concatenate(mean_logits), np.concatenate(targets)
    calibration = calibration_metrics(seen_logits, seen_y, batch_size)
    task_aware = np.concatenate([task_aware_hits(l, y, classes_per_experience[k])
                                 for k, (l, y) in enumerate(zip(mean_logits, targets))])
    return {
        "row": [float((l.argmax(1) == y).mean()) for l, y in zip(mean_logits, targets)],
        "step_accuracy": float((seen_logits.argmax(1) == seen_y).mean()),
        "ece": calibration["ece"],
        "calibration": calibration,
        "task_aware_accuracy": float(task_aware.mean()),
    }


def calibration_metrics(logits: np.ndarray, targets: np.ndarray, batch_size: int = 32) -> dict:
    """Dataset-level ECE, the reference's batch-mean ECE, NLL, Brier, AURC and E-AURC."""
    return {
        "ece": expected_calibration_error(logits, targets),
        "ece_batch_mean": batch_mean_ece(logits, targets, batch_size),
        "nll": negative_log_likelihood(logits, targets),
        "brier": brier_score(logits, targets),
        "aurc": aurc(logits, targets),
        "eaurc": excess_aurc(logits, targets),
    }
