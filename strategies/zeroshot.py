"""Continual-CLIP zero-shot: no training, template-ensemble text features, τ·cosine logits."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from avalanche.models.dynamic_modules import DynamicModule
from avalanche.training.templates import SupervisedTemplate
from torch import nn


class ZeroShotClassifier(DynamicModule):
    """logits = logit_scale · ⟨x̂, t_c⟩ over the classes seen so far.

    Args:
        class_features: (C, D) L2-normalised class text features of the whole stream, in
            label order (row c is label c).
        logit_scale: the CLIP temperature τ (exp of ``logit_scale``).
        image_encoder: optional frozen encoder used when inputs are images (B, 3, H, W)
            rather than features (B, D).
    """

    def __init__(self, class_features: torch.Tensor, logit_scale: float,
                 image_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.register_buffer("class_features", nn.functional.normalize(class_features.float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.image_encoder = image_encoder
        self.n_seen_classes = 0

    def adaptation(self, experience) -> None:
        """Extend the label space with the classes of a training experience."""
        if self.training:
            classes = experience.classes_in_this_experience
            self.n_seen_classes = max(self.n_seen_classes, max(classes) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            if self.image_encoder is None:
                raise ValueError("image inputs need an image_encoder; pass features (B, D) otherwise")
            x = self.image_encoder.encode_images(x)
        feats = nn.functional.normalize(x.float(), dim=-1)
        return self.logit_scale * feats @ self.class_features[: self.n_seen_classes].T


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
