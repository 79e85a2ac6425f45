"""Exemplar selectors: which samples of a class the replay memory keeps.

All follow Avalanche's ``ExemplarsSelectionStrategy`` interface
(``make_sorted_indices(strategy, data)`` returns the class's indices, best first), so they
work with Avalanche's ``ParametricBuffer`` / ``ClassBalancedBuffer`` in any strategy and
with ``ClassBalancedMemory``. Uncertainty selectors score the samples with the strategy's
current model: Monte-Carlo logits (B, M, C) for models with ``forward_samples`` (CLAP),
plain logits otherwise. Scoring uses the evaluation view of the data, in index order,
and keeps every score aligned with its sample (the reference mixes the rows of
different images; docs/clap4clip.md R22).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from avalanche.training.storage_policy import ExemplarsSelectionStrategy
from torch.utils.data import DataLoader

from clap4cl._lazy import resolve
from clap4cl.evaluation import scores as uncertainty

from strategies.choices import SELECTORS


class FirstKExemplarsSelection(ExemplarsSelectionStrategy):
    """The reference's ``random`` selector: the first samples per class in dataset order.

    It is deterministic and nested across steps (docs/clap4clip.md R21); kept as
    ``reference_first_k``.
    """

    def make_sorted_indices(self, strategy, data) -> List[int]:
        return list(range(len(data)))


@torch.no_grad()
def _model_outputs(strategy, data, fn):
    """Concatenated ``fn(model, x)`` over ``data`` in index order, model in eval mode."""
    model = strategy.model
    was_training = model.training
    model.eval()
    evaluation_view = data.eval() if hasattr(data, "eval") else data
    batch_size = getattr(strategy, "eval_mb_size", None) or 64
    loader = DataLoader(evaluation_view, batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(evaluation_view, "collate_fn", None))
    device = getattr(strategy, "device", "cpu")
    try:
        outputs = [fn(model, batch[0].to(device)).cpu() for batch in loader]
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def dataset_sample_logits(strategy, data) -> torch.Tensor:
    """(N, M, C) Monte-Carlo logits of ``strategy.model`` on ``data``, aligned with its indices."""
    return _model_outputs(strategy, data, uncertainty.sample_logits)


class UncertaintySelection(ExemplarsSelectionStrategy):
    """Ranks a class's samples by an uncertainty score of the current model.

    Args:
        score: a function of (logits (N, M, C), targets (N,)) returning (N,) scores.
        keep: ``highest`` or ``lowest`` scores first.
    """

    def __init__(self, score, keep: str):
        if keep not in ("highest", "lowest"):
            raise ValueError(f"keep must be 'highest' or 'lowest', got {keep!r}")
        self.score = score
        self.keep = keep

    def make_sorted_indices(self, strategy, data) -> List[int]:
        logits = dataset_sample_logits(strategy, data)
        targets = torch.as_tensor(list(data.targets))
        scores = self.score(logits, targets)
        return torch.argsort(scores, descending=self.keep == "highest", stable=True).tolist()


def var_entropy_score(logits, targets=None) -> torch.Tensor:
    """Geometric mean of the predictive variance and the (positive) entropy.

    The reference takes the geometric mean with Σ p log p ≤ 0, whose log is NaN
    (docs/clap4clip.md R23); the positive entropy is the intended quantity.
    """
    return torch.sqrt(uncertainty.variance(logits) * uncertainty.entropy(logits))


def herding_order(features: torch.Tensor, n: Optional[int] = None) -> List[int]:
    """iCaRL herding: greedily add the sample that brings the running mean of the chosen
    samples closest to the mean of all samples. Vectorised over candidates."""
    features = features.double()
    n = len(features) if n is None else min(n, len(features))
    target = features.mean(0)
    running = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool)
    order = []
    for i in range(n):
        distance = ((target - (running + features) / (i + 1)) ** 2).sum(1)
        distance[~available] = float("inf")
        j = int(torch.argmin(distance))
        order.append(j)
        available[j] = False
        running += features[j]
    return order


class HerdingSelection(ExemplarsSelectionStrategy):
    """iCaRL herding on L2-normalised image features (``space="features"``, default) or on
    L2-normalised mean logits (``space="logits"``, what the reference's ``icarl`` does)."""

    def __init__(self, space: str = "features"):
        if space not in ("features", "logits"):
            raise ValueError(f"herding space must be 'features' or 'logits', got {space!r}")
        self.space = space

    def make_sorted_indices(self, strategy, data) -> List[int]:
        if self.space == "logits":
            vectors = dataset_sample_logits(strategy, data).mean(1)
        else:
            vectors = _model_outputs(strategy, data, _image_features)
        return herding_order(F.normalize(vectors.double(), dim=-1))


def _image_features(model, x):
    """The model's image features (CLAP's normalised frozen features), else the inputs."""
    return model.encode_images(x) if hasattr(model, "encode_images") else x.flatten(1)


def herding_logits_selection() -> HerdingSelection:
    """iCaRL herding on mean logits (the reference's ``icarl``)."""
    return HerdingSelection("logits")


def entropy_selection() -> UncertaintySelection:
    """Highest predictive entropy first."""
    return UncertaintySelection(lambda l, t: uncertainty.entropy(l), "highest")


def energy_selection() -> UncertaintySelection:
    """Lowest energy (logsumexp of the mean logits) first."""
    return UncertaintySelection(lambda l, t: uncertainty.energy(l), "lowest")


def variance_selection() -> UncertaintySelection:
    """Lowest Monte-Carlo predictive variance first."""
    return UncertaintySelection(lambda l, t: uncertainty.variance(l), "lowest")


def var_entropy_selection() -> UncertaintySelection:
    """Lowest geometric mean of variance and entropy first."""
    """Highest predictive entropy first."""
    return UncertaintySelection(var_entropy_score, "lowest")


def distance_selection() -> UncertaintySelection:
    """Lowest mean logit of the true class first."""
    return UncertaintySelection(uncertainty.true_class_logit, "lowest")


def make_selector(name: str) -> ExemplarsSelectionStrategy:
    """The exemplar selector called ``name`` (see ``strategies.choices.SELECTORS``)."""
    if name not in SELECTORS:
        raise ValueError(f"unknown exemplar selector {name!r}: choose one of {', '.join(SELECTORS)}")
    return resolve(SELECTORS[name])()
