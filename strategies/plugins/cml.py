"""CML: removing a modality must not raise the model's confidence (Ma et al., ICML 2023).

User guide: docs/multimodal-plugins.md (CMLPlugin). For every (superset S,
subset T) pair of modality masks the term is the hinge relu(c_T − c_S − margin) on the
confidence c (max softmax probability, or its log), gated as the reference code does
if asked, averaged over samples and pairs (``reduction="sum"``: summed over the batch,
as the reference; λ_mean ≈ λ_sum · B).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from clap4cl.models.modality_subsets import PAIR_POLICIES, policy_pairs

from strategies.plugins.regularizer import RegularizerPlugin, SubsetLogits, step_features

GATES = ("none", "superset_correct", "miwae", "cpm")
CONFIDENCES = ("msp", "log_msp")


def predictive_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log p (B, C) from logits (B, C) or Monte-Carlo logits (K, B, C) (log of the mean
    of the K sample probabilities)."""
    if logits.dim() == 3:
        return torch.logsumexp(F.log_softmax(logits, -1), dim=0) - math.log(logits.shape[0])
    return F.log_softmax(logits, -1)


def confidence(logits: torch.Tensor, kind: Union[str, Callable] = "msp") -> torch.Tensor:
    """Per-sample confidence: ``msp`` = max_c p_c, ``log_msp`` = max_c log p_c, or a callable."""
    if callable(kind):
        return kind(logits)
    top = predictive_log_probs(logits).max(-1).values
    if kind == "log_msp":
        return top
    if kind == "msp":
        return top.exp()
    raise ValueError(f"confidence must be one of {CONFIDENCES} or a callable, got {kind!r}")


def cml_hinge(superset_logits: torch.Tensor, subset_logits: torch.Tensor,
              targets: Optional[torch.Tensor] = None, *, margin: float = 0.0, gate: str = "none",
              confidence_kind: Union[str, Callable] = "msp") -> torch.Tensor:
    """Per-sample hinge relu(c_T − c_S − margin) (B,), gated.

    Gates: ``none`` (the paper); ``superset_correct`` (only where the
    superset is right); ``miwae`` (superset right, plus both wrong with c_S detached,
    pushing only the subset down); ``cpm`` (every pair except where removing the modality
    fixed a wrong prediction).
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    c_s = confidence(superset_logits, confidence_kind)
    c_t = confidence(subset_logits, confidence_kind)
    if gate == "none":
        return F.relu(c_t - c_s - margin)
    if targets is None:
        raise ValueError(f"gate {gate!r} needs the targets")
    right_s = predictive_log_probs(superset_logits).argmax(-1) == targets
    right_t = predictive_log_probs(subset_logits).argmax(-1) == targets
    if gate == "superset_correct":
        return F.relu(c_t - c_s - margin) * right_s
    if gate == "cpm":
        return F.relu(c_t - c_s - margin) * ~(right_t & ~right_s)
    both_wrong = ~right_s & ~right_t
    return (F.relu(c_t - c_s - margin) * right_s
            + F.relu(c_t - c_s.detach() - margin) * both_wrong)


class CMLPlugin(RegularizerPlugin):
    """Adds λ·mean relu(c_T − c_S − margin) over the pairs' samples to the loss.

    Works with any strategy whose model implements ``clap4cl.MultimodalClassifier``;
    the features of the step's forward are reused and only the head is re-run, once per
    distinct subset.

    Args:
        weight: λ.
        margin: ε in the hinge.
        pairs: ``leave_one_out`` (full vs each modality removed), ``nested_chain`` (the
            reference's random drop chains) or ``all_nested``.
        gate: ``none``, ``superset_correct``, ``miwae`` or ``cpm`` (see :func:`cml_hinge`).
        confidence: ``msp``, ``log_msp`` (keeps gradients when the softmax saturates, as
            with CLIP's τ ≈ 100) or a callable logits -> (B,).
        reduction: ``mean`` over samples and pairs, or ``sum`` over the batch (reference).
        start_epoch: first epoch with the term.
        seed: seed of the drop orders of ``nested_chain``.
    """

    name = "cml"

    def __init__(self, weight: float = 1.0, margin: float = 0.0, pairs: str = "leave_one_out",
                 gate: str = "none", confidence: Union[str, Callable] = "msp",
                 reduction: str = "mean", start_epoch: int = 0, seed: int = 0):
        super().__init__(weight, start_epoch)
        if pairs not in PAIR_POLICIES:
            raise ValueError(f"pairs must be one of {PAIR_POLICIES}, got {pairs!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if not callable(confidence) and confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
        self.margin, self.pairs, self.gate = float(margin), pairs, gate
        self.confidence, self.reduction = confidence, reduction
        self.generator = torch.Generator().manual_seed(seed)

    def checkpoint_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_checkpoint_state(self, state: dict, datasets=None) -> None:
        self.generator.set_state(state["generator"])

    def term(self, strategy) -> torch.Tensor:
        model, feats = step_features(strategy)
        targets = strategy.mb_y
        pairs = policy_pairs(self.pairs, model.n_modalities, len(targets),
                             allow_empty=model.allow_empty, per_sample=model.per_sample_masks,
                             generator=self.generator, device=targets.device,
                             canonical=model.canonical)
        logits = SubsetLogits(model, feats)
        hinges = torch.stack([cml_hinge(logits(s), logits(t), targets, margin=self.margin,
                                        gate=self.gate, confidence_kind=self.confidence)
                              for s, t in pairs])                            # (pairs, B)
        return hinges.mean() if self.reduction == "mean" else hinges.mean(0).sum()
