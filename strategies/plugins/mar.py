"""MAR, MMANet's modality-aware regularisation (Wei, Luo, Luo, CVPR 2023).

User guide: docs/multimodal-plugins.md (MARPlugin). In the mining epochs the
model is evaluated with each candidate modality subset on a split held out from the
current experience's *training* data (never test data); the subsets whose predictions
differ most from the full-modality ones are the weak combinations. From ``begin_epoch``
on, samples whose dropout mask is weak get an auxiliary cross-entropy, a true masked
mean Σ_i sel_i·CE_i / B (the reference multiplies the full-batch mean by the number of
weak samples, a broadcasting bug). Needs ``ModalityDropoutPlugin`` (listed first).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from clap4cl.models.modality_subsets import Subset, all_nonempty, batch_mask, full, leave_one_out
from clap4cl.models.multimodal import as_multimodal, step_present

from strategies.plugins.cml import predictive_log_probs
from strategies.plugins.regularizer import RegularizerPlugin, step_features

SCORES = ("accuracy_gap", "nll_gap", "label_hist_kl")
CANDIDATES = ("leave_one_out+full", "all_nonempty")


def masked_mean_ce(logits: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Σ_i sel_i · CE_i / B: the auxiliary loss on the weak-mask samples (0 if none)."""
    per_sample = F.cross_entropy(predictive_log_probs(logits), targets, reduction="none")
    return (per_sample * selected.to(per_sample.dtype)).sum() / len(targets)


def discrepancy(score: str, full_stats: Dict[str, np.ndarray], stats: Dict[str, np.ndarray]) -> float:
    """How much worse a subset's held-out predictions are than the full set's.

    ``accuracy_gap`` = acc_full − acc_sub; ``nll_gap`` = NLL_sub − NLL_full;
    ``label_hist_kl`` = KL(h_sub ‖ h_full) of the predicted-label histograms (the paper's
    score, without the reference's second softmax over the histograms)."""
    if score == "accuracy_gap":
        return float(full_stats["accuracy"] - stats["accuracy"])
    if score == "nll_gap":
        return float(stats["nll"] - full_stats["nll"])
    if score == "label_hist_kl":
        h_sub, h_full = stats["hist"] + 1e-8, full_stats["hist"] + 1e-8
        h_sub, h_full = h_sub / h_sub.sum(), h_full / h_full.sum()
        return float((h_sub * np.log(h_sub / h_full)).sum())
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def weak_set(scores: Dict[Subset, float], top_k: int = 1, expand_to_subsets: bool = True) -> Set[Subset]:
    """The ``top_k`` highest-scoring subsets, plus their non-empty subsets if asked."""
    chosen = sorted(scores, key=lambda s: -scores[s])[:top_k]
    weak = set(chosen)
    if expand_to_subsets:
        for s in chosen:
            weak |= {t for t in all_nonempty(len(s)) if all(a or not b for a, b in zip(s, t))}
    return weak


