"""Modality metrics, as functions and Avalanche plugin metrics (docs/multimodal-plugins.md).

- violation ranking rate (VRR, CML's "reliability"): the fraction of (sample, pair)
  items whose confidence *rises* when a modality is removed (by more than ``margin``),
  overall and per removed modality, plus the mean positive confidence increase;
- per-subset accuracy, its mean, the worst subset;
- attribution shares (Grad×Input, or a model's additive logit decomposition);
- the class-prior probe of CLIP models: entropy, top class and newest-task mass of the
  prediction with the image removed.

All are accumulated over the whole evaluated experience or stream, never averaged
over batches. Pairs are batch-wide subsets (``leave_one_out`` or ``all_nested``), so
they apply to models with batch-wide masks too.

One file: the plugin metrics are thin Avalanche wrappers of the functions above them,
imported from here by users (docs/multimodal-plugins.md).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import stream_type

from clap4cl.evaluation.attribution import attribution_shares, target_ratio
from clap4cl.evaluation.choices import METRIC_PAIRS
from clap4cl.models.modality_subsets import Subset, all_nonempty, full, policy_pairs, subset_name
from clap4cl.models.multimodal import as_multimodal, step_features


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log p (B, C) of a head's output: log-softmax of logits (B, C), or the log of the
    mean softmax of sample logits (M, B, C)."""
    if logits.dim() == 3:
        return torch.logsumexp(torch.log_softmax(logits, -1), 0) - np.log(logits.shape[0])
    return torch.log_softmax(logits, -1)


def metric_pairs(model, policy: str = "leave_one_out") -> List[Tuple[Subset, Subset]]:
    """The batch-wide (superset, subset) pairs of a policy, as canonical subsets."""
    if policy not in METRIC_PAIRS:
        raise ValueError(f"metric pairs must be one of {METRIC_PAIRS}, got {policy!r}")
    pairs = policy_pairs(policy, model.n_modalities, 1, allow_empty=model.allow_empty,
                         canonical=model.canonical)
    return [(tuple(s[0].tolist()), tuple(t[0].tolist())) for s, t in pairs]


def evaluation_subsets(model, pairs) -> List[Subset]:
    """Every valid non-empty subset plus those the pairs use (full set first)."""
    m = model.n_modalities
    masks = model.canonical(torch.tensor(all_nonempty(m), dtype=torch.bool))
    subsets = [tuple(r.tolist()) for r in masks if r.any() or model.allow_empty]
    subsets += [s for pair in pairs for s in pair]
    return list(dict.fromkeys([full(m)] + subsets))


@torch.no_grad()
def subset_log_probs(model, feats, subsets: Sequence[Subset],
                     generator: Optional[torch.Generator] = None) -> Dict[Subset, torch.Tensor]:
    """log p (B, C) of ``model`` for each batch-wide subset (a sampling model draws from
    ``generator``; None: the global RNG)."""
    batch = next(iter(feats.values())).shape[0]
    device = next(iter(feats.values())).device
    kwargs = {} if generator is None else {"generator": generator}
    return {s: log_probs(model.head(feats, torch.tensor(s, device=device).expand(batch, -1),
                                    **kwargs))
            for s in subsets}


class ReliabilityAccumulator:
    """Confidences and hits per subset over many batches; :meth:`result` gives the metrics."""

    def __init__(self, names: Sequence[str], pairs: Sequence[Tuple[Subset, Subset]], margin: float = 0.0):
        self.names, self.pairs, self.margin = tuple(names), list(pairs), float(margin)
        self.reset()

    def reset(self) -> None:
        self.conf: Dict[Subset, List[torch.Tensor]] = {}
        self.hits: Dict[Subset, List[torch.Tensor]] = {}

    def update(self, log_probs: Dict[Subset, torch.Tensor], targets: torch.Tensor) -> None:
        for s, lp in log_probs.items():
            top = lp.detach().float().cpu().max(-1)
            self.conf.setdefault(s, []).append(top.values.exp())
            self.hits.setdefault(s, []).append(top.indices == targets.cpu())

    def result(self) -> Optional[Dict[str, float]]:
        if not self.conf:
            return None
        conf = {s: torch.cat(v) for s, v in self.conf.items()}
        out: Dict[str, float] = {}
        increases, by_removed = [], {}
        for s, t in self.pairs:
            ci = conf[t] - conf[s]
            increases.append(ci)
            removed = [self.names[i] for i in range(len(s)) if s[i] and not t[i]]
            key = "+".join(removed)
            by_removed.setdefault(key, []).append(ci)
        if increases:
            ci = torch.cat(increases)
            violated = ci > self.margin
            out["VRR"] = float(violated.double().mean())
            out["MeanViolation"] = float(ci[violated].double().mean()) if violated.any() else 0.0
            for key, parts in by_removed.items():
                out[f"VRR/without_{key}"] = float((torch.cat(parts) > self.margin).double().mean())
        accuracy = {subset_name(s, self.names): float(torch.cat(h).double().mean())
                    for s, h in self.hits.items()}
        for name, acc in accuracy.items():
            out[f"SubsetAcc/{name}"] = acc
        full_name = subset_name(full(len(self.names)), self.names)
        partial = {n: a for n, a in accuracy.items() if n != full_name}
        out["SubsetAcc/mean"] = float(np.mean(list(accuracy.values())))
        if partial:
            worst = min(partial, key=partial.get)
            out["SubsetAcc/worst"] = partial[worst]
            out["SubsetAcc/gap_to_worst"] = accuracy[full_name] - partial[worst]
        return out


