"""Shared training loop of CLAP and CLIP-Adapter: the reference's experience replay.

Memory ∪ new data go through *one* shuffled loader (not Avalanche's ReplayPlugin, which
draws separate replay mini-batches); plain SGD with a per-iteration linear warm-up then
cosine schedule; the memory is updated after the main phase of every experience.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence

import torch
from avalanche.training.templates import SupervisedTemplate
from torch.utils.data import DataLoader

from clap4cl import distributed

from strategies.exemplars import ClassBalancedMemory


def warmup_cosine(total_steps: int, warmup_steps: int, min_factor: float) -> Callable[[int], float]:
    """LR factor of step s: (s+1)/(w+1) during w warm-up steps, then cosine 1 → min_factor.

    Matches the reference schedule (docs/clap4clip.md R11): the first warm-up step is
    lr/(w+1) and the cosine part never quite reaches lr·min_factor.
    """
    cosine_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(step - warmup_steps, cosine_steps) / cosine_steps
        return min_factor + 0.5 * (1 - min_factor) * (1 + math.cos(math.pi * progress))

    return factor


class ReplayTemplate(SupervisedTemplate):
    """SupervisedTemplate with the reference's replay, optimizer and schedule.

    Subclasses choose what is trainable (``trainable_parameters``) and may add epochs
    after the main phase and the memory update (``extra_epochs`` and
    ``after_main_phase``, e.g. CLAP's finetuning). Every epoch of an experience, extra
    ones included, runs through Avalanche's epoch loop, so plugins get their
    ``before/after_training_epoch`` callbacks and ``clock.train_exp_epochs`` counts them:
    ``train_epochs`` is set per experience to ``main_epochs + extra_epochs()``.

    Under ``torchrun`` (see ``clap4cl.distributed``) training is data-parallel: each rank
    draws ``train_mb_size / world_size`` samples of every global batch from a shared
    shuffled order, the model's ``train_method`` runs through PyTorch's
    ``DistributedDataParallel`` (gradients averaged over ranks), a batch-context VGA
    attends over the whole global batch, and rank 0's memory is broadcast after every
    update, so every rank holds the same model and memory.
    """

    #: the model method a training step calls (DDP wraps it).
    train_method = "forward"

    def __init__(self, *, model, lr: float, train_epochs: int, train_mb_size: int,
                 eval_mb_size: int, warmup_fraction: float, min_lr_factor: float,
                 memory: Optional[ClassBalancedMemory], device="cpu", plugins: Sequence = (),
                 evaluator=None, **kwargs):
        if evaluator is not None:
            kwargs["evaluator"] = evaluator
        super().__init__(model=model, optimizer=None, criterion=torch.nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size, device=device, plugins=list(plugins), **kwargs)
        self.main_epochs = int(train_epochs)
        self.lr = float(lr)
        self.warmup_fraction = float(warmup_fraction)
        self.min_lr_factor = float(min_lr_factor)
        self.memory = memory
        self.scheduler = None
        self.ddp_model = None
        if distributed.is_distributed() and self.train_mb_size % distributed.world_size():
            raise ValueError(f"train_mb_size {self.train_mb_size} is the global batch: it must be "
                             f"divisible by the {distributed.world_size()} ranks")

    # -------------------------------------------------------------- data
    def train_dataset_adaptation(self, **kwargs):
        """New data concatenated with the memory (the reference's ER)."""
        data = self.experience.dataset.train()
        if self.memory is None or len(self.memory) == 0:
            self.adapted_dataset = data
        else:
            self.adapted_dataset = data.concat(self.memory.buffer.train())

    def make_train_dataloader(self, num_workers=0, shuffle=True, **kwargs):
        self.dataloader = self._shuffled_loader(self.adapted_dataset, num_workers)

    def _shuffled_loader(self, dataset, num_workers=0):
        collate = getattr(dataset, "collate_fn", None)
        if not distributed.is_distributed():
            return DataLoader(dataset, batch_size=self.train_mb_size, shuffle=True,
                              num_workers=num_workers, collate_fn=collate)
        sampler = distributed.EpochShuffledSampler(dataset)
        return DataLoader(dataset, batch_size=self.train_mb_size // distributed.world_size(),
                          sampler=sampler, num_workers=num_workers, collate_fn=collate)

    # -------------------------------------------------------------- optimisation
    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def prepare_main_phase(self) -> None:
        """Set what trains in the main phase (after the model grew for the experience)."""

    def check_model_and_optimizer(self, **kwargs):
        self.model = self.model_adaptation()
        self.prepare_main_phase()
        self.make_optimizer()
        self.train_epochs = self.main_epochs + self.extra_epochs()
        if self.main_epochs == 0:
            self.update_memory()

    def make_optimizer(self, **kwargs):
        """A fresh SGD (no momentum, no weight decay) and schedule for the main phase."""
        steps = self.main_epochs * len(self.dataloader)
        self.set_optimizer(self.lr, steps, int(self.warmup_fraction * steps))

    def set_optimizer(self, lr: float, total_steps: int, warmup_steps: int) -> None:
        params = self.trainable_parameters()
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total_steps, warmup_steps, self.min_lr_factor))
        # DDP registers the parameters that train now, so it is rebuilt with every phase.
        self.ddp_model = distributed.data_parallel(self.model, self.train_method)

    def model_forward(self, x, *args):
        """``model.<train_method>(x, *args)``; through DDP while training under torchrun."""
        if self.is_training and self.ddp_model is not None:
            return self.ddp_model(x, *args)
        return getattr(self.model, self.train_method)(x, *args)

    def forward(self):
        return self.model_forward(self.mb_x)

    def optimizer_step(self):
        super().optimizer_step()
        self.scheduler.step()

    # -------------------------------------------------------------- phases
    def training_epoch(self, **kwargs):
        """One epoch of the main phase or of the extra phase that follows it.

        The memory is updated right after the last main epoch; the first extra epoch
        starts with ``after_main_phase``. Avalanche's own ``_train_exp`` runs the loop.
        """
        epoch = self.clock.train_exp_epochs
        if epoch == self.main_epochs:
            self.after_main_phase(**kwargs)
        super().training_epoch(**kwargs)
        if epoch + 1 == self.main_epochs:
            self.update_memory()
            if self.train_epochs > self.main_epochs and self.memory is not None and not len(self.memory):
                # A fixed total memory smaller than the classes seen keeps no exemplar:
                # there is nothing to finetune on, so the extra epochs are skipped.
                warnings.warn(f"the replay memory holds no exemplar after experience "
                              f"{self.clock.train_exp_counter}: its extra epochs are skipped "
                              f"(raise memory.size to at least the number of classes)")
                self.stop_training()

    def update_memory(self) -> None:
        """Add the experience's classes to the memory (the same on every rank)."""
        if self.memory is None:
            return
        was_training = self.model.training
        self.memory.post_adapt(self, self.experience)
        self.memory.exemplars = distributed.broadcast_object(self.memory.exemplars)
        self.model.train(was_training)

    def extra_epochs(self) -> int:
        """Epochs after the main phase in the current experience (none by default)."""
        return 0

    def after_main_phase(self, **kwargs) -> None:
        """Set up the extra epochs (called once, before the first of them)."""

    # -------------------------------------------------------------- checkpoints
    def __getstate__(self):
        """Pickle state for Avalanche's ``save_checkpoint``, taken between experiences.

        The optimizer and schedule are rebuilt at the start of every phase, and the
        scheduler's patched ``optimizer.step`` cannot be pickled, so both are left out.
        """
        state = self.__dict__.copy()
        state["optimizer"] = state["scheduler"] = state["ddp_model"] = None
        return state

    def __setstate__(self, state):
        # checkpoints written before the extra epochs ran through Avalanche's loop
        state.setdefault("main_epochs", state["train_epochs"])
        self.__dict__.update(state)
