"""Plugins that stop a run cleanly when training goes wrong."""
from __future__ import annotations

from typing import List

import torch
from avalanche.core import SupervisedPlugin

from clap4cl.errors import TrainingDivergedError

KEEP = "the run directory keeps the last finished experience"
LOWER_LR = f"lower the learning rate; {KEEP}"
BAD_INPUT = ("the data or its cached features are broken (an fp16 encoder can overflow: try "
             "backbone.precision=fp32 and delete the cache entries of this dataset)")


def non_finite_count(value) -> int:
    """Number of NaN or infinite entries in a tensor (or a dict / list / tuple of tensors)."""
    if torch.is_tensor(value):
        if not value.is_floating_point() and not value.is_complex():
            return 0
        return int((~torch.isfinite(value)).sum().item())
    if isinstance(value, dict):
        return sum(non_finite_count(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(non_finite_count(v) for v in value)
    return 0


class NonFiniteLossGuard(SupervisedPlugin, supports_distributed=True):
    """Stops a run whose training or evaluation goes numerically wrong, naming the cause.

    - a NaN or infinite loss (before it reaches the weights) or NaN / infinite logits:
      caused by the input features when they hold such values, else by the training
      (learning rate);
    - training that diverges without any non-finite value: the mean loss over the last
      quarter of an experience's iterations ends above ``RISE_FACTOR`` times the mean of
      its first tenth plus ``RISE_MARGIN`` (a loss that should fall rose instead);
    - NaN or infinite logits at evaluation (e.g. ``zeroshot`` on broken features).

    The error names the experience, epoch and iteration; the run directory keeps the
    checkpoint of the last finished experience. In a data-parallel run the rank that
    sees it stops, and torchrun then stops the others.
    """

    RISE_FACTOR = 3.0
    RISE_MARGIN = 2.0

    def __init__(self):
        super().__init__()
        self.losses: List[float] = []

    def before_training_exp(self, strategy, **kwargs):
        self.losses = []

    def _where(self, strategy) -> str:
        clock = strategy.clock
        return (f"experience {strategy.experience.current_experience}, epoch "
                f"{clock.train_exp_epochs}, iteration {clock.train_epoch_iterations}")

    def _input_problem(self, strategy, what: str):
        bad = non_finite_count(getattr(strategy, "mb_x", None))
        if bad:
            return TrainingDivergedError(
                f"{what}: the input features of this batch hold {bad} NaN or infinite "
                f"values, so {BAD_INPUT}")
        return None

    def after_forward(self, strategy, **kwargs):
        if non_finite_count(strategy.mb_output):
            what = f"the logits are not finite at {self._where(strategy)}"
            raise self._input_problem(strategy, what) or TrainingDivergedError(
                f"{what} (the weights diverged): {LOWER_LR}")

    def before_backward(self, strategy, **kwargs):
        loss = strategy.loss
        if not torch.is_tensor(loss):
            return
        if not torch.isfinite(loss).all():
            what = f"the loss is {loss.item()} at {self._where(strategy)}"
            raise self._input_problem(strategy, what) or TrainingDivergedError(
                f"{what}: {LOWER_LR}")
        self.losses.append(float(loss.detach().float().mean()))

    def after_training_exp(self, strategy, **kwargs):
        bad = sum(non_finite_count(p.detach()) for p in strategy.model.parameters())
        if bad:
            raise TrainingDivergedError(
                f"{bad} weights are NaN or infinite after experience "
                f"{strategy.experience.current_experience}: {LOWER_LR}")
        n = len(self.losses)
        if n < 2:
            return
        head = sum(self.losses[:max(1, n // 10)]) / max(1, n // 10)
        tail_losses = self.losses[-max(1, n // 4):]
        tail = sum(tail_losses) / len(tail_losses)
        if tail > self.RISE_FACTOR * head + self.RISE_MARGIN:
            raise TrainingDivergedError(
                f"training diverged in experience {strategy.experience.current_experience}: "
                f"the loss rose from {head:.4g} to {tail:.4g} (mean of its first and last "
                f"iterations) instead of falling: {LOWER_LR}")

    def after_eval_forward(self, strategy, **kwargs):
        bad = non_finite_count(strategy.mb_output)
        if bad:
            what = (f"{bad} evaluation logits are NaN or infinite on experience "
                    f"{strategy.experience.current_experience}")
            raise self._input_problem(strategy, what) or TrainingDivergedError(
                f"{what} (the weights diverged): {LOWER_LR}")
