"""The CLIP-Adapter baseline: the reference's replay and schedule, image-side adapter only."""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F

from clap4cl.models.adapter import CLIPAdapterModel
from clap4cl.models.masking import seen_class_logits

from strategies.exemplars import ClassBalancedMemory
from strategies.replay_template import ReplayTemplate


class CLIPAdapter(ReplayTemplate):
    """Trains a ``CLIPAdapterModel`` with cross-entropy on new data ∪ memory.

    SGD with cosine decay to lr·min_lr_factor and no warm-up (the reference baseline:
    lr 1e-3, not scaled by the batch size). All arguments are keyword-only.
    """

    def __init__(self, *, model: CLIPAdapterModel, memory: Optional[ClassBalancedMemory] = None,
                 train_epochs: int = 5, lr: float = 1e-3, min_lr_factor: float = 1e-3,
                 train_mb_size: int = 32, eval_mb_size: int = 32, device="cpu",
                 plugins: Sequence = (), evaluator=None, **kwargs):
        if not isinstance(model, CLIPAdapterModel):
            raise TypeError(f"CLIPAdapter trains a clap4cl.CLIPAdapterModel, got {type(model).__name__}")
        super().__init__(model=model, lr=lr, train_epochs=train_epochs, train_mb_size=train_mb_size,
                         eval_mb_size=eval_mb_size, warmup_fraction=0.0, min_lr_factor=min_lr_factor,
                         memory=memory, device=device, plugins=plugins, evaluator=evaluator, **kwargs)

    def criterion(self):
        """Cross-entropy over the seen classes in training; over the model's whole
        (masked) output in evaluation, finite on future experiences too."""
        if self.is_training:
            return F.cross_entropy(seen_class_logits(self.model, self.mb_output), self.mb_y)
        return F.cross_entropy(self.mb_output, self.mb_y)
