"""Uncertainty scores from Monte-Carlo logits, shared by exemplar selection and novelty detection.

Every function takes logits of shape (B, M, C) (M Monte-Carlo samples per input, e.g.
``ClapModel.forward_samples``) or (B, C) (a single sample) and returns one score per
input, (B,). "Mean logits" are the mean over the M samples; p_m = softmax of sample m.

Definitions (docs/metrics-and-novelty.md):

- ``msp``: max softmax probability of the mean logits.
- ``energy``: logsumexp over classes of the mean logits (the negative free energy;
  higher = more confident / more in-distribution).
- ``entropy``: H(softmax(mean logits)), as the reference's entropy selector.
- ``variance``: Σ_c Var_m(p_m[c]), the population variance over samples (0 for M = 1).
- ``mutual_information``: H(mean_m p_m) − mean_m H(p_m) (epistemic part, ≥ 0).
- ``entropy_variance``: Var_m(H(p_m)), how much the samples disagree about uncertainty.
- ``true_class_logit``: the mean logit of the true class (needs targets).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from clap4cl.models.masking import seen_class_logits


def as_samples(logits) -> torch.Tensor:
    """(B, M, C) float64 view of (B, M, C) or (B, C) logits (arrays accepted)."""
    x = torch.as_tensor(logits).double()
    if x.dim() == 2:
        return x[:, None, :]
    if x.dim() != 3:
        raise ValueError(f"logits must be (B, C) or (B, M, C), got shape {tuple(x.shape)}")
    return x


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-300))).sum(-1)


def msp(logits) -> torch.Tensor:
    return as_samples(logits).mean(1).softmax(-1).max(-1).values


def energy(logits) -> torch.Tensor:
    return torch.logsumexp(as_samples(logits).mean(1), dim=-1)


def entropy(logits) -> torch.Tensor:
    return _entropy(as_samples(logits).mean(1).softmax(-1))


def variance(logits) -> torch.Tensor:
    return as_samples(logits).softmax(-1).var(dim=1, unbiased=False).sum(-1)


def mutual_information(logits) -> torch.Tensor:
    probs = as_samples(logits).softmax(-1)
    return (_entropy(probs.mean(1)) - _entropy(probs).mean(1)).clamp_min(0.0)


def entropy_variance(logits) -> torch.Tensor:
    return _entropy(as_samples(logits).softmax(-1)).var(dim=1, unbiased=False)


def true_class_logit(logits, targets) -> torch.Tensor:
    mean = as_samples(logits).mean(1)
    return mean.gather(1, torch.as_tensor(targets).long().view(-1, 1)).squeeze(1)


SCORES: Dict[str, Callable] = {
    "msp": msp, "energy": energy, "entropy": entropy, "variance": variance,
    "mutual_information": mutual_information, "entropy_variance": entropy_variance,
}

# Novelty scores, oriented so that higher means more in-distribution: (name, sign, score).
NOVELTY_SCORES = {
    "energy": (1.0, energy),
    "msp": (1.0, msp),
    "entropy": (-1.0, entropy),
    "variance": (-1.0, variance),
    "mutual_information": (-1.0, mutual_information),
}


# Inputs scored at a time: each score is per input, and a step's (N, M, C) logits in
# float64 with their softmax would otherwise be several times the logits' size.
SCORE_CHUNK_ROWS = 1024


def novelty_score(name: str, logits) -> torch.Tensor:
    """The in-distribution score ``name`` of NOVELTY_SCORES (higher = more in-distribution)."""
    if name not in NOVELTY_SCORES:
        raise ValueError(f"unknown novelty score {name!r}: choose one of {', '.join(NOVELTY_SCORES)}")
    sign, fn = NOVELTY_SCORES[name]
    logits = torch.as_tensor(logits)
    if len(logits) <= SCORE_CHUNK_ROWS:
        return sign * fn(logits)
    return torch.cat([sign * fn(part) for part in logits.split(SCORE_CHUNK_ROWS)])


@torch.no_grad()
def sample_logits(model, x: torch.Tensor, n_samples: Optional[int] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, M, C) Monte-Carlo logits of a model over its seen classes: M samples for
    models with ``forward_samples`` (``ClapModel``; ``n_samples`` None = its M, 0 = the
    closed-form mean as one sample, ε drawn from ``generator``), else its single output
    as M = 1 (the unseen classes' masked columns cut off, see :mod:`clap4cl.models.masking`)."""
    if hasattr(model, "forward_samples"):
        kwargs = {} if generator is None else {"generator": generator}
        return model.forward_samples(x, n_samples, **kwargs).logits.transpose(0, 1)
    return seen_class_logits(model, model(x))[:, None, :]


# The kinds of data one evaluation step draws samples for (the third key of eval_generator).
EXPERIENCE, EXTERNAL, RELIABILITY, MIXED = range(4)


def eval_seed(seed: int, step: int, kind: int, index: int = 0) -> int:
    """A 63-bit seed for the evaluation samples of (run ``seed``, ``step``, ``kind``,
    ``index``): distinct keys give independent streams, equal keys the same one."""
    import numpy as np

    keys = [int(k) for k in (seed, step, kind, index)]
    if min(keys) < 0:
        raise ValueError(f"evaluation seed keys must be >= 0, got {keys}")
    hi, lo = np.random.SeedSequence(keys).generate_state(2, np.uint32)
    return (int(hi) << 31) ^ int(lo)


def eval_generator(seed: int, step: int, kind: int, index: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`eval_seed`: evaluation draws its
    Monte-Carlo samples from it, never from the global RNG, so evaluating changes no
    training and the same model evaluated twice gives the same numbers."""
    return torch.Generator().manual_seed(eval_seed(seed, step, kind, index))
