"""What the multimodal regularisation plugins share (docs/multimodal-plugins.md, "Plugins").

A :class:`RegularizerPlugin` adds ``weight · term(strategy)`` to ``strategy.loss`` in
``before_backward`` from its ``start_epoch`` on, and records the term's value in
``strategy.loss_terms[name]`` (read by ``clap4cl.evaluation.modality_metrics.LossTermsMetric``).
The plugins own ``loss_terms``: they empty it at the start of every training iteration.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from avalanche.core import SupervisedPlugin

from clap4cl.models.multimodal import MultimodalModule, as_multimodal
from clap4cl.models.multimodal import step_features as _step_features


class RegularizerPlugin(SupervisedPlugin):
    """Base of CML, MAR, MAD and attribution regularisation.

    Args:
        weight: λ, the term's weight in the loss.
        start_epoch: first epoch (0-based, within each experience) with the term.
    """

    name = "regularizer"

    def __init__(self, weight: float = 1.0, start_epoch: int = 0):
        super().__init__()
        if weight < 0:
            raise ValueError(f"{self.name} weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.start_epoch = int(start_epoch)
        self.last_value = None

    def term(self, strategy) -> torch.Tensor:
        raise NotImplementedError

    def active(self, strategy) -> bool:
        return strategy.clock.train_exp_epochs >= self.start_epoch

    def before_training_iteration(self, strategy, **kwargs):
        strategy.loss_terms = {}                  # this iteration's terms only

    def before_backward(self, strategy, **kwargs):
        if not self.weight or not self.active(strategy):
            return
        term = self.term(strategy)
        strategy.loss = strategy.loss + self.weight * term
        self.last_value = float(term.detach())
        record_loss_term(strategy, self.name, self.last_value)


def record_loss_term(strategy, name: str, value: float) -> None:
    terms: Dict[str, float] = getattr(strategy, "loss_terms", None) or {}
    terms[name] = value
    strategy.loss_terms = terms


def step_features(strategy) -> Tuple[MultimodalModule, Dict[str, torch.Tensor]]:
    """(the strategy's multimodal model, the features of the current mini-batch), reusing
    those of the step's forward pass when the strategy keeps them (``mb_feats``)."""
    model = as_multimodal(strategy.model)
    return model, _step_features(strategy, model)


class SubsetLogits:
    """``model.head(feats, mask)`` computed once per distinct mask within one step."""

    def __init__(self, model: MultimodalModule, feats: Dict[str, torch.Tensor]):
        self.model, self.feats, self.memo = model, feats, {}

    def __call__(self, mask: torch.Tensor) -> torch.Tensor:
        key = mask.cpu().numpy().tobytes()
        if key not in self.memo:
            self.memo[key] = self.model.head(self.feats, mask)
        return self.memo[key]