@torch.no_grad()
def reliability_report(model, datasets, *, batch_size: int = 256, device="cpu",
                       pairs: str = "leave_one_out", margin: float = 0.0,
                       generator: Optional[torch.Generator] = None) -> Dict[str, float]:
    """The reliability metrics of ``model`` (eval mode) over the union of ``datasets``.

    A sampling model (CLAP) draws its samples from ``generator`` (None: the global RNG);
    the data loader draws nothing from the global RNG either."""
    from torch.utils.data import ConcatDataset, DataLoader

    model = as_multimodal(model)
    was_training = model.training
    model.eval()
    chosen = metric_pairs(model, pairs)
    acc = ReliabilityAccumulator(model.modality_names, chosen, margin)
    subsets = evaluation_subsets(model, chosen)
    try:
        for batch in DataLoader(ConcatDataset(list(datasets)), batch_size=batch_size,
                                generator=torch.Generator()):
            feats = model.encode(batch[0].to(device))
            acc.update(subset_log_probs(model, feats, subsets, generator),
                       torch.as_tensor(batch[1]))
    finally:
        model.train(was_training)
    return acc.result()


@torch.no_grad()
def class_prior_probe(model, generator: Optional[torch.Generator] = None) -> Dict[str, float]:
    """The prediction with the image removed (the model's class prior): its entropy
    (nats), top class and probability mass on the newest task's classes (recency bias).
    Needs a model whose empty mask is valid and which has a null image (CLAP)."""
    model = as_multimodal(model)
    if not model.allow_empty:
        raise ValueError(f"{type(model).__name__} cannot predict without its modalities")
    feats = {"image": model.null_image[None].clone()}
    kwargs = {} if generator is None else {"generator": generator}
    lp = log_probs(model.head(feats, torch.zeros(1, model.n_modalities, dtype=torch.bool),
                              **kwargs))[0]
    p = lp.exp()
    newest = model.task_of_class() == model.heads.n_tasks - 1
    return {"PriorEntropy": float(-(p * lp).sum()), "PriorTopClass": float(p.argmax()),
            "PriorNewestTaskMass": float(p[newest].sum())}


class _DictMetric(PluginMetric):
    """Emits each entry of a dict result as ``{key}_{Exp|Stream}/eval_phase/...``."""

    def __init__(self, emit_at: str = "stream"):
        super().__init__()
        if emit_at not in ("experience", "stream"):
            raise ValueError(f"emit_at must be experience or stream, got {emit_at!r}")
        self.emit_at = emit_at

    def before_eval(self, strategy):
        if self.emit_at == "stream":
            self.reset()

    def before_eval_exp(self, strategy):
        if self.emit_at == "experience":
            self.reset()

    def after_eval_exp(self, strategy):
        if self.emit_at == "experience":
            return self._emit(strategy)

    def after_eval(self, strategy):
        if self.emit_at == "stream":
            return self._emit(strategy)

    def _emit(self, strategy):
        values = self.result() or {}
        suffix = "Exp" if self.emit_at == "experience" else "Stream"
        where = f"eval_phase/{stream_type(strategy.experience)}_stream"
        if self.emit_at == "experience":
            where += f"/Exp{strategy.experience.current_experience:03d}"
        x = strategy.clock.train_iterations
        out = []
        for key, value in values.items():
            group, _, detail = key.partition("/")
            name = f"{group}_{suffix}/{detail + '/' if detail else ''}{where}"
            out.append(MetricValue(self, name, value, x))
        return out

    def __getstate__(self):
        state = self.__dict__.copy()
        self_reset = type(self).__new__(type(self))
        self_reset.__dict__.update(state)
        self_reset.reset()
        return self_reset.__dict__


