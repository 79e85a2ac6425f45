"""Continual-CLIP's zero-shot classifier: τ·cosine logits against class text features."""
from __future__ import annotations

from typing import Optional

import torch
from avalanche.models.dynamic_modules import DynamicModule
from torch import nn

from clap4cl.models.frozen_encoder import FrozenImageEncoderMixin
from clap4cl.models.masking import MaskedLogitsMixin, learns_classes_from, pad_unseen


class ZeroShotClassifier(MaskedLogitsMixin, FrozenImageEncoderMixin, DynamicModule):
    """logits = logit_scale · ⟨x̂, t_c⟩ over the classes seen so far (the others masked).

    Args:
        class_features: (C, D) L2-normalised class text features of the whole stream, in
            label order (row c is label c).
        logit_scale: the CLIP temperature τ (exp of ``logit_scale``).
        image_encoder: optional frozen encoder used when inputs are images (B, 3, H, W)
            rather than features (B, D); never in ``state_dict`` or ``parameters``
            (see :mod:`clap4cl.models.frozen_encoder`).
    """

    def __init__(self, class_features: torch.Tensor, logit_scale: float,
                 image_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.register_buffer("class_features", nn.functional.normalize(class_features.float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.set_image_encoder(image_encoder)
        self.n_seen_classes = 0

    def adaptation(self, experience) -> None:
        """Extend the label space with the classes of a training experience."""
        if learns_classes_from(self, experience):
            classes = experience.classes_in_this_experience
            self.n_seen_classes = max(self.n_seen_classes, max(classes) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over every class, (B, C_all); classes not seen in training yet are
        ``UNSEEN_LOGIT`` (see :mod:`clap4cl.models.masking`)."""
        if self.n_seen_classes == 0:
            return self.untrained_logits(x.shape[0])
        feats = nn.functional.normalize(self.image_features(x).float(), dim=-1)
        seen = self.logit_scale * feats @ self.class_features[: self.n_seen_classes].T
        return pad_unseen(seen, self.n_classes)
