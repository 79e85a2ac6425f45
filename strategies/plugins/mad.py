"""MAD, MMANet's margin-aware distillation (Wei, Luo, Luo, CVPR 2023).

User guide: docs/multimodal-plugins.md (MADPlugin). Similarity-preserving
distillation between the row-normalised batch Gram matrices of the student (the
dropout-masked model) and a full-modality teacher, each sample weighted by the teacher's
normalised prediction entropy (its "margin": uncertain samples count more):

    L = Σ_i w_i Σ_j (Ĝ_s − Ĝ_t)_ij²   (rows; ``weight_axis="col"`` weights j, as the
                                        reference's classification code)
    w = H(softmax(teacher logits)) / Σ_batch H

A sum, as the paper: λ's effect grows with the batch size.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from clap4cl.models.multimodal import as_multimodal, step_present

from strategies.plugins.cml import predictive_log_probs
from strategies.plugins.regularizer import RegularizerPlugin, step_features

WEIGHTINGS = ("entropy", "none")
AXES = ("row", "col")


def entropy_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Normalised teacher entropies (B,), summing to 1 (uniform if all are 0).

    Uses ``log_softmax``, never ``log(softmax)``, so saturated logits give no NaN."""
    logp = predictive_log_probs(teacher_logits)
    entropy = -(logp.exp() * logp).sum(-1)
    total = entropy.sum()
    if total <= 0:
        return torch.full_like(entropy, 1.0 / len(entropy))
    return entropy / total


def mad_loss(student: torch.Tensor, teacher: torch.Tensor, teacher_logits: torch.Tensor, *,
             weighting: str = "entropy", weight_axis: str = "row") -> torch.Tensor:
    """The MAD term for student and teacher representations (B, D_s), (B, D_t)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weight_axis not in AXES:
        raise ValueError(f"weight_axis must be one of {AXES}, got {weight_axis!r}")
    s, t = student.flatten(1), teacher.flatten(1)
    gram_s = F.normalize(s @ s.T, dim=1)
    gram_t = F.normalize(t @ t.T, dim=1)
    err = (gram_s - gram_t) ** 2
    if weighting == "entropy":
        w = entropy_weights(teacher_logits)
    else:
        w = torch.full((len(s),), 1.0 / len(s), device=s.device)
    return (err * (w[:, None] if weight_axis == "row" else w[None, :])).sum()


class MADPlugin(RegularizerPlugin):
    """Distils the full-modality structure into the dropout-masked student.

    Args:
        weight: λ_MAD.
        teacher: ``self_full`` (the same model with every modality, no gradient: no
            second network needed) or a frozen model implementing the protocol, e.g. a
            teacher trained on complete data or the previous experience's model (then MAD
            acts as an entropy-weighted, similarity-preserving LwF: a different purpose).
        weighting: ``entropy`` (the paper's margin) or ``none``.
        weight_axis: ``row`` (default) or ``col`` (the reference's classification code).
        start_epoch: first epoch with the term.
    """

    name = "mad"

    def __init__(self, weight: float = 1.0, teacher: Union[str, nn.Module] = "self_full",
                 weighting: str = "entropy", weight_axis: str = "row", start_epoch: int = 0):
        super().__init__(weight, start_epoch)
        if isinstance(teacher, str) and teacher != "self_full":
            raise ValueError(f"teacher must be 'self_full' or a model, got {teacher!r}")
        if weighting not in WEIGHTINGS or weight_axis not in AXES:
            raise ValueError(f"weighting must be in {WEIGHTINGS} and weight_axis in {AXES}")
        self.teacher, self.weighting, self.weight_axis = teacher, weighting, weight_axis

    def term(self, strategy) -> torch.Tensor:
        model, feats = step_features(strategy)
        student = model.embed(feats, step_present(strategy))
        with torch.no_grad():
            if isinstance(self.teacher, str):
                teacher_model, teacher_feats = model, feats
            else:
                teacher_model = as_multimodal(self.teacher)
                teacher_feats = teacher_model.encode(strategy.mb_x)
            teacher = teacher_model.embed(teacher_feats, None)
            teacher_logits = teacher_model.head(teacher_feats, None)
        return mad_loss(student, teacher, teacher_logits, weighting=self.weighting,
                        weight_axis=self.weight_axis)