class ModalityReliabilityMetric(_DictMetric):
    """VRR (overall, per removed modality), mean violation and per-subset accuracy.

    Args:
        pairs: ``leave_one_out`` or ``all_nested``.
        margin: ε: a violation is a confidence increase above it.
        emit_at: ``experience`` or ``stream``.
    """

    def __init__(self, pairs: str = "leave_one_out", margin: float = 0.0, emit_at: str = "stream"):
        super().__init__(emit_at)
        if pairs not in METRIC_PAIRS:
            raise ValueError(f"pairs must be one of {METRIC_PAIRS}, got {pairs!r}")
        self.pairs, self.margin = pairs, margin
        self._acc = None

    def reset(self):
        self._acc = None

    def result(self):
        return self._acc.result() if self._acc is not None else None

    def after_eval_iteration(self, strategy):
        model = as_multimodal(strategy.model)
        if self._acc is None:
            self._pairs = metric_pairs(model, self.pairs)
            self._subsets = evaluation_subsets(model, self._pairs)
            self._acc = ReliabilityAccumulator(model.modality_names, self._pairs, self.margin)
        feats = step_features(strategy, model)
        self._acc.update(subset_log_probs(model, feats, self._subsets,
                                          getattr(strategy, "eval_generator", None)),
                         strategy.mb_y)

    def __str__(self):
        return "ModalityReliability"


class AttributionShareMetric(_DictMetric):
    """Mean attribution share per modality (or per logit component), the dominance
    (largest mean share) and, with a ``target``, the L1 distance to it."""

    def __init__(self, target_logit: str = "max", target=None, emit_at: str = "stream"):
        super().__init__(emit_at)
        self.target_logit, self.target = target_logit, target
        self.reset()

    def reset(self):
        self._names, self._shares = None, []

    def result(self):
        if not self._shares:
            return None
        mean = torch.cat(self._shares).mean(0)
        out = {f"AttributionShare/{n}": float(v) for n, v in zip(self._names, mean)}
        out["AttributionShare/dominance"] = float(mean.max())
        if self.target is not None:
            out["AttributionShare/l1_to_target"] = float((mean - target_ratio(self._names, self.target)).abs().sum())
        return out

    def after_eval_iteration(self, strategy):
        model = as_multimodal(strategy.model)
        feats = step_features(strategy, model)
        names, shares = attribution_shares(model, feats, None, target_logit=self.target_logit,
                                           labels=strategy.mb_y)
        self._names = names
        self._shares.append(shares.detach().cpu())

    def __str__(self):
        return "AttributionShare"


class ClassPriorProbeMetric(_DictMetric):
    """:func:`class_prior_probe` of the model, once per evaluation (CLIP-like models)."""

    def __init__(self):
        super().__init__("stream")
        self._value = None

    def reset(self):
        self._value = None

    def result(self):
        return self._value

    def after_eval(self, strategy):
        self._value = class_prior_probe(strategy.model)
        return self._emit(strategy)

    def __str__(self):
        return "ClassPriorProbe"


class LossTermsMetric(PluginMetric):
    """Epoch mean of every regulariser term in ``strategy.loss_terms`` (training).

    It only reads: the regulariser plugins empty ``loss_terms`` before every iteration."""

    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self):
        self._sums: Dict[str, float] = {}
        self._counts: Dict[str, int] = {}

    def result(self):
        return {k: self._sums[k] / self._counts[k] for k in self._sums}

    def before_training_epoch(self, strategy):
        self.reset()

    def after_training_iteration(self, strategy):
        for name, value in (getattr(strategy, "loss_terms", None) or {}).items():
            self._sums[name] = self._sums.get(name, 0.0) + value
            self._counts[name] = self._counts.get(name, 0) + 1

    def after_training_epoch(self, strategy):
        x = strategy.clock.train_iterations
        return [MetricValue(self, f"LossTerm_Epoch/{name}/train_phase/"
                            f"{stream_type(strategy.experience)}_stream", value, x)
                for name, value in self.result().items()]

    def __str__(self):
        return "LossTerms"


def modality_plugin_metrics(pairs: str = "leave_one_out", *, experience: bool = True,
                            stream: bool = True, attribution: bool = False,
                            class_prior: bool = False, loss_terms: bool = True) -> List[PluginMetric]:
    """The modality metrics for an ``EvaluationPlugin``."""
    out: List[PluginMetric] = []
    for emit, wanted in (("experience", experience), ("stream", stream)):
        if wanted:
            out.append(ModalityReliabilityMetric(pairs, emit_at=emit))
            if attribution:
                out.append(AttributionShareMetric(emit_at=emit))
    if class_prior:
        out.append(ClassPriorProbeMetric())
    if loss_terms:
        out.append(LossTermsMetric())
    return out
