"""The multi-encoder baseline: Avalanche's ``Naive`` with Adam on a ``MultiEncoderClassifier``."""
from __future__ import annotations

import warnings

import torch
from avalanche.training import Naive
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer

from strategies.multimodal_step import MultimodalStep


class AdamNaive(MultimodalStep, Naive):
    """``Naive`` with an Adam optimizer whose state survives a resume; its forward encodes
    each batch once and passes the step's modality mask (``MultimodalStep``).

    Avalanche keeps Adam's moments across experiences, so the run checkpoint stores its
    ``state_dict`` and the names of the parameters of each group, and loading rebuilds the
    same optimizer over the same parameters (``checkpoint_state``). The same is done for
    Avalanche's own dill checkpoints (``__getstate__``): Adam itself cannot be pickled
    with current dependencies (a ``typing_extensions`` sentinel).
    """

    def __init__(self, *, model, lr: float, **kwargs):
        super().__init__(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=lr),
                         **kwargs)
        self.lr = float(lr)

    def checkpoint_state(self) -> dict:
        """Adam's moments and which parameters each group holds (by name), for the run
        checkpoint (``clap4cl.runner.checkpoint``)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {"groups": [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups],
                "optimizer": self.optimizer.state_dict(),
                "optimizer_tracked": self.optimized_param_id is not None}

    def load_checkpoint_state(self, state: dict, datasets=None) -> None:
        """Rebuild the same Adam over the (already loaded) model's parameters."""
        params = dict(self.model.named_parameters())
        groups = [{"params": [params[n] for n in names]} for names in state["groups"]]
        self.optimizer = torch.optim.Adam(groups, lr=self.lr)
        self.optimizer.load_state_dict(state["optimizer"])
        # Avalanche resets the optimizer state when it has not tracked the parameters yet.
        self.optimized_param_id = params if state["optimizer_tracked"] else None

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


class IndexedReservoirBuffer(ReservoirSamplingBuffer):
    """Avalanche's reservoir buffer of one experience that also records which samples
    of the experience's dataset it holds (``indices``), so a checkpoint can store them."""

    def __init__(self, max_size: int):
        super().__init__(max_size)
        self.indices = []
        self.experience = None

    def update_from_dataset(self, new_data):
        if len(self._buffer_weights):
            raise RuntimeError("an IndexedReservoirBuffer holds the samples of one experience")
        new_weights = torch.rand(len(new_data))          # Avalanche's update, indices kept
        cat_weights = torch.cat([new_weights, self._buffer_weights])
        cat_data = new_data.concat(self.buffer)
        sorted_weights, sorted_idxs = cat_weights.sort(descending=True)
        buffer_idxs = sorted_idxs[: self.max_size]
        self.buffer = cat_data.subset(buffer_idxs)
        self._buffer_weights = sorted_weights[: self.max_size]
        self.indices = buffer_idxs.tolist()

    def resize(self, strategy, new_size: int):
        super().resize(strategy, new_size)
        self.indices = self.indices[: len(self.buffer)]


class IndexedExperienceBalancedBuffer(ExperienceBalancedBuffer):
    """Avalanche's ``ExperienceBalancedBuffer`` (adaptive size) of ``IndexedReservoirBuffer``s."""

    def post_adapt(self, agent, exp):
        self._num_exps += 1
        lens = self.get_group_lengths(self._num_exps)
        new_buffer = IndexedReservoirBuffer(lens[-1])
        new_buffer.experience = exp.current_experience
        new_buffer.update_from_dataset(exp.dataset)
        self.buffer_groups[self._num_exps - 1] = new_buffer
        for length, buffer in zip(lens, self.buffer_groups.values()):
            buffer.resize(agent, length)


class QuietReplayPlugin(ReplayPlugin):
    """Avalanche's ``ReplayPlugin`` (experience-balanced reservoir memory) without the
    deprecation warning that Avalanche 0.6 raises about its own storage-policy call after
    every experience, and with its memory in the run checkpoint as index lists."""

    def __init__(self, mem_size: int = 200, **kwargs):
        kwargs.setdefault("storage_policy", IndexedExperienceBalancedBuffer(mem_size))
        super().__init__(mem_size=mem_size, **kwargs)

    def checkpoint_state(self) -> dict:
        policy = self.storage_policy
        return {"num_exps": policy._num_exps,
                "groups": [{"key": key, "experience": b.experience, "max_size": b.max_size,
                            "indices": list(b.indices), "weights": b._buffer_weights.clone()}
                           for key, b in policy.buffer_groups.items()]}

    def load_checkpoint_state(self, state: dict, datasets) -> None:
        policy = self.storage_policy
        policy._num_exps = int(state["num_exps"])
        policy.buffer_groups = {}
        for group in state["groups"]:
            buffer = IndexedReservoirBuffer(int(group["max_size"]))
            buffer.experience = int(group["experience"])
            buffer.indices = [int(i) for i in group["indices"]]
            buffer.buffer = datasets[buffer.experience].subset(buffer.indices)
            buffer._buffer_weights = group["weights"]
            policy.buffer_groups[int(group["key"])] = buffer

    def after_training_exp(self, strategy, **kwargs):
        with warnings.catch_warnings(record=True):
            return super().after_training_exp(strategy, **kwargs)
