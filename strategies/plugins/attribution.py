"""Attribution regularisation (Yerramilli, Tamarapalli, Francis, Nyberg; arXiv 2404.02359).

User guide: docs/multimodal-plugins.md (AttributionRegPlugin). The Grad×Input attribution
of the target logit at each modality's features, L2-pooled to one scalar per modality,
normalised to shares s_m; the term is Σ_m |s_m − r_m| averaged over the batch, pulling
the shares toward the target ratio r (uniform by default).

A logit bilinear in two modalities (CLIP's image · text) has equal Grad×Input on both
sides, so its shares are always 0.5: such models are refused. Models that expose an
additive decomposition of their logit, ``logit_contributions(feats, present) ->
{component: (B, C)}`` (CLAP: text prior, visual guidance, adapter), are attributed by
those contributions instead: each is linear in its component, so Grad×Input summed over
dimensions is exactly the contribution (completeness).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from clap4cl.evaluation.attribution import SCOPES, TARGET_LOGITS, attribution_shares, target_ratio
from clap4cl.models.multimodal import as_multimodal, step_present

from strategies.plugins.regularizer import RegularizerPlugin, step_features


class AttributionRegPlugin(RegularizerPlugin):
    """Pulls per-modality attribution shares toward a target ratio.

    Args:
        weight: λ.
        target: ``{component: ratio}`` (normalised), None = uniform.
        target_logit: ``max`` (the paper: the predicted class) or ``label``.
        scope: ``head_only`` (the paper: encoders are not regularised) or ``all``.
        start_epoch: first epoch with the term.
    """

    name = "attribution"

    def __init__(self, weight: float = 1.0, target: Optional[Mapping[str, float]] = None,
                 target_logit: str = "max", scope: str = "head_only", start_epoch: int = 0):
        super().__init__(weight, start_epoch)
        if target_logit not in TARGET_LOGITS:
            raise ValueError(f"target_logit must be one of {TARGET_LOGITS}, got {target_logit!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.target, self.target_logit, self.scope = target, target_logit, scope
        self.last_shares: Optional[Dict[str, float]] = None

    def before_training_exp(self, strategy, **kwargs):
        model = as_multimodal(strategy.model)
        if getattr(model, "bilinear_logit", False) and not hasattr(model, "logit_contributions"):
            raise ValueError(f"AttributionRegPlugin cannot regularise {type(model).__name__}: its "
                             f"logit is bilinear, so the shares are always equal")

    def term(self, strategy) -> torch.Tensor:
        model, feats = step_features(strategy)
        names, shares = attribution_shares(model, feats, step_present(strategy),
                                           target_logit=self.target_logit, labels=strategy.mb_y,
                                           scope=self.scope, create_graph=True)
        r = target_ratio(names, self.target).to(shares.device)
        self.last_shares = dict(zip(names, shares.detach().mean(0).tolist()))
        return (shares - r).abs().sum(1).mean()
