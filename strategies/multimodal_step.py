"""Strategies that own their mini-batch's multimodal features and modality mask.

The multimodal plugins (``ModalityDropoutPlugin``, CML, MAR, MAD, attribution) and the
modality metrics need, within one training or evaluation step, the features of the
mini-batch and the modality mask the forward pass used. A :class:`MultimodalStep`
strategy keeps both as step state:

- ``mb_present``: the (B, M) mask for this step's forward, written by
  ``ModalityDropoutPlugin`` in ``before_forward`` (None: every modality present);
- ``mb_feats``: ``model.encode(mb_x)``, computed once by ``forward``, which then calls
  ``model.head(mb_feats, mb_present)``; plugins and metrics read it through
  ``clap4cl.models.multimodal.step_features``, so the encoders run once per step.

Any Avalanche strategy takes the mixin: ``multimodal(LwF)(model=..., ...)``;
:class:`MultimodalNaive` is ``multimodal(Naive)``.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from avalanche.training import Naive

from clap4cl.models.multimodal import as_multimodal


class MultimodalStep:
    """Mixin (list it first) making a strategy's forward ``head(encode(mb_x), mb_present)``."""

    #: ``ModalityDropoutPlugin`` refuses strategies whose forward ignores ``mb_present``.
    accepts_modality_masks = True
    mb_present: Optional[torch.Tensor] = None
    mb_feats: Optional[Dict[str, torch.Tensor]] = None

    def forward(self):
        model = as_multimodal(self.model)
        self.mb_feats = model.encode(self.mb_x)
        return model.head(self.mb_feats, self.mb_present)

    def __getstate__(self):
        """Checkpoints (taken between experiences) leave the last step's state out."""
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent is not None else self.__dict__)
        state.pop("mb_feats", None)
        state.pop("mb_present", None)
        return state


_MIXED: Dict[type, type] = {}


def multimodal(strategy_class: type) -> type:
    """``strategy_class`` with :class:`MultimodalStep` mixed in, e.g. ``multimodal(Naive)``.

    The class is registered in this module as ``Multimodal<Name>``, so checkpoints of its
    instances unpickle in a process that made the same call (:class:`MultimodalNaive`
    always does).
    """
    if issubclass(strategy_class, MultimodalStep):
        return strategy_class
    if strategy_class not in _MIXED:
        name = f"Multimodal{strategy_class.__name__}"
        mixed = type(name, (MultimodalStep, strategy_class),
                     {"__module__": __name__, "__qualname__": name,
                      "__doc__": f"``{strategy_class.__name__}`` with :class:`MultimodalStep`."})
        _MIXED[strategy_class] = globals()[name] = mixed
    return _MIXED[strategy_class]


MultimodalNaive = multimodal(Naive)
