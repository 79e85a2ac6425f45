"""The toolkit's metrics as Avalanche plugin metrics, for any ``EvaluationPlugin``.

Calibration metrics are computed over *all* samples of the evaluated experience or
stream (not averaged over batches; the reference's batch mean is a separately named
metric). Continual-learning summaries (step accuracy, average incremental accuracy,
BWT, forgetting) come from the accuracy matrix that ``ContinualAccuracyMetric`` builds
from successive ``strategy.eval`` calls.

    from avalanche.training.plugins import EvaluationPlugin
    from clap4cl.evaluation.plugin_metrics import calibration_plugin_metrics, continual_metrics
    evaluator = EvaluationPlugin(*calibration_plugin_metrics(), *continual_metrics(), loggers=[...])

They are for training loops of your own and apply the functions of
:mod:`clap4cl.evaluation.metrics` to the seen-class part of ``strategy.mb_output``
(:func:`~clap4cl.models.masking.seen_class_logits`). They describe the model on
the experiences it has trained on: when the whole test stream is evaluated
(``strategy.eval(bench.test_stream)``), the experiences after the last trained one are
left out (Avalanche's own accuracy metrics score them, at 0). ``clap4cl run`` does not use
them: it computes each step's numbers once from its collected logits
(``metrics.step_metrics``) and logs those values to TensorBoard.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from avalanche.evaluation import GenericPluginMetric, Metric, PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import stream_type

from clap4cl.evaluation import metrics
from clap4cl.models.masking import seen_class_logits


def is_future_experience(strategy) -> bool:
    """True while evaluating an experience after the last one trained on."""
    return strategy.experience.current_experience > strategy.clock.train_exp_counter - 1


class LogitsAccumulator(Metric[float]):
    """Collects logits and targets; ``result`` applies ``fn(logits, targets)`` to all of them."""

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], float]):
        self.fn = fn
        self.logits: List[torch.Tensor] = []
        self.targets: List[torch.Tensor] = []

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.logits.append(logits.detach().float().cpu())
        self.targets.append(targets.detach().cpu())

    def result(self) -> Optional[float]:
        if not self.logits:
            return None
        return float(self.fn(torch.cat(self.logits).numpy(), torch.cat(self.targets).numpy()))

    def reset(self) -> None:
        self.logits, self.targets = [], []

    def __getstate__(self):
        state = self.__dict__.copy()
        state["logits"], state["targets"] = [], []   # per-evaluation buffers: not checkpointed
        return state


class LogitsPluginMetric(GenericPluginMetric[float, LogitsAccumulator]):
    """An evaluation metric of all logits of an experience (``emit_at="experience"``) or
    of the evaluated stream (``emit_at="stream"``)."""

    def __init__(self, name: str, fn: Callable, emit_at: str = "stream"):
        super().__init__(LogitsAccumulator(fn), reset_at=emit_at, emit_at=emit_at, mode="eval")
        self.name = f"{name}_{'Exp' if emit_at == 'experience' else 'Stream'}"

    def update(self, strategy) -> None:
        if not is_future_experience(strategy):
            self._metric.update(seen_class_logits(strategy.model, strategy.mb_output),
                                strategy.mb_y)

    def _package_result(self, strategy):
        # nothing to emit for an experience (or stream) without seen data
        return None if self.result() is None else super()._package_result(strategy)

    def __str__(self) -> str:
        return self.name


CALIBRATION_FUNCTIONS: Dict[str, Callable] = {
    "ECE": metrics.expected_calibration_error,
    "ReferenceBatchMeanECE": metrics.batch_mean_ece,
    "NLL": metrics.negative_log_likelihood,
    "Brier": metrics.brier_score,
    "AURC": metrics.aurc,
    "EAURC": metrics.excess_aurc,
}


def calibration_plugin_metrics(experience: bool = True, stream: bool = True,
                               names=tuple(CALIBRATION_FUNCTIONS)) -> List[LogitsPluginMetric]:
    """ECE (dataset-level, 15 bins), the reference's batch-mean ECE, NLL, Brier, AURC and
    E-AURC, per experience and/or per stream."""
    levels = [lvl for lvl, on in (("experience", experience), ("stream", stream)) if on]
    return [LogitsPluginMetric(n, CALIBRATION_FUNCTIONS[n], lvl) for n in names for lvl in levels]


class TaskAwareAccuracy(LogitsPluginMetric):
    """Accuracy with predictions restricted to the evaluated experience's classes."""

    def __init__(self, emit_at: str = "experience"):
        self.classes: List[List[int]] = []           # per sample: its experience's classes
        super().__init__("TaskAwareAcc", self._accuracy, emit_at)

    def update(self, strategy) -> None:
        if is_future_experience(strategy):
            return
        classes = [int(c) for c in strategy.experience.classes_in_this_experience]
        self.classes.extend([classes] * len(strategy.mb_y))
        super().update(strategy)

    def reset(self) -> None:
        super().reset()
        self.classes = []

    def __getstate__(self):
        state = self.__dict__.copy()
        state["classes"] = []
        return state

    def _accuracy(self, logits, targets) -> float:
        hits = np.zeros(len(targets), dtype=bool)
        for classes in {tuple(c) for c in self.classes}:
            rows = np.array([tuple(c) == classes for c in self.classes])
            hits[rows] = metrics.task_aware_hits(logits[rows], targets[rows], classes)
        return float(hits.mean())


