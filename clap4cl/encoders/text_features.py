"""Per-class text statistics of a prompt-template ensemble.

CLAP uses, for every class c and template l, the L2-normalised prompt embedding
e_{c,l}; from it the template mean ē_c, the class feature t_c = ē_c / ‖ē_c‖ and the
per-dimension variance over templates (language-aware initialisation and the
language regulariser; docs/clap4clip.md R2 and R5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassTextFeatures:
    """Text statistics of C classes with L templates in a D-dimensional joint space.

    Attributes:
        per_template: (C, L, D) L2-normalised per-template embeddings e_{c,l}.
        mean: (C, D) template mean ē_c (not renormalised).
        normalized: (C, D) class features t_c = ē_c / ‖ē_c‖.
        variance: (C, D) unbiased (ddof=1) variance over templates; zeros when L == 1
            (the reference yields NaN there; docs/clap4clip.md R6).
        class_names: the C class names, in the same order as the rows.
    """

    per_template: torch.Tensor
    mean: torch.Tensor
    normalized: torch.Tensor
    variance: torch.Tensor
    class_names: tuple

    @classmethod
    def from_per_template(cls, per_template: torch.Tensor, class_names) -> "ClassTextFeatures":
        """Build all statistics from (C, L, D) per-template embeddings (normalised here)."""
        if per_template.dim() != 3:
            raise ValueError(f"per_template must be (C, L, D), got shape {tuple(per_template.shape)}")
        e = torch.nn.functional.normalize(per_template.float(), dim=-1)
        mean = e.mean(dim=1)
        if e.shape[1] > 1:
            variance = e.var(dim=1, unbiased=True)
        else:
            variance = torch.zeros_like(mean)
        names = tuple(class_names)
        if len(names) != e.shape[0]:
            raise ValueError(f"{len(names)} class names for {e.shape[0]} classes")
        return cls(e, mean, torch.nn.functional.normalize(mean, dim=-1), variance, names)

    @property
    def n_classes(self) -> int:
        return self.per_template.shape[0]

    @property
    def dim(self) -> int:
        return self.per_template.shape[-1]

    def select(self, indices) -> "ClassTextFeatures":
        """The statistics of the given classes, in the given order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return ClassTextFeatures(
            self.per_template[idx], self.mean[idx], self.normalized[idx],
            self.variance[idx], tuple(self.class_names[i] for i in idx.tolist()),
        )
