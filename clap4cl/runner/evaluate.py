"""The evaluation protocol after each training step: accuracy, calibration, novelty, reliability."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import ConcatDataset, DataLoader, Subset

from clap4cl.evaluation import metrics, scores
from clap4cl.models.masking import seen_class_logits
from clap4cl.runner.reliability import SharedReliabilityPass, reliability_entry


@torch.no_grad()
def predict_logits(model, datasets, batch_size: int, device: str = "cpu",
                   mix_seed: Optional[int] = None, *, generators: Optional[Sequence] = None,
                   n_samples: Optional[int] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(sample logits (N, M, C), targets) of ``model`` on each dataset, in dataset order.

    M is ``n_samples`` (None: the model's Monte-Carlo sample count; 0: the closed-form
    mean; 1 for deterministic models). Batches are task-homogeneous (one loader per
    dataset, as the reference evaluates) unless ``mix_seed`` is given: then all samples
    are shuffled together into mixed batches (the ``mixed`` context) and the outputs are
    split back per dataset. ``generators``: the source of each dataset's samples (one
    for the mixed batches); None draws from the global RNG. The loaders themselves draw
    nothing from it.
    """
    model.eval()
    if mix_seed is None:
        generators = list(generators) if generators is not None else [None] * len(datasets)
        return [_predict(model, _loader(d, batch_size), device, g, n_samples)
                for d, g in zip(datasets, generators)]
    order = torch.randperm(sum(len(d) for d in datasets),
                           generator=torch.Generator().manual_seed(mix_seed))
    loader = _loader(Subset(ConcatDataset(datasets), order.tolist()), batch_size)
    logits, targets = _predict(model, loader, device, (generators or [None])[0], n_samples)
    inverse = torch.argsort(order).numpy()
    logits, targets = logits[inverse], targets[inverse]
    bounds = np.cumsum([0] + [len(d) for d in datasets])
    return [(logits[a:b], targets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _loader(dataset, batch_size: int) -> DataLoader:
    # A loader takes its base seed from its generator: with none it would draw it from
    # the global RNG, so evaluating would shift training's random stream.
    return DataLoader(dataset, batch_size=batch_size, generator=torch.Generator())


def _predict(model, loader, device, generator, n_samples):
    outs, ys = [], []
    for batch in loader:
        outs.append(scores.sample_logits(model, batch[0].to(device), n_samples,
                                         generator=generator).float().cpu())
        ys.append(torch.as_tensor(batch[1]))
    return torch.cat(outs).numpy(), torch.cat(ys).numpy()


class LogitsCollector(SupervisedPlugin, supports_distributed=True):
    """Keeps every evaluation mini-batch's sample logits (B, M, C), prediction logits
    (B, C) and targets, per experience, and makes the evaluation's sampling reproducible.

    The experiment's accuracy, calibration and novelty numbers come from the same
    forward passes as Avalanche's own metrics: one evaluation pass per step. Strategies
    that sample (CLAP) leave their samples in ``mb_sample_logits``; for the others the
    output is one sample, over the seen classes. Safe in data-parallel runs: only rank 0
    evaluates.

    Sampling: after :meth:`start_step` (seed, step), each evaluated experience k gets its
    own generator ``scores.eval_generator(seed, step, EXPERIENCE, k)`` as the strategy's
    ``eval_generator`` (CLAP draws ε from it), and the eval loader a generator of its
    own, so evaluation draws nothing from the global RNG. ``mc_samples`` (None: the
    model's M) and ``mean_only`` (predictions from the closed-form mean) become the
    strategy's ``eval_mc_samples`` and ``eval_mean_only``.
    """

    def __init__(self, mc_samples: Optional[int] = None, mean_only: bool = False):
        super().__init__()
        self.outputs: Dict[int, list] = {}
        self.mc_samples, self.mean_only = mc_samples, bool(mean_only)
        self.seed_and_step: Optional[Tuple[int, int]] = None

    def start_step(self, seed: int, step: int) -> None:
        """Key the next evaluation's generators on (run seed, step)."""
        self.seed_and_step = (int(seed), int(step))

    def before_eval(self, strategy, **kwargs):
        self.outputs = {}
        strategy.eval_mc_samples, strategy.eval_mean_only = self.mc_samples, self.mean_only

    def before_eval_exp(self, strategy, **kwargs):
        loader_kwargs = getattr(strategy.dataloader, "loader_kwargs", None)
        if loader_kwargs is not None:          # Avalanche's loader: built per iteration
            loader_kwargs["generator"] = torch.Generator()
        if self.seed_and_step is not None:
            strategy.eval_generator = scores.eval_generator(
                *self.seed_and_step, scores.EXPERIENCE, strategy.experience.current_experience)

    def after_eval_exp(self, strategy, **kwargs):
        strategy.eval_generator = None

    def after_eval(self, strategy, **kwargs):
        self.seed_and_step = None

    def after_eval_iteration(self, strategy, **kwargs):
        predictions = seen_class_logits(strategy.model, strategy.mb_output)
        samples = getattr(strategy, "mb_sample_logits", None)
        if samples is None or len(samples) != len(strategy.mb_output):
            samples = predictions[:, None, :]
        batches = self.outputs.setdefault(strategy.experience.current_experience, [])
        batches.append((samples.detach().float().cpu(), predictions.detach().float().cpu(),
                        strategy.mb_y.cpu()))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["outputs"] = {}                # refilled by every evaluation: not checkpointed
        return state

    def logits_and_targets(self, experience: int):
        """(sample logits (N, M, C), targets) of an evaluated experience."""
        logits, _, targets = zip(*self.outputs[experience])
        return torch.cat(logits).numpy(), torch.cat(targets).numpy()

    def predictions(self, experience: int) -> np.ndarray:
        """The strategy's prediction logits (N, C) of an evaluated experience."""
        return torch.cat([p for _, p, _ in self.outputs[experience]]).numpy()


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

    Every Monte-Carlo draw comes from a generator keyed on (``seed``, ``step``, what is
    evaluated, which dataset) (``scores.eval_generator``), never from the global RNG: the
    evaluation settings cannot change training, and evaluating the same model again
    gives the same numbers. With ``eval.mean_only`` the predictions (accuracy,
    calibration) are the closed-form mean logits; the novelty scores use the
    ``eval.mc_samples`` samples either way.
    """
    test_stream = benchmark.test_stream
    ev = config["eval"]
    batch_size, n_samples, mean_only = ev["batch_size"], ev["mc_samples"], ev["mean_only"]
    device = str(strategy.device)
    model = strategy.model
    with_novelty = ev["novelty"] and step < len(test_stream) - 1
    n_eval = len(test_stream) if with_novelty else step + 1

    def generator(kind, index=0):
        return scores.eval_generator(seed, step, kind, index)

    shared = None                            # the reliability report, shared with the evaluation
    if ev["context"] == "mixed":
        datasets = [test_stream[k].dataset.eval() for k in range(n_eval)]
        mix = dict(mix_seed=seed * 1000 + step)
        outputs = predict_logits(model, datasets, batch_size, device, **mix,
                                 generators=[generator(scores.MIXED)], n_samples=n_samples)
        per_exp, novel = outputs[: step + 1], outputs[step + 1:]
        predictions = None
        if mean_only:
            means = predict_logits(model, datasets, batch_size, device, **mix, n_samples=0)
            predictions = [l[:, 0] for l, _ in means[: step + 1]]
    else:
        collector.start_step(seed, step)
        shared = SharedReliabilityPass.for_step(model, test_stream, step, config, device,
                                                generator(scores.RELIABILITY))
        with shared.watching() if shared else contextlib.nullcontext():
            strategy.eval(test_stream[: step + 1])
        per_exp = [collector.logits_and_targets(k) for k in range(step + 1)]
        predictions = [collector.predictions(k) for k in range(step + 1)] if mean_only else None
        collector.outputs = {}               # the batches are concatenated: free them now
        future = [test_stream[k].dataset.eval() for k in range(step + 1, n_eval)]
        novel = predict_logits(model, future, batch_size, device, n_samples=n_samples,
                               generators=[generator(scores.EXPERIENCE, k)
                                           for k in range(step + 1, n_eval)])
    seen_samples = np.concatenate([l for l, _ in per_exp])
    seen_predictions = (seen_samples.mean(1) if predictions is None
                        else np.concatenate(predictions))
    out = {
        **metrics.step_metrics(per_exp, benchmark.info.classes_per_experience, batch_size,
                               predictions=predictions),
        "novelty": None,
        "novelty_external": None,
        "plot_data": {"reliability": (seen_predictions, np.concatenate([y for _, y in per_exp])),
                      "roc": None, "roc_external": None},
    }
    if with_novelty:
        out["plot_data"]["roc"] = roc_curves(seen_samples, np.concatenate([l for l, _ in novel]))
        out["novelty"] = novelty_entry(step, out["plot_data"]["roc"])
    if external_ood is not None:
        (ood_samples, _), = predict_logits(model, [external_ood], batch_size, device,
                                           generators=[generator(scores.EXTERNAL)],
                                           n_samples=n_samples)
        out["plot_data"]["roc_external"] = roc_curves(seen_samples, ood_samples)
        out["novelty_external"] = novelty_entry(step, out["plot_data"]["roc_external"])
    out["reliability"] = reliability_entry(model, test_stream, step, config, device,
                                           generator(scores.RELIABILITY), shared=shared)
    return out


def roc_curves(id_samples: np.ndarray, ood_samples: np.ndarray):
    """{score: (in-distribution scores, novel scores)} of every novelty score."""
    return {name: (scores.novelty_score(name, id_samples).numpy(),
                   scores.novelty_score(name, ood_samples).numpy())
            for name in scores.NOVELTY_SCORES}


def novelty_entry(step: int, curves) -> Dict[str, Any]:
    """Energy metrics at the top level (the paper's score) and every score under ``scores``,
    from :func:`roc_curves`' score arrays (each score is computed once per step)."""
    entries = {name: metrics.novelty_metrics(id_scores, ood_scores)
               for name, (id_scores, ood_scores) in curves.items()}
    return {"step": step, "score": "energy", **entries["energy"], "scores": entries}
