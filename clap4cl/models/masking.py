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

from typing import List

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


NOT_TRAINED = ("the model has no classes yet: train on an experience first "
               "(strategy.train(experience)) before evaluating it")


def require_trained(n_seen: int) -> None:
    """The one-line error of a model asked for logits before it has seen any class."""
    if n_seen == 0:
        raise RuntimeError(NOT_TRAINED)


#: Avalanche stream names (prefixes) whose experiences never add classes to a model.
EVALUATION_STREAMS = ("test", "valid", "eval")


def learns_classes_from(model, experience) -> bool:
    """Whether ``model.adaptation(experience)`` may add the experience's classes: in train
    mode, and not from an evaluation stream. (Avalanche's GDumb adapts the initial model it
    keeps, which stays in train mode, to every evaluated experience; the classes of a
    future test experience must not become seen that way.)"""
    if not model.training:
        return False
    name = getattr(getattr(experience, "origin_stream", None), "name", None)
    return not (isinstance(name, str) and name.startswith(EVALUATION_STREAMS))


def new_classes(experience, n_seen: int) -> List[int]:
    """The labels of ``experience`` a model with ``n_seen`` classes (``0 .. n_seen - 1``)
    does not score yet, sorted."""
    return sorted({int(c) for c in experience.classes_in_this_experience} - set(range(n_seen)))


class MaskedLogitsMixin:
    """For ``nn.Module`` models with a ``class_features`` buffer (one row per class; or
    their own ``n_classes``) and an ``n_seen_classes`` count: the width of the output and
    the output before training.

    A model that has not trained on any experience has no classes to score. Asked for
    logits directly (``strategy.eval`` before any ``strategy.train``) it raises a one-line
    ``RuntimeError``. Inside a training call (after ``model.train()``, which every
    Avalanche ``strategy.train`` does first) it returns every class masked: Avalanche's
    periodic evaluation (``eval_every >= 0``, ``eval_streams=[...]``) evaluates before the
    first experience, and then sees a constant prediction, as from a fresh
    ``IncrementalClassifier(masking=True)``.
    """

    _training_started = False

    @property
    def n_classes(self) -> int:
        """Every class the model has text for: the width of ``forward``'s logits."""
        return self.class_features.shape[0]

    def train(self, mode: bool = True):
        if mode:
            self._training_started = True
        return super().train(mode)

    def untrained_logits(self, batch_size: int) -> torch.Tensor:
        """(B, C_all) of ``UNSEEN_LOGIT`` inside a training call; else the one-line error."""
        if not self._training_started:
            raise RuntimeError(NOT_TRAINED)
        like = next(self.buffers(), None)
        if like is None:
            like = next(self.parameters())
        return like.new_full((batch_size, self.n_classes), UNSEEN_LOGIT, dtype=torch.float32)
