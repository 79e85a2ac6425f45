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

from typing import Dict, Mapping, Optional, Tuple

import torch

from clap4cl.models.multimodal import as_multimodal

from strategies.plugins.regularizer import RegularizerPlugin, step_features

TARGET_LOGITS = ("max", "label")
SCOPES = ("head_only", "all")


def _target_index(logits: torch.Tensor, target_logit: str, labels: Optional[torch.Tensor]):
    if target_logit == "max":
        return logits.argmax(-1)
    if target_logit == "label":
        if labels is None:
            raise ValueError("target_logit='label' needs the labels")
        return labels
    raise ValueError(f"target_logit must be one of {TARGET_LOGITS}, got {target_logit!r}")


def grad_x_input(model, feats: Dict[str, torch.Tensor], present=None, *, target_logit: str = "max",
                 labels: Optional[torch.Tensor] = None, scope: str = "head_only",
                 create_graph: bool = False) -> Dict[str, torch.Tensor]:
    """Grad×Input (B, ...) of the target logit at each modality's features.

    ``head_only`` attributes detached features, so a regulariser built on it trains
    only the head; ``all`` keeps the encoders' graph."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    names = list(model.modality_names)
    inputs = {m: (feats[m].detach().requires_grad_() if scope == "head_only" or
                  not feats[m].requires_grad else feats[m]) for m in names}
    with torch.enable_grad():
        logits = model.head(inputs, present)
        index = _target_index(logits, target_logit, labels)
        selected = logits.gather(1, index[:, None]).sum()
        grads = torch.autograd.grad(selected, [inputs[m] for m in names], create_graph=create_graph)
    return {m: g * inputs[m] for m, g in zip(names, grads)}


def shares_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """(B, K) non-negative scores -> shares summing to 1 per row (uniform for all-zero rows)."""
    total = scores.sum(1, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[1])
    return torch.where(total > 0, scores / total.clamp_min(1e-12), uniform)


def attribution_shares(model, feats, present=None, *, target_logit: str = "max", labels=None,
                       scope: str = "head_only", create_graph: bool = False) -> Tuple[Tuple[str, ...], torch.Tensor]:
    """(component names, shares (B, K)) of a protocol model.

    Uses ``model.logit_contributions`` when the model has one (|contribution| at the
    target logit), else L2-pooled Grad×Input per modality. Refuses bilinear logits.
    """
    if hasattr(model, "logit_contributions"):
        parts = model.logit_contributions(feats, present)
        names = tuple(parts)
        total = sum(parts.values())
        index = _target_index(total, target_logit, labels)[:, None]
        scores = torch.stack([parts[n].gather(1, index)[:, 0].abs() for n in names], 1)
        return names, shares_from_scores(scores)
    if getattr(model, "bilinear_logit", False):
        raise ValueError(f"{type(model).__name__}'s logit is bilinear in its modalities, so "
                         f"Grad×Input shares are always equal: attribution regularisation has "
                         f"nothing to act on (give the model an additive logit_contributions)")
    gxi = grad_x_input(model, feats, present, target_logit=target_logit, labels=labels,
                       scope=scope, create_graph=create_graph)
    names = tuple(gxi)
    scores = torch.stack([gxi[m].flatten(1).norm(dim=1) for m in names], 1)
    return names, shares_from_scores(scores)


def target_ratio(names, target: Optional[Mapping[str, float]] = None) -> torch.Tensor:
    """The normalised target ratio over ``names`` (uniform for None)."""
    if target is None:
        return torch.full((len(names),), 1.0 / len(names))
    unknown = set(target) - set(names)
    if unknown:
        raise ValueError(f"target names {sorted(unknown)}; the components are {list(names)}")
    r = torch.tensor([float(target.get(n, 0.0)) for n in names])
    if (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"target ratios must be >= 0 with a positive sum, got {dict(target)}")
    return r / r.sum()


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
        names, shares = attribution_shares(model, feats, model.last_present,
                                           target_logit=self.target_logit, labels=strategy.mb_y,
                                           scope=self.scope, create_graph=True)
        r = target_ratio(names, self.target).to(shares.device)
        self.last_shares = dict(zip(names, shares.detach().mean(0).tolist()))
        return (shares - r).abs().sum(1).mean()
