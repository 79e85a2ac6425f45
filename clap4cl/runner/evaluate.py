"""The evaluation protocol after each training step: accuracy, calibration, novelty, reliability."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import ConcatDataset, DataLoader, Subset

from clap4cl.evaluation import metrics, scores
from clap4cl.models.masking import seen_class_logits


@torch.no_grad()
def predict_logits(model, datasets, batch_size: int, device: str = "cpu",
                   mix_seed: Optional[int] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(sample logits (N, M, C), targets) of ``model`` on each dataset, in dataset order.

    M is the model's Monte-Carlo sample count (1 for deterministic models). Batches are
    task-homogeneous (one loader per dataset, as the reference evaluates) unless
    ``mix_seed`` is given: then all samples are shuffled together into mixed batches
    (the ``mixed`` context) and the outputs are split back per dataset.
    """
    model.eval()
    if mix_seed is None:
        return [_predict(model, DataLoader(d, batch_size=batch_size), device) for d in datasets]
    order = torch.randperm(sum(len(d) for d in datasets),
                           generator=torch.Generator().manual_seed(mix_seed))
    loader = DataLoader(Subset(ConcatDataset(datasets), order.tolist()), batch_size=batch_size)
    logits, targets = _predict(model, loader, device)
    inverse = torch.argsort(order).numpy()
    logits, targets = logits[inverse], targets[inverse]
    bounds = np.cumsum([0] + [len(d) for d in datasets])
    return [(logits[a:b], targets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _predict(model, loader, device):
    outs, ys = [], []
    for batch in loader:
        outs.append(scores.sample_logits(model, batch[0].to(device)).float().cpu())
        ys.append(torch.as_tensor(batch[1]))
    return torch.cat(outs).numpy(), torch.cat(ys).numpy()


class LogitsCollector(SupervisedPlugin, supports_distributed=True):
    """Keeps every evaluation mini-batch's sample logits (B, M, C) and targets, per experience.

    The experiment's accuracy, calibration and novelty numbers come from the same
    forward passes as Avalanche's own metrics: one evaluation pass per step. Strategies
    that sample (CLAP) leave their samples in ``mb_sample_logits``; for the others the
    output is one sample, over the seen classes. Safe in data-parallel runs: only rank 0
    evaluates.
    """

    def __init__(self):
        super().__init__()
        self.outputs: Dict[int, list] = {}

    def before_eval(self, strategy, **kwargs):
        self.outputs = {}

    def after_eval_iteration(self, strategy, **kwargs):
        samples = getattr(strategy, "mb_sample_logits", None)
        if samples is None or len(samples) != len(strategy.mb_output):
            samples = seen_class_logits(strategy.model, strategy.mb_output)[:, None, :]
        batches = self.outputs.setdefault(strategy.experience.current_experience, [])
        batches.append((samples.detach().float().cpu(), strategy.mb_y.cpu()))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["outputs"] = {}                # refilled by every evaluation: not checkpointed
        return state

    def logits_and_targets(self, experience: int):
        logits, targets = zip(*self.outputs[experience])
        return torch.cat(logits).numpy(), torch.cat(targets).numpy()


def evaluate_step(strategy, collector: LogitsCollector, benchmark, step: int, config,
                  seed: int, external_ood=None) -> Dict[str, Any]:
    """Per-experience accuracy, step accuracy, calibration, novelty and reliability after
    training ``step``: every number of the step, computed once from the collected logits
    (results.json and TensorBoard both show these values).

    ``reference`` and ``per_image`` contexts evaluate through Avalanche (one
    task-homogeneous loader per experience, logits kept by ``collector``); ``mixed``
    shuffles the seen test data (and the novel data, for novelty detection) together into
    cross-task batches. ``external_ood``: a test dataset of another dataset, novel at
    every step.
    """
    test_stream = benchmark.test_stream
    batch_size = config["eval"]["batch_size"]
    device = str(strategy.device)
    with_novelty = config["eval"]["novelty"] and step < len(test_stream) - 1
    n_eval = len(test_stream) if with_novelty else step + 1
    if config["eval"]["context"] == "mixed":
        datasets = [test_stream[k].dataset.eval() for k in range(n_eval)]
        outputs = predict_logits(strategy.model, datasets, batch_size, device,
                                 mix_seed=seed * 1000 + step)
        per_exp, novel = outputs[: step + 1], outputs[step + 1:]
    else:
        strategy.eval(test_stream[: step + 1])
        per_exp = [collector.logits_and_targets(k) for k in range(step + 1)]
        collector.outputs = {}               # the batches are concatenated: free them now
        future = [test_stream[k].dataset.eval() for k in range(step + 1, n_eval)]
        novel = predict_logits(strategy.model, future, batch_size, device)
    seen_samples = np.concatenate([l for l, _ in per_exp])
    out = {
        **metrics.step_metrics(per_exp, benchmark.info.classes_per_experience, batch_size),
        "novelty": None,
        "novelty_external": None,
        "plot_data": {"reliability": (seen_samples.mean(1), np.concatenate([y for _, y in per_exp])),
                      "roc": None},
    }
    if with_novelty:
        novel_samples = np.concatenate([l for l, _ in novel])
        out["novelty"] = novelty_entry(step, seen_samples, novel_samples)
        out["plot_data"]["roc"] = {
            name: (scores.novelty_score(name, seen_samples).numpy(),
                   scores.novelty_score(name, novel_samples).numpy())
            for name in scores.NOVELTY_SCORES}
    if external_ood is not None:
        (ood_samples, _), = predict_logits(strategy.model, [external_ood], batch_size, device)
        out["novelty_external"] = novelty_entry(step, seen_samples, ood_samples)
    out["reliability"] = reliability_entry(strategy.model, test_stream, step, config, device)
    return out


def reliability_entry(model, test_stream, step: int, config, device) -> Optional[Dict[str, Any]]:
    """VRR, per-removed-modality VRR, mean violation and per-subset accuracy on the seen
    test data (multimodal models; CLAP only once it has a null image), plus CLAP's class
    prior probe."""
    from clap4cl.evaluation.modality_metrics import class_prior_probe, reliability_report
    from clap4cl.models.multimodal import MultimodalModule

    if not isinstance(model, MultimodalModule):
        return None
    if hasattr(model, "null_image") and not model.null_image.any():
        return None
    report = reliability_report(model, [test_stream[k].dataset.eval() for k in range(step + 1)],
                                batch_size=config["eval"]["batch_size"], device=device,
                                pairs=config["eval"]["reliability_pairs"])
    entry = {"step": step, **report}
    if model.allow_empty:
        entry.update(class_prior_probe(model))
    return entry


def novelty_entry(step: int, id_samples: np.ndarray, ood_samples: np.ndarray) -> Dict[str, Any]:
    """Energy metrics at the top level (the paper's score) and every score under ``scores``."""
    scores = metrics.novelty_scores_metrics(id_samples, ood_samples)
    return {"step": step, "score": "energy", **scores["energy"], "scores": scores}
