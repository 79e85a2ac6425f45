"""Replay memory with a per-class budget and pluggable exemplar selection.

:class:`ClassBalancedMemory` is an Avalanche storage policy (``ExemplarsBuffer``) on its
current API: ``post_adapt(agent, experience)`` adds an experience, ``resize`` changes the
budget and ``buffer`` is the memory as one dataset (the ``update`` Avalanche 0.6 marks
deprecated is not used). The selectors (``strategies.selectors``) follow Avalanche's
``ExemplarsSelectionStrategy`` interface, so the same selector works with Avalanche's
``ParametricBuffer`` and with this memory. The memory records each exemplar as
(experience id, index) into that experience's dataset rather than as a copied dataset.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from avalanche.benchmarks.utils import concat_datasets
from avalanche.training.storage_policy import (ExemplarsBuffer, ExemplarsSelectionStrategy,
                                               RandomExemplarsSelectionStrategy)

from strategies.choices import MEMORY_POLICIES as POLICIES


class ClassBalancedMemory(ExemplarsBuffer):
    """Exemplars of every seen class, k per class.

    Args:
        policy: ``fixed_total`` (k = ⌊size / n_seen_classes⌋, the reference's CIFAR-100
            setting) or ``per_class`` (k = per_class, a growing total).
        size: total budget for ``fixed_total``.
        per_class: k for ``per_class``.
        selector: an ``ExemplarsSelectionStrategy``; old classes are re-selected from
            their previous exemplars, new classes from all their training samples.
    """

    def __init__(self, policy: str = "fixed_total", size: int = 2000, per_class: int = 20,
                 selector: Optional[ExemplarsSelectionStrategy] = None):
        if policy not in POLICIES:
            raise ValueError(f"memory policy must be one of {POLICIES}, got {policy!r}")
        super().__init__(max_size=int(size) if policy == "fixed_total" else 0)
        self.policy = policy
        self.size = int(size)
        self.per_class = int(per_class)
        self.selector = selector or RandomExemplarsSelectionStrategy()
        self.exemplars: Dict[int, Tuple[int, List[int]]] = {}
        self._datasets: Dict[int, object] = {}

    def class_budget(self, n_classes: int) -> int:
        """Exemplars kept per class when ``n_classes`` classes have been seen."""
        if self.policy == "per_class":
            return self.per_class
        return self.size // max(1, n_classes)

    def __len__(self) -> int:
        return sum(len(idx) for _, idx in self.exemplars.values())

    def post_adapt(self, agent_state, exp) -> None:
        """Add the classes of experience ``exp`` and shrink every class to its budget;
        ``agent_state`` (the strategy) is what the selector scores exemplars with."""
        exp_id = exp.current_experience
        dataset = exp.dataset
        self._datasets[exp_id] = dataset
        targets = torch.as_tensor(list(dataset.targets))
        for c in torch.unique(targets).tolist():
            if c not in self.exemplars:
                self.exemplars[c] = (exp_id, (targets == c).nonzero().squeeze(1).tolist())
        self._select(agent_state)

    def resize(self, strategy, new_size: int) -> None:
        """A new total budget (``fixed_total``) or ``new_size`` split over the seen classes
        (``per_class``), applied at once."""
        if self.policy == "fixed_total":
            self.size = int(new_size)
        else:
            self.per_class = int(new_size) // max(1, len(self.exemplars))
        self._select(strategy)

    def _select(self, strategy) -> None:
        budget = self.class_budget(len(self.exemplars))
        for c, (e, indices) in self.exemplars.items():
            order = self.selector.make_sorted_indices(strategy, self._datasets[e].subset(indices))
            self.exemplars[c] = (e, [indices[i] for i in order[:budget]])
        self.max_size = budget * len(self.exemplars) if self.policy == "per_class" else self.size

    @property
    def buffer(self):
        """The exemplars as one Avalanche dataset (empty before the first experience)."""
        parts = [self._datasets[e].subset(idx) for _, (e, idx) in sorted(self.exemplars.items())]
        return concat_datasets(parts)

    # -------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict:
        """The exemplars as (class, experience, indices into that experience's dataset)."""
        return {"exemplars": [[c, e, list(idx)] for c, (e, idx) in self.exemplars.items()]}

    def load_checkpoint_state(self, state: dict, datasets: Dict[int, object]) -> None:
        """Restore :meth:`checkpoint_state`; ``datasets``: experience -> training dataset."""
        self.exemplars = {int(c): (int(e), [int(i) for i in idx]) for c, e, idx in state["exemplars"]}
        self._datasets = dict(datasets)
