"""CLAP4CLIP as an Avalanche strategy (docs/clap4clip.md, R9 and R11-R15).

Per experience: the model grows a language-initialised head; the VGA and the newest head
train on new data ∪ memory with L = CE (over all M·B sample rows) + kl_weight·KL +
β·language loss, regularising the current task's head; the memory is re-selected; then
(from the second experience on) the heads are finetuned on the class-balanced memory
with the VGA frozen, regularising every task.

Head freezing is this strategy's rule, set per phase here; the model itself leaves every
head trainable by default (``ClapModel(freeze_old_heads=False)``) for stock strategies.
The step's output (``mb_output``) covers every class of the stream with the unseen ones
masked, so ``strategy.eval(bench.test_stream)`` evaluates the whole stream; the loss, the
sample logits of the toolkit's metrics and the selectors use the seen classes only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from clap4cl.models.clap import ClapModel, ClapOutput, kl_loss, language_loss
from clap4cl.models.masking import pad_unseen

from strategies.exemplars import ClassBalancedMemory
from strategies.multimodal_step import MultimodalStep
from strategies.replay_template import ReplayTemplate


class CLAP(MultimodalStep, ReplayTemplate):
    """The CLAP strategy. All arguments are keyword-only; defaults are the reference's.

    Args:
        model: a ``clap4cl.ClapModel`` (its ``mc_samples`` is M).
        memory: the replay memory (None: no replay and no finetuning).
        train_epochs: main-phase epochs per experience.
        finetune_epochs: class-balanced finetuning epochs after experiences ≥ 1.
        lr: base learning rate lr0; finetuning uses lr0 · finetune_lr_factor.
        warmup_fraction, min_lr_factor: the main phase's schedule (finetuning: no warm-up).
        beta: weight of the language-aware regulariser.
        kl_weight: weight of KL(q ‖ N(0, I)) (ignored by deterministic heads).
        regularize_all_tasks: regularise every head in the main phase too (reference:
            only the current one).
        train_mb_size, eval_mb_size: batch sizes (the training batch is the VGA context).
    """

    train_method = "sample"

    def __init__(self, *, model: ClapModel, memory: Optional[ClassBalancedMemory] = None,
                 train_epochs: int = 5, finetune_epochs: int = 2, lr: float = 1.6e-3,
                 finetune_lr_factor: float = 0.1, warmup_fraction: float = 0.3,
                 min_lr_factor: float = 1e-3, beta: float = 15.0, kl_weight: float = 1e-3,
                 regularize_all_tasks: bool = False, train_mb_size: int = 32,
                 eval_mb_size: int = 32, device="cpu", plugins: Sequence = (), evaluator=None,
                 **kwargs):
        if not isinstance(model, ClapModel):
            raise TypeError(f"CLAP trains a clap4cl.ClapModel, got {type(model).__name__}")
        super().__init__(model=model, lr=lr, train_epochs=train_epochs,
                         train_mb_size=train_mb_size, eval_mb_size=eval_mb_size,
                         warmup_fraction=warmup_fraction, min_lr_factor=min_lr_factor,
                         memory=memory, device=device, plugins=plugins, evaluator=evaluator,
                         **kwargs)
        self.finetune_epochs = int(finetune_epochs)
        self.finetune_lr_factor = float(finetune_lr_factor)
        self.beta = float(beta)
        self.kl_weight = float(kl_weight)
        self.regularize_all_tasks = regularize_all_tasks
        self.regularized_tasks = []
        self.finetuning = False
        self.clap_output = None
        self.mb_sample_logits = None

    # -------------------------------------------------------------- phases
    def prepare_main_phase(self) -> None:
        """VGA and the newest head train; the newest (or every) head is regularised."""
        model = self.model
        newest = model.heads.n_tasks - 1
        model.heads.set_trainable([newest])
        if model.vga is not None:
            model.vga.requires_grad_(True)
            model.vga.train(model.training)
        self.finetuning = False
        self.regularized_tasks = list(range(newest + 1)) if self.regularize_all_tasks else [newest]

    def extra_epochs(self) -> int:
        """``finetune_epochs`` from the second experience on (with a memory), else 0."""
        if self.memory is None or self.finetune_epochs == 0 or self.model.heads.n_tasks < 2:
            return 0
        return self.finetune_epochs

    def after_main_phase(self, **kwargs) -> None:
        """Start class-balanced finetuning: memory only, VGA frozen (eval mode), all heads
        train, at lr0 · finetune_lr_factor without warm-up. Its epochs are Avalanche
        epochs of the experience (after the main ones); the next experience's
        ``prepare_main_phase`` unfreezes the VGA again."""
        model = self.model
        if model.vga is not None:
            model.vga.requires_grad_(False)
            model.vga.eval()
        n_tasks = model.heads.n_tasks
        model.heads.set_trainable(range(n_tasks))
        self.finetuning = True
        self.regularized_tasks = list(range(n_tasks))
        self.dataloader = self._shuffled_loader(self.memory.buffer.train())
        steps = self.finetune_epochs * len(self.dataloader)
        self.set_optimizer(self.lr * self.finetune_lr_factor, steps, warmup_steps=0)

    # -------------------------------------------------------------- step
    def forward(self):
        """Mean-over-samples logits over every class (unseen ones masked), (B, C_all); the
        M seen-class samples stay in ``clap_output`` (and, in evaluation, in
        ``mb_sample_logits`` (B, M, C_seen) for the toolkit's metrics).

        The batch is encoded once (``mb_feats``, for the plugins of the step) and sampled
        with the step's modality mask ``mb_present``."""
        if self.model.n_seen_classes == 0:     # Avalanche's evaluation before the first experience
            self.mb_feats, self.clap_output, self.mb_sample_logits = None, None, None
            return self.model(self.mb_x)       # every class masked (see clap4cl.models.masking)
        self.mb_feats = self.model.encode(self.mb_x)
        self.clap_output = self.model_forward(self.mb_feats["image"], self.mb_present)
        if not self.is_training:
            self.mb_sample_logits = self.clap_output.logits.detach().transpose(0, 1)
        return pad_unseen(self.clap_output.mean_logits, self.model.n_classes)

    def criterion(self):
        if not self.is_training:
            return F.cross_entropy(self.mb_output, self.mb_y)   # finite on future classes too
        return clap_loss(self.model, self.clap_output, self.mb_y, self.regularized_tasks,
                         beta=self.beta, kl_weight=self.kl_weight)


def clap_loss(model: ClapModel, out: ClapOutput, targets: torch.Tensor, tasks: Sequence[int], *,
              beta: float, kl_weight: float) -> torch.Tensor:
    """L = CE over all M·B sample rows + kl_weight·KL + β·language loss, over ``tasks``."""
    n_samples = out.logits.shape[0]
    loss = F.cross_entropy(out.logits.flatten(0, 1), targets.repeat(n_samples))
    task_of_class = model.task_of_class()
    if out.sigma is not None and kl_weight:
        loss = loss + kl_weight * kl_loss(out.mu, out.sigma, task_of_class, tasks)
    if beta:
        text_mean = model.text_mean[: model.n_seen_classes]
        loss = loss + beta * language_loss(text_mean, out.z_mean, task_of_class, tasks)
    return loss
