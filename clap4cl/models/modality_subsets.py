"""Modality subsets and the (superset, subset) pairs that CML and the metrics compare.

A subset is a tuple of booleans in the order of a model's ``modality_names`` (True =
the modality is present). Masks handed to a model are ``BoolTensor`` s of shape (B, M).
"""
from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from clap4cl.models.choices import PAIR_POLICIES

Subset = Tuple[bool, ...]
Pair = Tuple[torch.Tensor, torch.Tensor]


def full(m: int) -> Subset:
    return (True,) * m


def all_nonempty(m: int) -> List[Subset]:
    """Every subset with at least one modality, largest first."""
    subsets = [s for s in itertools.product((True, False), repeat=m) if any(s)]
    return sorted(subsets, key=lambda s: -sum(s))


def leave_one_out(m: int) -> List[Tuple[Subset, Subset]]:
    """(full, full without modality i) for each i."""
    return [(full(m), tuple(j != i for j in range(m))) for i in range(m)]


def all_nested(m: int, allow_empty: bool = False) -> List[Tuple[Subset, Subset]]:
    """Every (S, S without one modality) with S non-empty (and the result non-empty
    unless ``allow_empty``)."""
    pairs = []
    for s in all_nonempty(m):
        for i in range(m):
            if s[i]:
                t = tuple(v and j != i for j, v in enumerate(s))
                if any(t) or allow_empty:
                    pairs.append((s, t))
    return pairs


def batch_mask(subset: Subset, batch_size: int, device=None) -> torch.Tensor:
    """The (B, M) mask in which every row is ``subset``."""
    return torch.tensor(subset, dtype=torch.bool, device=device).expand(batch_size, -1).clone()


def nested_chain(m: int, batch_size: int, *, per_sample: bool = True,
                 generator: Optional[torch.Generator] = None,
                 allow_empty: bool = False, device=None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The CML reference's scheme: a random drop order per sample (or one per batch),
    input k drops the first k modalities of it; consecutive inputs form the pairs.

    Returns M-1 pairs of (B, M) masks (M pairs with ``allow_empty``).
    """
    rows = batch_size if per_sample else 1
    order = torch.stack([torch.randperm(m, generator=generator) for _ in range(rows)])
    order = order.expand(batch_size, -1)
    masks = []
    for k in range(m + 1 if allow_empty else m):
        mask = torch.ones(batch_size, m, dtype=torch.bool)
        mask.scatter_(1, order[:, :k], False)
        masks.append(mask.to(device))
    return list(zip(masks[:-1], masks[1:]))


def subset_name(subset: Subset, names: Sequence[str]) -> str:
    """``"a+b"``, or ``"none"`` for the empty subset."""
    return "+".join(n for n, present in zip(names, subset) if present) or "none"


def policy_pairs(policy: str, m: int, batch_size: int, *, allow_empty: bool = False,
                 per_sample: bool = True, generator=None, device=None,
                 canonical: Callable[[torch.Tensor], torch.Tensor] = lambda mask: mask) -> List[Pair]:
    """The (superset mask, subset mask) pairs of a pair policy, as (B, M) masks.

    ``canonical`` maps a mask onto the model's valid masks (e.g. no guidance without an
    image); pairs whose subset is then equal to the superset are dropped.
    """
    if policy == "nested_chain":
        pairs = nested_chain(m, batch_size, per_sample=per_sample, generator=generator,
                             allow_empty=allow_empty, device=device)
    elif policy in ("leave_one_out", "all_nested"):
        subsets = leave_one_out(m) if policy == "leave_one_out" else all_nested(m, allow_empty)
        pairs = [(batch_mask(s, batch_size, device), batch_mask(t, batch_size, device))
                 for s, t in subsets]
    else:
        raise ValueError(f"pairs must be one of {PAIR_POLICIES}, got {policy!r}")
    out, seen = [], set()
    for s, t in pairs:
        s, t = canonical(s), canonical(t)
        key = (s.cpu().numpy().tobytes(), t.cpu().numpy().tobytes())
        if not torch.equal(s, t) and (allow_empty or t.any(1).all()) and key not in seen:
            seen.add(key)
            out.append((s, t))
    return out
