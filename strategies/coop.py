"""CoOp and CLAP + CoOp as Avalanche strategies, with the replay protocol of CLAP.

``CoOp``: only the prompt contexts train, with plain cross-entropy over all seen classes
on new data ∪ memory; SGD at lr 1e-3 (not batch-scaled), per-iteration cosine, no
warm-up; after experiences ≥ 1 the contexts that still train are finetuned on the
class-balanced memory at lr/10. ``ClapCoop``: CLAP's loss and phases, with the contexts
trainable in the main phase and (reference) in the class-balanced finetuning too.
See docs/prompt-learning.md.
"""
from __future__ import annotations

from typing import Optional, Sequence

from clap4cl.models.coop import ClapCoopModel, CoOpModel

from strategies.clap import CLAP
from strategies.exemplars import ClassBalancedMemory
from strategies.replay_template import ReplayTemplate


class CoOp(ReplayTemplate):
    """The CoOp baseline. All arguments are keyword-only; defaults are the reference's.

    Args:
        model: a :class:`clap4cl.models.coop.CoOpModel`.
        memory: the replay memory (None: no replay and no finetuning).
        train_epochs, finetune_epochs: main-phase and finetuning epochs per experience.
        lr: learning rate; finetuning uses lr · finetune_lr_factor, without warm-up.
        warmup_fraction, min_lr_factor: the main phase's schedule.
    """

    def __init__(self, *, model: CoOpModel, memory: Optional[ClassBalancedMemory] = None,
                 train_epochs: int = 5, finetune_epochs: int = 2, lr: float = 1e-3,
                 finetune_lr_factor: float = 0.1, warmup_fraction: float = 0.0,
                 min_lr_factor: float = 1e-3, train_mb_size: int = 32, eval_mb_size: int = 32,
                 device="cpu", plugins: Sequence = (), evaluator=None, **kwargs):
        if not isinstance(model, CoOpModel):
            raise TypeError(f"CoOp trains a clap4cl.models.coop.CoOpModel, got {type(model).__name__}")
        super().__init__(model=model, lr=lr, train_epochs=train_epochs,
                         train_mb_size=train_mb_size, eval_mb_size=eval_mb_size,
                         warmup_fraction=warmup_fraction, min_lr_factor=min_lr_factor,
                         memory=memory, device=device, plugins=plugins, evaluator=evaluator,
                         **kwargs)
        self.finetune_epochs = int(finetune_epochs)
        self.finetune_lr_factor = float(finetune_lr_factor)

    def prepare_main_phase(self) -> None:
        prompts = self.model.prompts
        prompts.set_trainable("newest" if prompts.expandable else "all")

    def after_main_phase(self, **kwargs) -> None:
        """Class-balanced finetuning of the contexts that train (plain cross-entropy)."""
        if self.memory is None or self.finetune_epochs == 0 or self.model.n_tasks < 2:
            return
        self.model.train()
        self.dataloader = self._shuffled_loader(self.memory.buffer.train())
        steps = self.finetune_epochs * len(self.dataloader)
        self.set_optimizer(self.lr * self.finetune_lr_factor, steps, warmup_steps=0)
        for _ in range(self.finetune_epochs):
            self.training_epoch(**kwargs)


class ClapCoop(CLAP):
    """CLAP + CoOp: the CLAP strategy on a :class:`clap4cl.models.coop.ClapCoopModel`.

    Args:
        finetune_context: train the contexts during class-balanced finetuning too (the
            reference); False keeps them fixed there.
        **kwargs: the arguments of :class:`strategies.CLAP`.
    """

    def __init__(self, *, model: ClapCoopModel, finetune_context: bool = True, **kwargs):
        if not isinstance(model, ClapCoopModel):
            raise TypeError(f"ClapCoop trains a clap4cl.models.coop.ClapCoopModel, "
                            f"got {type(model).__name__}")
        super().__init__(model=model, **kwargs)
        self.finetune_context = bool(finetune_context)

    def prepare_main_phase(self) -> None:
        super().prepare_main_phase()
        prompts = self.model.prompts
        prompts.set_trainable("newest" if prompts.expandable else "all")

    def after_main_phase(self, **kwargs) -> None:
        self.model.prompts.set_trainable("all" if self.finetune_context else "none")
        super().after_main_phase(**kwargs)
