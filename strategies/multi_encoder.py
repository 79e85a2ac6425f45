"""The multi-encoder baseline: Avalanche's ``Naive`` with Adam on a ``MultiEncoderClassifier``."""
from __future__ import annotations

import warnings

import torch
from avalanche.training import Naive
from avalanche.training.plugins import ReplayPlugin

from strategies.multimodal_step import MultimodalStep


class AdamNaive(MultimodalStep, Naive):
    """``Naive`` with an Adam optimizer that survives Avalanche's dill checkpoints; its
    forward encodes each batch once and passes the step's modality mask (``MultimodalStep``).

    Adam itself cannot be pickled with current dependencies (a ``typing_extensions``
    sentinel), so a checkpoint stores its ``state_dict`` and the names of the parameters
    of each group; loading rebuilds the same optimizer over the same parameters (Avalanche
    keeps Adam's moments across experiences, so they must survive a resume).
    """

    def __init__(self, *, model, lr: float, **kwargs):
        super().__init__(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=lr),
                         **kwargs)
        self.lr = float(lr)

    def __getstate__(self):
        state = super().__getstate__()
        names = {id(p): n for n, p in self.model.named_parameters()}
        state["optimizer"] = {
            "groups": [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups],
            "state_dict": self.optimizer.state_dict()}
        return state

    def __setstate__(self, state):
        saved = state["optimizer"]
        self.__dict__.update(state)
        params = dict(self.model.named_parameters())
        groups = [{"params": [params[n] for n in names]} for names in saved["groups"]]
        self.optimizer = torch.optim.Adam(groups, lr=self.lr)
        self.optimizer.load_state_dict(saved["state_dict"])


class QuietReplayPlugin(ReplayPlugin):
    """Avalanche's ``ReplayPlugin`` without the deprecation warning that Avalanche 0.6
    raises about its own storage-policy call after every experience."""

    def after_training_exp(self, strategy, **kwargs):
        with warnings.catch_warnings(record=True):
            return super().after_training_exp(strategy, **kwargs)
