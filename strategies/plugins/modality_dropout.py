"""Modality dropout: train on random modality subsets so subset predictions are in
distribution (docs/multimodal-plugins.md). List it before the regularisers."""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
from avalanche.core import SupervisedPlugin

from clap4cl.models.modality_subsets import all_nonempty, batch_mask
from clap4cl.models.multimodal import as_multimodal

POLICIES = ("uniform_nonempty", "bernoulli")


class ModalityDropoutPlugin(SupervisedPlugin):
    """Draws a random modality mask before each training forward, for the strategy's forward.

    The mask goes to ``strategy.mb_present``, which the forward of a
    ``strategies.multimodal_step.MultimodalStep`` strategy (CLAP, the multi-encoder
    baseline, ``multimodal(AnyAvalancheStrategy)``) passes to the model as ``present``;
    the model itself is never changed. Other strategies are refused at ``before_training``.

    Args:
        policy: ``uniform_nonempty`` (each valid subset equally likely, as MMANet) or
            ``bernoulli`` (drop modality m with probability p[m]; empty rows are re-drawn
            unless the model allows them).
        p: drop probability for ``bernoulli``: one float or ``{modality: p}``.
        batch_uniform: one mask for the whole batch (forced for models with
            ``per_sample_masks = False``, e.g. CLAP). Default: per sample when allowed.
        train_only: leave evaluation untouched.
        seed: seed of the masks.
    """

    def __init__(self, policy: str = "uniform_nonempty", p: Union[None, float, Mapping[str, float]] = None,
                 batch_uniform: Optional[bool] = None, train_only: bool = True, seed: int = 0):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if policy == "bernoulli" and p is None:
            raise ValueError("policy 'bernoulli' needs p (a drop probability or {modality: p})")
        self.policy, self.p, self.batch_uniform = policy, p, batch_uniform
        self.train_only = train_only
        self.generator = torch.Generator().manual_seed(seed)

    def before_training(self, strategy, **kwargs):
        check_accepts_masks(strategy)

    def before_eval(self, strategy, **kwargs):
        if not self.train_only:
            check_accepts_masks(strategy)

    def checkpoint_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_checkpoint_state(self, state: dict, datasets=None) -> None:
        self.generator.set_state(state["generator"])

    def before_forward(self, strategy, **kwargs):
        self._set(strategy)

    def before_eval_forward(self, strategy, **kwargs):
        if self.train_only:
            strategy.mb_present = None
        else:
            self._set(strategy)

    def after_training_iteration(self, strategy, **kwargs):
        strategy.mb_present = None

    def after_eval_iteration(self, strategy, **kwargs):
        strategy.mb_present = None

    def _set(self, strategy) -> None:
        model = as_multimodal(strategy.model)
        batch = len(strategy.mb_y)
        per_sample = model.per_sample_masks and not self.batch_uniform
        mask = self.sample(model, batch if per_sample else 1).to(strategy.mb_y.device)
        strategy.mb_present = mask.expand(batch, -1).clone()

    def sample(self, model, rows: int) -> torch.Tensor:
        """(rows, M) canonical masks drawn by the policy."""
        m = model.n_modalities
        if self.policy == "uniform_nonempty":
            subsets = torch.stack([batch_mask(s, 1)[0] for s in all_nonempty(m)])
            valid = torch.unique(model.canonical(subsets), dim=0)
            if not model.allow_empty:
                valid = valid[valid.any(1)]
            return valid[torch.randint(len(valid), (rows,), generator=self.generator)]
        p = self.p if isinstance(self.p, Mapping) else {n: self.p for n in model.modality_names}
        unknown = set(p) - set(model.modality_names)
        if unknown:
            raise ValueError(f"p names {sorted(unknown)}; the model's modalities are {model.modality_names}")
        drop = torch.tensor([float(p.get(n, 0.0)) for n in model.modality_names])
        if not model.allow_empty and (drop >= 1).all():
            raise ValueError("p drops every modality with certainty: no non-empty mask remains")
        mask = torch.rand(rows, m, generator=self.generator) >= drop
        while not model.allow_empty and not mask.any(1).all():
            empty = ~mask.any(1)
            mask[empty] = torch.rand(int(empty.sum()), m, generator=self.generator) >= drop
        return model.canonical(mask)


def check_accepts_masks(strategy) -> None:
    """A one-line error unless the strategy's forward passes ``mb_present`` to the model."""
    if not getattr(strategy, "accepts_modality_masks", False):
        name = type(strategy).__name__
        raise TypeError(f"ModalityDropoutPlugin needs a strategy whose forward passes the mask "
                        f"to the model; {name} does not: use "
                        f"strategies.multimodal_step.multimodal({name})")
