"""Logits over every class a model knows, with the classes it has not trained on masked.

The models of the toolkit know the text of every class of the stream from the start, but
score only the classes of the experiences they have trained on. Their ``forward`` returns
logits over *all* classes, with the unseen ones set to the finite :data:`UNSEEN_LOGIT`
(as Avalanche's ``IncrementalClassifier(masking=True)``): Avalanche's standard loop can
evaluate the whole test stream, where future experiences get accuracy 0 and a finite
loss. The toolkit's own metrics, losses and selectors use the seen classes only
(:func:`seen_class_logits`), so their numbers do not depend on the stream's length.
"""
from __future__ import annotations

import torch

#: The logit of a class the model has not trained on (Avalanche's default mask value).
UNSEEN_LOGIT = -1000.0


def pad_unseen(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Seen-class logits (..., C_seen) extended to (..., n_classes) with :data:`UNSEEN_LOGIT`."""
    missing = n_classes - logits.shape[-1]
    if missing < 0:
        raise ValueError(f"{logits.shape[-1]} seen classes but only {n_classes} classes in all")
    if missing == 0:
        return logits
    fill = logits.new_full(logits.shape[:-1] + (missing,), UNSEEN_LOGIT)
    return torch.cat([logits, fill], dim=-1)


def seen_class_logits(model, logits: torch.Tensor) -> torch.Tensor:
    """The seen-class part (..., C_seen) of a model's output.

    Models with an ``n_seen_classes`` count (``ClapModel``, ``CLIPAdapterModel``,
    ``ZeroShotClassifier``) score the labels ``0 .. n_seen_classes - 1``; other outputs
    are returned as they are."""
    n_seen = getattr(model, "n_seen_classes", None)
    return logits if n_seen is None else logits[..., :n_seen]


def require_trained(n_seen: int) -> None:
    """The one-line error of a model asked for logits before it has seen any class."""
    if n_seen == 0:
        raise RuntimeError("the model has no classes yet: train on an experience first "
                           "(strategy.train(experience)) before evaluating it")
