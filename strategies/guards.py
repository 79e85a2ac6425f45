"""Plugins that stop a run cleanly when training goes wrong."""
from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from clap4cl.errors import TrainingDivergedError


class NonFiniteLossGuard(SupervisedPlugin, supports_distributed=True):
    """Stops training at the first NaN or infinite loss, before it reaches the weights.

    The error names the experience, epoch and iteration; the run directory keeps the
    checkpoint of the last finished experience. In a data-parallel run the rank that
    sees the loss stops, and torchrun then stops the others.
    """

    def before_backward(self, strategy, **kwargs):
        loss = strategy.loss
        if torch.is_tensor(loss) and not torch.isfinite(loss).all():
            clock = strategy.clock
            raise TrainingDivergedError(
                f"the loss is {loss.item()} at experience {strategy.experience.current_experience}, "
                f"epoch {clock.train_exp_epochs}, iteration {clock.train_epoch_iterations}: "
                f"lower the learning rate; the run directory keeps the last finished experience")
