"""The multimodal protocol: models that can predict from any subset of their modalities.

User guide: docs/multimodal-plugins.md ("The multimodal protocol"). A model encodes a
mini-batch once (``encode``), then re-runs only its cheap ``head`` for each modality
subset the plugins ask for (CML's pairs, MAR's weak subsets, the per-subset metrics):

    feats = model.encode(x)                              # {"a": (B, ...), "b": (B, ...)}
    logits = model.head(feats, present)                  # present: BoolTensor (B, M)

``softmax(head(...))`` is the model's predictive distribution over the seen classes.
:class:`MultimodalModule` supplies the defaults: the mask checks, ``canonical`` masks
under dependencies, and :func:`step_features` / :func:`step_present`, which read the
features and the modality mask of a strategy's current mini-batch.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

from clap4cl.models.modality_subsets import batch_mask


@runtime_checkable
class MultimodalClassifier(Protocol):
    """What the CML / MAR / MAD / attribution plugins and the modality metrics need."""

    modality_names: Tuple[str, ...]
    per_sample_masks: bool

    def encode(self, x) -> Dict[str, torch.Tensor]: ...

    def head(self, feats: Dict[str, torch.Tensor], present: Optional[torch.Tensor] = None, *,
             mc_samples: bool = False) -> torch.Tensor: ...


class MultimodalModule(nn.Module):
    """Base class of models that satisfy :class:`MultimodalClassifier`.

    Class attributes a subclass sets:
        modality_names: the removable components, in mask order.
        per_sample_masks: False if every row of a mask must be equal (CLAP: the VGA
            attends over the whole batch).
        requires: dependencies, e.g. ``{"guidance": {"image"}}``; :meth:`canonical`
            switches a component off when a prerequisite is absent.
        allow_empty: an all-False row is valid (a never-removable part remains, such as
            CLAP's text prototypes).
        null_mode: how each removed modality is filled (``drop``, ``zeros``, ``mean``,
            ``learned``, ``null_input``); documentation and logging only.
        bilinear_logit: the logit is bilinear in two modalities (CLIP's image · text), so
            Grad×Input shares are always equal and attribution regularisation refuses it.

    Subclasses implement ``encode`` and ``head`` (and ``embed`` for MAD / MAR on fused
    features). ``forward(x, present)`` equals ``head(encode(x), present)``. The model keeps
    no per-step state: the strategy owns the step's features and mask (see
    :func:`step_features`).
    """

    modality_names: Tuple[str, ...] = ()
    per_sample_masks: bool = True
    requires: Mapping[str, frozenset] = {}
    allow_empty: bool = False
    null_mode: Mapping[str, str] = {}
    bilinear_logit: bool = False

    @property
    def n_modalities(self) -> int:
        return len(self.modality_names)

    # ------------------------------------------------------------ to implement
    def encode(self, x) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def head(self, feats: Dict[str, torch.Tensor], present: Optional[torch.Tensor] = None, *,
             mc_samples: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, feats: Dict[str, torch.Tensor], present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The fused penultimate representation (B, D) (MAD, MAR's auxiliary head)."""
        raise NotImplementedError(f"{type(self).__name__} has no fused representation (embed); "
                                  f"use it with plugins that need only head()")

    # ------------------------------------------------------------ provided
    def forward(self, x, present: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(self.encode(x), present)

    def canonical(self, present: torch.Tensor) -> torch.Tensor:
        """``present`` with every component whose prerequisite is absent switched off."""
        present = present.clone()
        index = {n: i for i, n in enumerate(self.modality_names)}
        for _ in range(len(self.requires)):  # chains of dependencies settle in M passes
            for name, needs in self.requires.items():
                for need in needs:
                    present[:, index[name]] &= present[:, index[need]]
        return present

    def check_present(self, present: Optional[torch.Tensor], batch_size: int) -> torch.Tensor:
        """The validated, canonical (B, M) mask (all True for None)."""
        m = self.n_modalities
        if present is None:
            return batch_mask((True,) * m, batch_size)
        if present.dtype != torch.bool or tuple(present.shape) != (batch_size, m):
            raise ValueError(f"present must be a bool tensor of shape ({batch_size}, {m}) "
                             f"ordered as {self.modality_names}, got {present.dtype} "
                             f"{tuple(present.shape)}")
        if not self.per_sample_masks and not (present == present[:1]).all():
            raise ValueError(f"{type(self).__name__} accepts only batch-wide masks (every row "
                             f"equal): run each modality subset as its own pass")
        present = self.canonical(present)
        if not self.allow_empty and not present.any(1).all():
            raise ValueError("every sample needs at least one present modality")
        return present

    def full_mask(self, batch_size: int, device=None) -> torch.Tensor:
        return batch_mask((True,) * self.n_modalities, batch_size, device)


def as_multimodal(model) -> MultimodalModule:
    """``model`` if it implements the protocol, else a one-line error naming what is missing."""
    if isinstance(model, MultimodalModule) or isinstance(model, MultimodalClassifier):
        return model
    raise TypeError(f"{type(model).__name__} does not implement clap4cl.MultimodalClassifier "
                    f"(modality_names, encode, head): wrap it in a MultimodalModule")


def step_features(strategy, model=None) -> Dict[str, torch.Tensor]:
    """The features of ``strategy``'s current mini-batch.

    A strategy with ``strategies.multimodal_step.MultimodalStep`` encodes each mini-batch
    once in its ``forward`` and keeps the result in ``strategy.mb_feats`` for the plugins
    and metrics of the same step; any other strategy's batch is encoded again here.
    """
    feats = getattr(strategy, "mb_feats", None)
    if feats is not None:
        return feats
    model = as_multimodal(strategy.model if model is None else model)
    return model.encode(strategy.mb_x)


def step_present(strategy) -> Optional[torch.Tensor]:
    """The modality mask (B, M) the strategy's forward used this step (None: all present)."""
    return getattr(strategy, "mb_present", None)