class ContinualAccuracyMetric(PluginMetric[float]):
    """Builds the accuracy matrix from successive evaluations and emits, after each
    ``strategy.eval``: step accuracy (sample-weighted) and its reference variant (the
    unweighted mean over experiences), average incremental accuracy, BWT and forgetting.

    Row t of ``matrix`` holds the accuracies after training experience t (the latest
    evaluation after that training wins); the evaluated stream must start at experience 0.
    Experiences after t (a full-stream evaluation) are not part of the row.
    """

    def __init__(self):
        super().__init__()
        self.matrix: Dict[int, Dict[int, float]] = {}
        self.step_accuracy: Dict[int, float] = {}
        self._correct: Dict[int, int] = {}
        self._count: Dict[int, int] = {}

    def reset(self) -> None:
        self._correct, self._count = {}, {}

    def checkpoint_state(self) -> dict:
        """The accuracy matrix and step accuracies so far (the run checkpoint's hook)."""
        return {"matrix": {t: dict(row) for t, row in self.matrix.items()},
                "step_accuracy": dict(self.step_accuracy)}

    def load_checkpoint_state(self, state: dict, datasets=None) -> None:
        self.matrix = {int(t): {int(k): float(v) for k, v in row.items()}
                       for t, row in state["matrix"].items()}
        self.step_accuracy = {int(t): float(v) for t, v in state["step_accuracy"].items()}

    def result(self):
        return dict(self.step_accuracy)

    def before_eval(self, strategy):
        self.reset()

    def after_eval_iteration(self, strategy):
        if is_future_experience(strategy):
            return
        k = strategy.experience.current_experience
        correct = int((strategy.mb_output.argmax(1) == strategy.mb_y).sum())
        self._correct[k] = self._correct.get(k, 0) + correct
        self._count[k] = self._count.get(k, 0) + len(strategy.mb_y)

    def after_eval(self, strategy):
        if not self._count:
            return None
        row_id = strategy.clock.train_exp_counter - 1
        row = {k: self._correct[k] / self._count[k] for k in sorted(self._count)}
        self.matrix[row_id] = row
        self.step_accuracy[row_id] = sum(self._correct.values()) / sum(self._count.values())
        rows = [[self.matrix[t][k] for k in range(t + 1)] for t in sorted(self.matrix)
                if all(k in self.matrix[t] for k in range(t + 1))]
        values = {
            "StepAcc": self.step_accuracy[row_id],
            "StepAccTaskMean": metrics.task_mean_accuracy(list(row.values())),
            "AvgIncrementalAcc": metrics.average_incremental_accuracy(
                [self.step_accuracy[t] for t in sorted(self.step_accuracy)]),
        }
        if len(rows) == len(self.matrix) and len(rows) > 1:
            values["BWT"] = metrics.backward_transfer(rows)
            values["MaxDropForgetting"] = metrics.forgetting(rows)   # not Avalanche's StreamForgetting
        x = strategy.clock.train_iterations
        stream = stream_type(strategy.experience)
        return [MetricValue(self, f"{name}/eval_phase/{stream}_stream", value, x)
                for name, value in values.items()]

    def __str__(self) -> str:
        return "ContinualAccuracy"


def continual_metrics(task_aware: bool = True) -> List[PluginMetric]:
    """Accuracy-matrix summaries plus (optionally) task-aware accuracy per experience and stream."""
    out: List[PluginMetric] = [ContinualAccuracyMetric()]
    if task_aware:
        out += [TaskAwareAccuracy("experience"), TaskAwareAccuracy("stream")]
    return out
