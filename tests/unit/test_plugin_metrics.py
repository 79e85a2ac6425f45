"""Calibration and continual-learning metrics, as functions and as Avalanche plugin metrics."""
import math
import warnings

import numpy as np
import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin
from torchmetrics.classification import MulticlassCalibrationError

import scenarios
from clap4cl.runner import assemble
from clap4cl.evaluation import metrics
from clap4cl.runner.config import defaults
from clap4cl.evaluation.plugin_metrics import calibration_plugin_metrics, continual_metrics


def test_nll_brier_hand_computed():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.2, 0.8, 1e-12]]))
    targets = np.array([0, 0])
    assert metrics.negative_log_likelihood(logits, targets) == pytest.approx(
        (-math.log(0.5) - math.log(0.2)) / 2, rel=1e-6)
    brier = ((0.5 ** 2 + 0.25 ** 2 + 0.25 ** 2) + (0.8 ** 2 + 0.8 ** 2)) / 2
    assert metrics.brier_score(logits, targets) == pytest.approx(brier, rel=1e-6)


def test_aurc_and_excess_aurc_hand_computed():
    # confidences 0.9 (wrong), 0.8 (right), 0.7 (right), 0.6 (wrong)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    targets = np.array([1, 0, 0, 1])
    risks = [1 / 1, 1 / 2, 1 / 3, 2 / 4]
    assert metrics.aurc(np.log(probs), targets) == pytest.approx(np.mean(risks))
    r = 0.5
    assert metrics.excess_aurc(np.log(probs), targets) == pytest.approx(
        np.mean(risks) - (r + (1 - r) * math.log(1 - r)))
    # the best ranking of the same errors (errors least confident) has the lowest AURC
    best_targets = np.array([0, 0, 1, 1])
    assert metrics.aurc(np.log(probs), best_targets) == pytest.approx(np.mean([0, 0, 1 / 3, 2 / 4]))
    assert metrics.excess_aurc(np.log(probs), best_targets) < metrics.excess_aurc(np.log(probs), targets)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_mean_ece_is_the_mean_of_torchmetrics_per_batch_values(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(100, 5, generator=gen) * 3
    targets = torch.randint(0, 5, (100,), generator=gen)
    per_batch = [MulticlassCalibrationError(num_classes=5, n_bins=15)(logits[i:i + 32], targets[i:i + 32]).item()
                 for i in range(0, 100, 32)]
    assert metrics.batch_mean_ece(logits.numpy(), targets.numpy(), 32) == pytest.approx(np.mean(per_batch), abs=1e-6)
    dataset_level = MulticlassCalibrationError(num_classes=5, n_bins=15)(logits, targets).item()
    assert metrics.expected_calibration_error(logits.numpy(), targets.numpy()) == pytest.approx(dataset_level, abs=1e-6)


def test_task_aware_accuracy_restricts_to_the_task():
    logits = np.array([[5.0, 1.0, 2.0, 0.0], [0.0, 0.0, 1.0, 3.0]])
    assert metrics.task_aware_accuracy(logits, np.array([2, 3]), [2, 3]) == 1.0
    assert metrics.task_aware_accuracy(logits, np.array([2, 2]), [2, 3]) == 0.5


def test_plugin_metrics_in_an_evaluation_plugin_with_clap():
    bench = scenarios.class_incremental("synthetic", n_experiences=3, n_classes=6,
                                        train_per_class=20, test_per_class=10)
    config = defaults()
    config["clap"].update(epochs=2, finetune_epochs=1, mc_samples=4, vga_ffn_dim=32)
    with warnings.catch_warnings(record=True):
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                     forgetting_metrics(experience=True, stream=True),
                                     bwt_metrics(experience=True, stream=True),
                                     *calibration_plugin_metrics(), *continual_metrics(), loggers=[])
    strategy = assemble.build_from_config(config, text_features=bench.text_features,
                                            logit_scale=100.0, evaluator=evaluator)
    collected = []
    for t, experience in enumerate(bench.train_stream):
        strategy.train(experience)
        torch.manual_seed(t)
        results = strategy.eval(bench.test_stream[: t + 1])
        collected.append(results)
    last = collected[-1]
    stream = "eval_phase/test_stream"
    assert last[f"StepAcc/{stream}"] == pytest.approx(last[f"Top1_Acc_Stream/{stream}/Task000"])
    per_exp = [last[f"Top1_Acc_Exp/{stream}/Task000/Exp{k:03d}"] for k in range(3)]
    assert last[f"StepAccTaskMean/{stream}"] == pytest.approx(np.mean(per_exp))
    assert last[f"BWT/{stream}"] == pytest.approx(last[f"StreamBWT/{stream}"])
    # equal here because no accuracy rose after its experience was learned (see the docs)
    assert last[f"MaxDropForgetting/{stream}"] == pytest.approx(last[f"StreamForgetting/{stream}"])
    steps = [c[f"StepAcc/{stream}"] for c in collected]
    assert last[f"AvgIncrementalAcc/{stream}"] == pytest.approx(np.mean(steps))
    for name in ("ECE", "ReferenceBatchMeanECE", "NLL", "Brier", "AURC", "EAURC"):
        assert f"{name}_Stream/{stream}/Task000" in last
        assert f"{name}_Exp/{stream}/Task000/Exp002" in last
    assert 0 <= last[f"ECE_Stream/{stream}/Task000"] <= 1
    task_aware = last[f"TaskAwareAcc_Stream/{stream}/Task000"]
    assert task_aware >= last[f"Top1_Acc_Stream/{stream}/Task000"] - 1e-9   # knowing the task helps


def test_the_two_forgetting_numbers_differ_when_an_accuracy_rises_later():
    # Avalanche's StreamForgetting: mean over k < T-1 of acc[k][k] - acc[T-1][k] (= -BWT);
    # the toolkit's MaxDropForgetting: the largest drop from any earlier accuracy on k.
    acc = [[0.5], [0.9, 0.8], [0.6, 0.7, 0.9]]
    assert metrics.forgetting(acc) == pytest.approx(0.2)            # (0.9-0.6 + 0.8-0.7) / 2
    assert -metrics.backward_transfer(acc) == pytest.approx(0.0)    # (0.5-0.6 + 0.8-0.7) / 2
