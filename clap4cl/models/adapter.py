"""CLIP-Adapter (Gao et al.): a residual bottleneck adapter on the image features.

f = normalize(ratio · A(x̂) + (1 − ratio) · x̂),  A = ReLU ∘ Linear(D/r → D) ∘ ReLU ∘ Linear(D → D/r),
logits = τ⟨f, t_c⟩ over the seen classes (the others masked, see :mod:`clap4cl.models.masking`). The reference builds a fresh adapter at every
experience (docs/clap4clip.md R25); ``reinit_each_experience=False`` keeps one adapter across them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.models.dynamic_modules import DynamicModule
from torch import nn

from clap4cl.models.frozen_encoder import FrozenImageEncoderMixin
from clap4cl.models.masking import MaskedLogitsMixin, learns_classes_from, pad_unseen


class CLIPAdapterModel(MaskedLogitsMixin, FrozenImageEncoderMixin, DynamicModule):
    """Zero-shot CLIP classifier with a trainable residual image adapter.

    Args:
        class_features: (C, D) class text features of the whole stream, label order.
        logit_scale: CLIP's temperature τ.
        ratio: residual mixing weight of the adapter (0.2 in CLIP-Adapter).
        reduction: bottleneck reduction factor r (4: 512 → 128 → 512).
        reinit_each_experience: re-initialise the adapter when new classes arrive.
        image_encoder: optional frozen ``FrozenCLIP`` for image inputs, never in
            ``state_dict`` or ``parameters`` (see :mod:`clap4cl.models.frozen_encoder`).
    """

    def __init__(self, class_features: torch.Tensor, logit_scale: float, *, ratio: float = 0.2,
                 reduction: int = 4, reinit_each_experience: bool = True, image_encoder=None):
        super().__init__()
        dim = class_features.shape[1]
        self.register_buffer("class_features", F.normalize(class_features.float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.ratio = float(ratio)
        self.reinit_each_experience = reinit_each_experience
        self.adapter = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                                     nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())
        self.n_seen_classes = 0
        self.set_image_encoder(image_encoder)

    def adaptation(self, experience) -> None:
        """Extend the label space; re-initialise the adapter for new classes if asked."""
        if not learns_classes_from(self, experience):
            return
        n_seen = max(self.n_seen_classes, max(experience.classes_in_this_experience) + 1)
        if n_seen > self.n_seen_classes and self.n_seen_classes and self.reinit_each_experience:
            for layer in self.adapter:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        self.n_seen_classes = n_seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """τ-scaled cosine logits over every class, (B, C_all); classes not trained on
        yet are ``UNSEEN_LOGIT`` (see :mod:`clap4cl.models.masking`)."""
        if self.n_seen_classes == 0:
            return self.untrained_logits(x.shape[0])
        image = F.normalize(self.image_features(x).float(), dim=-1)
        mixed = self.ratio * self.adapter(image) + (1 - self.ratio) * image
        seen = self.logit_scale * F.normalize(mixed, dim=-1) @ self.class_features[: self.n_seen_classes].T
        return pad_unseen(seen, self.n_classes)

    def get_extra_state(self):
        return {"n_seen_classes": self.n_seen_classes}

    def set_extra_state(self, state) -> None:
        self.n_seen_classes = int(state["n_seen_classes"])
