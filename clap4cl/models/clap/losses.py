"""CLAP4CLIP's losses: KL to the standard normal prior and the language-aware regulariser,
and the language initialisation of new heads from the same text statistics."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def language_init(text_mean: torch.Tensor, text_variance: torch.Tensor):
    """(W_μ, W_σ) = (ĒᵀĒ / D, VᵀV / D) from template means Ē and variances V (C, D)."""
    dim = text_mean.shape[1]
    return text_mean.T @ text_mean / dim, text_variance.T @ text_variance / dim


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(μ, σ²) ‖ N(0, 1)) = (σ² + μ² − 1)/2 − log σ."""
    return 0.5 * (sigma.pow(2) + mu.pow(2) - 1) - torch.log(sigma)


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor, task_of_class: torch.Tensor,
            tasks: Sequence[int]) -> torch.Tensor:
    """Σ_{k ∈ tasks} mean over task k's classes of Σ_d KL(q_c ‖ N(0, I)).

    μ, σ are (C, D) or per image (B, C, D); per-image values are averaged over the batch.
    """
    per_class = kl_to_standard_normal(mu, sigma).sum(-1)
    if per_class.dim() == 2:
        per_class = per_class.mean(0)
    return _sum_of_task_means(per_class, task_of_class, tasks)


def language_loss(text_mean: torch.Tensor, z_mean: torch.Tensor, task_of_class: torch.Tensor,
                  tasks: Sequence[int]) -> torch.Tensor:
    """Σ_{k ∈ tasks} CE(Ē_k z̄_kᵀ, identity): each class's prompts nearest its own z̄.

    Equal to the reference's double loop over M samples and L templates, because both
    means are linear. z̄ per image (B, C, D) is averaged over the batch.
    """
    if z_mean.dim() == 3:
        z_mean = z_mean.mean(0)
    total = z_mean.new_zeros(())
    for k in tasks:
        members = (task_of_class == k).nonzero().squeeze(1)
        scores = text_mean[members] @ z_mean[members].T
        total = total + F.cross_entropy(scores, torch.arange(len(members), device=scores.device))
    return total


def _sum_of_task_means(per_class, task_of_class, tasks):
    n_tasks = int(task_of_class.max()) + 1
    sums = torch.zeros(n_tasks, device=per_class.device).index_add(0, task_of_class, per_class)
    counts = torch.bincount(task_of_class, minlength=n_tasks).clamp(min=1)
    return (sums / counts)[list(tasks)].sum()