class MARPlugin(RegularizerPlugin):
    """Mines the weak modality subsets, then trains an auxiliary head on them.

    Args:
        weight: λ_MAR.
        aux_head: module on ``model.embed(feats, present)``; None = the model's own head.
            Register it as a submodule of the model so the strategy's optimiser sees it.
        candidates: ``leave_one_out+full`` (the reference; with 2 modalities: the
            singletons), ``all_nonempty`` or an explicit list of subsets (bool tuples).
        mining_epochs: (first, last) epoch, 1-based and inclusive, that is scored.
        begin_epoch: after this many epochs the weak set is chosen and the term starts.
        score: ``accuracy_gap`` (default), ``nll_gap`` or ``label_hist_kl``.
        expand_to_subsets: add the non-empty subsets of the chosen combinations.
        top_k: number of combinations chosen.
        holdout: fraction of the experience's training data held out for mining.
        per_experience: mine again in every experience (else only in the first).
        eval_mb_size: batch size of the mining passes.
        seed: seed of the held-out split.
    """

    name = "mar"

    def __init__(self, weight: float = 1.0, aux_head: Optional[nn.Module] = None,
                 candidates: Union[str, Sequence[Subset]] = "leave_one_out+full",
                 mining_epochs: Tuple[int, int] = (1, 4), begin_epoch: int = 4,
                 score: str = "accuracy_gap", expand_to_subsets: bool = True, top_k: int = 1,
                 holdout: float = 0.1, per_experience: bool = True, eval_mb_size: int = 256,
                 seed: int = 0):
        super().__init__(weight, start_epoch=0)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if isinstance(candidates, str) and candidates not in CANDIDATES:
            raise ValueError(f"candidates must be one of {CANDIDATES} or a list of subsets")
        if not 0 < holdout < 1:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
        if begin_epoch < mining_epochs[1]:
            raise ValueError(f"begin_epoch {begin_epoch} is before the last mining epoch {mining_epochs[1]}")
        self.aux_head, self.candidates, self.score = aux_head, candidates, score
        self.mining_epochs, self.begin_epoch = tuple(mining_epochs), int(begin_epoch)
        self.expand_to_subsets, self.top_k = expand_to_subsets, int(top_k)
        self.holdout, self.per_experience = float(holdout), per_experience
        self.eval_mb_size, self.seed = int(eval_mb_size), int(seed)
        self.weak: Optional[Set[Subset]] = None
        self.scores: Dict[Subset, float] = {}
        self.history: List[Dict[str, object]] = []
        self.heldout = None
        self.split_sizes = None
        self._epoch = 0
        self._mined_once = False

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        """What carries over between experiences: the weak set, its scores and history
        (the held-out split is rebuilt in every experience)."""
        return {"weak": None if self.weak is None else sorted(self.weak),
                "scores": [[list(s), v] for s, v in self.scores.items()],
                "history": [{"experience": h["experience"],
                             "scores": [[list(s), v] for s, v in h["scores"].items()],
                             "weak": [list(s) for s in h["weak"]]} for h in self.history],
                "mined_once": self._mined_once, "epoch": self._epoch,
                "split_sizes": self.split_sizes}

    def load_checkpoint_state(self, state: dict, datasets=None) -> None:
        subset = lambda s: tuple(bool(v) for v in s)  # noqa: E731
        self.weak = None if state["weak"] is None else {subset(s) for s in state["weak"]}
        self.scores = {subset(s): float(v) for s, v in state["scores"]}
        self.history = [{"experience": h["experience"],
                         "scores": {subset(s): float(v) for s, v in h["scores"]},
                         "weak": [subset(s) for s in h["weak"]]} for h in state["history"]]
        self._mined_once, self._epoch = bool(state["mined_once"]), int(state["epoch"])
        self.split_sizes = state["split_sizes"]
        self.heldout = None

    # ------------------------------------------------------------ mining
    def candidate_subsets(self, model) -> List[Subset]:
        """The candidates as canonical masks of ``model``, without the full set."""
        m = model.n_modalities
        if not isinstance(self.candidates, str):
            raw = [tuple(bool(v) for v in s) for s in self.candidates]
        elif self.candidates == "all_nonempty":
            raw = all_nonempty(m)
        else:
            raw = [t for _, t in leave_one_out(m)]
        masks = model.canonical(torch.tensor(raw, dtype=torch.bool))
        subsets = [tuple(bool(v) for v in row) for row in masks]
        return [s for s in dict.fromkeys(subsets) if s != full(m)]

    def mining(self) -> bool:
        return self.per_experience or not self._mined_once

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        """Split the held-out mining data off the experience's training data."""
        if not self.mining():
            return
        data = strategy.adapted_dataset
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(
            self.seed + strategy.clock.train_exp_counter)).tolist()
        n_held = max(1, int(round(self.holdout * len(data))))
        self.heldout = data.subset(order[:n_held]).eval()
        strategy.adapted_dataset = data.subset(sorted(order[n_held:]))
        self.split_sizes = {"train": len(data) - n_held, "heldout": n_held}

    def before_training_exp(self, strategy, **kwargs):
        self._epoch = 0
        if self.mining():
            self.weak, self.scores = None, {}

    def after_training_epoch(self, strategy, **kwargs):
        self._epoch += 1
        if self.weak is not None or self.heldout is None:
            return
        first, last = self.mining_epochs
        if first <= self._epoch <= last:
            stats = self.evaluate_subsets(strategy)
            full_stats = stats[full(len(next(iter(stats))))]
            for s, st in stats.items():
                if s != full(len(s)):
                    self.scores[s] = self.scores.get(s, 0.0) + discrepancy(self.score, full_stats, st)
        if self._epoch >= self.begin_epoch and self.scores:
            self.weak = weak_set(self.scores, self.top_k, self.expand_to_subsets)
            self._mined_once = True
            self.history.append({"experience": strategy.clock.train_exp_counter,
                                 "scores": dict(self.scores), "weak": sorted(self.weak)})

    def after_training_exp(self, strategy, **kwargs):
        self.heldout = None          # data of this experience: not kept in checkpoints

    @torch.no_grad()
    def evaluate_subsets(self, strategy) -> Dict[Subset, Dict[str, np.ndarray]]:
        """Accuracy, NLL and predicted-label histogram of each candidate and the full set
        on the held-out split (eval mode, restored afterwards)."""
        model = as_multimodal(strategy.model)
        subsets = [full(model.n_modalities)] + self.candidate_subsets(model)
        was_training = model.training
        model.eval()
        logp = {s: [] for s in subsets}
        targets = []
        try:
            for batch in DataLoader(self.heldout, batch_size=self.eval_mb_size):
                x, y = batch[0].to(strategy.device), batch[1].to(strategy.device)
                feats = model.encode(x)
                for s in subsets:
                    logp[s].append(predictive_log_probs(model.head(feats, batch_mask(s, len(y), y.device))))
                targets.append(y)
        finally:
            model.train(was_training)
        y = torch.cat(targets)
        out = {}
        for s, parts in logp.items():
            lp = torch.cat(parts)
            pred = lp.argmax(1)
            out[s] = {"accuracy": (pred == y).double().mean().numpy(),
                      "nll": F.nll_loss(lp, y).double().numpy(),
                      "hist": np.bincount(pred.cpu().numpy(), minlength=lp.shape[1]).astype(float)}
        return out

    # ------------------------------------------------------------ the term
    def active(self, strategy) -> bool:
        return self.weak is not None

    def term(self, strategy) -> torch.Tensor:
        model, feats = step_features(strategy)
        present = step_present(strategy)
        targets = strategy.mb_y
        if present is None:
            return targets.new_zeros((), dtype=torch.float)
        weak = torch.tensor(sorted(self.weak), dtype=torch.bool, device=present.device)  # (W, M)
        selected = (present[:, None, :] == weak[None]).all(-1).any(-1)              # (B,)
        if not selected.any():
            return targets.new_zeros((), dtype=torch.float)
        if self.aux_head is None:
            logits = model.head(feats, present)
        else:
            logits = self.aux_head(model.embed(feats, present))
        return masked_mean_ce(logits, targets, selected)
