"""Continual-CLIP zero-shot: no training, template-ensemble text features, τ·cosine logits."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from clap4cl.models.zeroshot import ZeroShotClassifier


class ZeroShotCLIP(SupervisedTemplate):
    """The Continual-CLIP baseline as an Avalanche strategy.

    ``train`` only extends the label space to the experience's classes; nothing is
    learned. Evaluation is the plain template-ensemble zero-shot classifier.
    """

    def __init__(self, *, class_features: torch.Tensor, logit_scale: float,
                 image_encoder: Optional[nn.Module] = None, eval_mb_size: int = 32,
                 device: str = "cpu", plugins: Sequence = (), evaluator=None):
        model = ZeroShotClassifier(class_features, logit_scale, image_encoder)
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(model=model, optimizer=None, criterion=nn.CrossEntropyLoss(),
                         train_mb_size=eval_mb_size, train_epochs=0, eval_mb_size=eval_mb_size,
                         device=device, plugins=list(plugins), **kwargs)

    def make_optimizer(self, **kwargs):
        """Nothing is trained: there is no optimizer to set up."""

    def check_model_and_optimizer(self, **kwargs):
        self.model = self.model_adaptation()
