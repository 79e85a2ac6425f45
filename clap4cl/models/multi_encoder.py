"""A generic multi-encoder classifier for genuinely multimodal data (e.g. audio + video).

One encoder per modality, then either

- ``fusion="late"``: logits = Σ_m present_m · W_m z_m + b (a removed modality's term is
  dropped, so unimodal predictions are exact and need no dropout training), or
- ``fusion="concat"``: logits = W_2 relu(W_1 [z̃_1; …; z̃_M]) with z̃_m = z_m if present,
  else the fill (``zeros``, the running ``mean`` of z_m, or a ``learned`` token). Train it
  with ``ModalityDropoutPlugin`` so the filled inputs are in distribution.

Inputs are a dict ``{name: (B, d_m)}`` or one tensor (B, Σ d_m) holding the modalities
side by side in ``input_dims`` order, which is what Avalanche datasets can carry. The
output has one unit per class of the stream; classes not seen in training yet are masked
to -1000 (as Avalanche's ``IncrementalClassifier``), so confidences are over seen classes.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from avalanche.models.dynamic_modules import DynamicModule
from torch import nn

from clap4cl.models.choices import FILLS, FUSIONS
from clap4cl.models.masking import UNSEEN_LOGIT, learns_classes_from
from clap4cl.models.multimodal import MultimodalModule


class MultiEncoderClassifier(MultimodalModule, DynamicModule):
    """Late-fusion or concatenation classifier over per-modality encoders.

    Args:
        input_dims: ``{modality: input width}``, in mask order.
        n_classes: classes of the whole stream.
        fusion: ``late`` or ``concat`` (see the module docstring).
        hidden: width of each default encoder, Linear(d_m, hidden) + ReLU.
        fused_hidden: hidden width of the concat head.
        fill: how ``concat`` fills a removed modality.
        mean_momentum: EMA momentum of the running mean (``fill="mean"``), updated in
            training over every experience, so it carries no single task's prior.
        encoders: optional ``{modality: module}`` mapping (B, d_m) to (B, hidden).
    """

    def __init__(self, input_dims: Mapping[str, int], n_classes: int, *, fusion: str = "concat",
                 hidden: int = 32, fused_hidden: int = 32, fill: str = "zeros",
                 mean_momentum: float = 0.01, encoders: Optional[Mapping[str, nn.Module]] = None):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        self.modality_names = tuple(input_dims)
        self.input_dims = dict(input_dims)
        self.fusion, self.fill, self.mean_momentum = fusion, fill, mean_momentum
        self.null_mode = {m: "drop" if fusion == "late" else fill for m in self.modality_names}
        self.encoders = nn.ModuleDict(encoders or {
            m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU()) for m, d in input_dims.items()})
        m = len(self.modality_names)
        if fusion == "late":
            self.heads = nn.ModuleDict({n: nn.Linear(hidden, n_classes, bias=False)
                                        for n in self.modality_names})
            self.bias = nn.Parameter(torch.zeros(n_classes))
        else:
            self.fuse = nn.Sequential(nn.Linear(m * hidden, fused_hidden), nn.ReLU())
            self.classifier = nn.Linear(fused_hidden, n_classes)
            self.register_buffer("running_mean", torch.zeros(m, hidden))
            if fill == "learned":
                self.missing_token = nn.Parameter(torch.zeros(m, hidden))
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def adaptation(self, experience) -> None:
        """Unmask the classes of a training experience."""
        if learns_classes_from(self, experience):
            self.seen[list(experience.classes_in_this_experience)] = True

    # ------------------------------------------------------------------ protocol
    def split_inputs(self, x) -> Dict[str, torch.Tensor]:
        """``{modality: (B, d_m)}`` from a dict or a side-by-side tensor."""
        if isinstance(x, Mapping):
            return {m: x[m] for m in self.modality_names}
        widths = [self.input_dims[m] for m in self.modality_names]
        if x.shape[-1] != sum(widths):
            raise ValueError(f"inputs have width {x.shape[-1]}, expected {sum(widths)} = "
                             f"{' + '.join(map(str, widths))} for {self.modality_names}")
        return dict(zip(self.modality_names, torch.split(x.float(), widths, dim=-1)))

    def encode(self, x) -> Dict[str, torch.Tensor]:
        feats = {m: self.encoders[m](v.float()) for m, v in self.split_inputs(x).items()}
        if self.fusion == "concat" and self.fill == "mean" and self.training:
            with torch.no_grad():
                batch_mean = torch.stack([feats[m].mean(0) for m in self.modality_names])
                self.running_mean.lerp_(batch_mean, self.mean_momentum)
        return feats

    def head(self, feats, present=None, *, mc_samples: bool = False) -> torch.Tensor:
        if self.fusion == "late":
            present = self.check_present(present, self._batch_size(feats)).to(self.bias.device)
            logits = self.bias + sum(present[:, i:i + 1] * self.heads[m](feats[m])
                                     for i, m in enumerate(self.modality_names))
        else:
            logits = self.classifier(self.embed(feats, present))
        logits = logits.masked_fill(~self.seen, UNSEEN_LOGIT)
        return logits[None] if mc_samples else logits

    def embed(self, feats, present=None) -> torch.Tensor:
        """Late: the present modalities' features side by side (absent ones zero);
        concat: the fused hidden layer."""
        present = self.check_present(present, self._batch_size(feats))
        present = present.to(feats[self.modality_names[0]].device)
        parts = []
        for i, m in enumerate(self.modality_names):
            keep = present[:, i:i + 1]
            parts.append(torch.where(keep, feats[m], self._fill_value(i, feats[m])))
        joined = torch.cat(parts, dim=-1)
        return joined if self.fusion == "late" else self.fuse(joined)

    def _fill_value(self, i: int, z: torch.Tensor) -> torch.Tensor:
        if self.fusion == "late" or self.fill == "zeros":
            return torch.zeros_like(z)
        source = self.running_mean if self.fill == "mean" else self.missing_token
        return source[i].expand_as(z)

    @staticmethod
    def _batch_size(feats) -> int:
        return next(iter(feats.values())).shape[0]
