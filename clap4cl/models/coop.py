"""Prompt-learning classifiers: CoOp and CLAP + CoOp on frozen CLIP image features.

``CoOpModel``: logits τ·⟨x̂_b, t̂_c⟩ with t̂_c the learned prompt's text feature of class c
(the only trainable values are the prompt learner's contexts).

``ClapCoopModel``: CLAP4CLIP (``ClapModel``) whose class features t_c are the learned-prompt
features instead of the hand-crafted template means: they are the VGA queries and the
residual base h_c = t̂_c + VGA_c. The hand-crafted template statistics still give the
language-aware initialisation of the heads and the language regulariser. By default
(the reference's ``coop_variational``) the VGA has D/64 heads and each μ and σ head is
LayerNorm(D) followed by Linear(D, D). See docs/prompt-learning.md.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.models.dynamic_modules import DynamicModule
from torch import nn

from clap4cl import distributed
from clap4cl.encoders.text_features import ClassTextFeatures
from clap4cl.models.clap import SIGMA_FLOOR, SIGMA_SCALE, ClapModel
from clap4cl.models.masking import (MaskedLogitsMixin, learns_classes_from, new_classes,
                                    pad_unseen)
from clap4cl.models.prompt_learner import PromptLearner


def _grow_contexts(prompts: PromptLearner, state_dict) -> None:
    """Add contexts to ``prompts`` until it has as many as the checkpoint ``state_dict``."""
    n = state_dict.get("_extra_state", {}).get("n_contexts", 1)
    while prompts.n_contexts < n:
        prompts.add_context()


class CoOpModel(MaskedLogitsMixin, DynamicModule):
    """CoOp: a linear classifier whose class weights are learned-prompt text features.

    Args:
        prompts: the :class:`PromptLearner` over every class of the stream (label order).
        logit_scale: CLIP's temperature τ (frozen).
        image_encoder: optional frozen encoder for image inputs (B, 3, H, W).
    """

    def __init__(self, prompts: PromptLearner, logit_scale: float, image_encoder=None):
        super().__init__()
        self.prompts = prompts
        self.logit_scale = float(logit_scale)
        self.n_seen_classes = 0
        self.n_tasks = 0
        object.__setattr__(self, "image_encoder", image_encoder)

    @property
    def n_classes(self) -> int:
        """Every class of the stream: the width of ``forward``'s logits."""
        return len(self.prompts.class_names)

    def adaptation(self, experience) -> None:
        """Extend the label space; with expandable prompts add a context per new task."""
        if not learns_classes_from(self, experience):
            return
        new = new_classes(experience, self.n_seen_classes)
        if not new:
            return
        if self.n_tasks and self.prompts.expandable:
            self.prompts.add_context()
        self.n_seen_classes = max(self.n_seen_classes, new[-1] + 1)
        self.n_tasks += 1

    def class_text(self) -> torch.Tensor:
        """(C, D) learned-prompt features of the seen classes (one pass per call in training,
        cached while the context does not change otherwise)."""
        return self.prompts(self.n_seen_classes)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            if self.image_encoder is None:
                raise ValueError("image inputs need an image_encoder; pass features (B, D) otherwise")
            with torch.no_grad():
                x = self.image_encoder.encode_images(x)
        return F.normalize(x.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over every class, (B, C_all); classes not seen in training yet are
        ``UNSEEN_LOGIT`` (see :mod:`clap4cl.models.masking`)."""
        if self.n_seen_classes == 0:
            return self.untrained_logits(x.shape[0])
        images = self.encode_images(x)
        return pad_unseen(self.logit_scale * images @ self.class_text().T, self.n_classes)

    def get_extra_state(self):
        return {"n_seen_classes": self.n_seen_classes, "n_tasks": self.n_tasks,
                "n_contexts": self.prompts.n_contexts}

    def set_extra_state(self, state) -> None:
        self.n_seen_classes = int(state["n_seen_classes"])
        self.n_tasks = int(state["n_tasks"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Grow the contexts to the checkpoint's, then load it."""
        _grow_contexts(self.prompts, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class LayerNormTaskHeads(nn.Module):
    """Per-task Gaussian heads μ_k(h) = Linear(LN(h)), σ_k(h) = 0.999·softplus(Linear(LN(h))) + 0.001.

    The interface of CLAP's task heads (``add_task``, ``set_trainable``, ``sizes``,
    ``n_tasks``, ``variational``); task k owns a contiguous block of classes. With
    ``layernorm=False`` the heads are bare Linear maps. A language initialisation
    overwrites only the Linear weights: LayerNorm starts at gain 1, bias 0.
    """

    def __init__(self, dim: int, variational: bool = True, layernorm: bool = True):
        super().__init__()
        self.dim = dim
        self.variational = variational
        self.layernorm = layernorm
        self.mu = nn.ModuleList()
        self.sigma = nn.ModuleList()
        self.sizes: List[int] = []

    @property
    def n_tasks(self) -> int:
        return len(self.sizes)

    def _head(self, init, device):
        linear = nn.Linear(self.dim, self.dim, device=device)
        if init is not None:
            with torch.no_grad():
                linear.weight.copy_(init)
        if not self.layernorm:
            return nn.Sequential(linear)
        return nn.Sequential(nn.LayerNorm(self.dim, device=device), linear)

    def add_task(self, n_classes: int, mu_weight: Optional[torch.Tensor] = None,
                 sigma_weight: Optional[torch.Tensor] = None) -> None:
        device = next(self.parameters()).device if self.n_tasks else None
        self.mu.append(self._head(mu_weight, device))
        if self.variational:
            self.sigma.append(self._head(sigma_weight, device))
        self.sizes.append(int(n_classes))

    def set_trainable(self, tasks: Sequence[int]) -> None:
        chosen = set(tasks)
        for heads in (self.mu, self.sigma):
            for k, head in enumerate(heads):
                head.requires_grad_(k in chosen)

    def forward(self, h: torch.Tensor):
        mus, sigmas, start = [], [], 0
        for k, size in enumerate(self.sizes):
            part = h[..., start:start + size, :]
            mus.append(self.mu[k](part))
            if self.variational:
                sigmas.append(SIGMA_SCALE * F.softplus(self.sigma[k](part)) + SIGMA_FLOOR)
            start += size
        mu = torch.cat(mus, dim=-2)
        return mu, torch.cat(sigmas, dim=-2) if self.variational else None


class ClapCoopModel(ClapModel):
    """CLAP4CLIP on learned-prompt class features (the reference's ``coop_variational``).

    Args:
        prompts: the :class:`PromptLearner` over every class of the stream.
        text: hand-crafted template statistics of every class (language-aware init and
            the language regulariser only).
        logit_scale: τ.
        head_layernorm: LayerNorm before every μ and σ Linear (reference).
        vga_heads: attention heads of the VGA; None = D // 64 (reference).
        **clap_options: the other ``ClapModel`` options (vga, mc_samples, ...).

    Removing the visual ``guidance`` (multimodal protocol) gives h = t̂, the learned-prompt
    class features.
    """

    def __init__(self, prompts: PromptLearner, text: ClassTextFeatures, logit_scale: float, *,
                 head_layernorm: bool = True, vga_heads: Optional[int] = None,
                 variational: bool = True, **clap_options):
        heads = vga_heads if vga_heads is not None else max(1, text.dim // 64)
        super().__init__(text, logit_scale, vga_heads=heads, variational=variational,
                         **clap_options)
        self.prompts = prompts
        self.heads = LayerNormTaskHeads(text.dim, variational, layernorm=head_layernorm)

    def adaptation(self, experience) -> None:
        if learns_classes_from(self, experience) and new_classes(experience, self.n_seen_classes) and \
                self.heads.n_tasks and self.prompts.expandable:
            self.prompts.add_context()
        super().adaptation(experience)

    def class_text(self) -> torch.Tensor:
        """(C, D) learned-prompt features of the seen classes."""
        return self.prompts(self.n_seen_classes)

    def refined_text(self, images: torch.Tensor, context: Optional[str] = None,
                     guidance: bool = True) -> torch.Tensor:
        """h = t̂ + VGA(t̂, x̂) on the learned-prompt features t̂ (h = t̂ without guidance)."""
        context = context or self.current_context()
        t = self.class_text()
        if self.vga is None or not guidance:
            return t if context == "batch" else t.expand(images.shape[0], -1, -1)
        if context == "batch" and self.training:
            images = distributed.cat_all_ranks(images)
        return t + self.vga(t, images, self.task_of_class(), context)

    def logit_contributions(self, feats, present: Optional[torch.Tensor] = None):
        """As ``ClapModel.logit_contributions`` with the learned prompts as the prior."""
        out = super().logit_contributions(feats, present)
        images = feats["image"]
        if present is not None and not bool(present[0, 0]):
            images = self.null_image.expand_as(images)
        learned = self.logit_scale * images @ self.class_text().T
        total_prior = out["prior"] + out["guidance"]
        out["prior"] = learned
        out["guidance"] = total_prior - learned
        return out

    def get_extra_state(self):
        state = super().get_extra_state()
        state["n_contexts"] = self.prompts.n_contexts
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Grow the contexts to the checkpoint's, then load it."""
        _grow_contexts(self.prompts, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
