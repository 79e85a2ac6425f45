"""Novelty (OOD) detection with a trained CLAP model.

Trains CLAP on the first experiences of a synthetic stream, then scores
(1) the future-class protocol: seen-class test data is in-distribution, the test data of
    all classes not learned yet is novel (the paper's post-hoc protocol), and
(2) an external dataset: features of an independently generated synthetic dataset,
and prints AUROC / AUPR / FPR95 for every uncertainty score.

    python examples/ood_evaluation.py [--trained-experiences 2]
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader, TensorDataset

import scenarios
from clap4cl import ClapModel
from clap4cl.evaluation import metrics, scores as uncertainty
from strategies import CLAP, ClassBalancedMemory


@torch.no_grad()
def sample_logits(model, dataset, batch_size: int = 32) -> np.ndarray:
    """(N, M, C) Monte-Carlo logits of the model on a dataset (eval mode)."""
    model.eval()
    batches = [uncertainty.sample_logits(model, x) for x, *_ in DataLoader(dataset, batch_size)]
    return torch.cat(batches).numpy()


def report(title: str, in_distribution: np.ndarray, novel: np.ndarray) -> dict:
    scores = metrics.novelty_scores_metrics(in_distribution, novel)
    print(f"\n{title} ({len(in_distribution)} in-distribution, {len(novel)} novel)")
    print("| score | AUROC | AUPR | FPR95 |\n|---|---|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {100 * values['auroc']:.2f} | {100 * values['aupr']:.2f} | "
              f"{100 * values['fpr95']:.2f} |")
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-experiences", type=int, default=5)
    parser.add_argument("--trained-experiences", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    bench = scenarios.class_incremental("synthetic", n_experiences=args.n_experiences, n_classes=20)
    with warnings.catch_warnings(record=True):
        evaluator = EvaluationPlugin(loggers=[])
    strategy = CLAP(model=ClapModel(bench.text_features, 100.0), train_epochs=args.epochs,
                    memory=ClassBalancedMemory("fixed_total", size=2000), evaluator=evaluator)
    for experience in bench.train_stream[: args.trained_experiences]:
        strategy.train(experience)
    model = strategy.model
    seen = [e.dataset.eval() for e in bench.test_stream[: args.trained_experiences]]
    future = [e.dataset.eval() for e in bench.test_stream[args.trained_experiences:]]
    in_distribution = np.concatenate([sample_logits(model, d) for d in seen])
    future_classes = report("future classes of the stream", in_distribution,
                            np.concatenate([sample_logits(model, d) for d in future]))
    other = scenarios.make_synthetic(n_classes=20, seed=1)   # another "dataset" in the same space
    external = TensorDataset(torch.as_tensor(other.test_features))
    external_data = report("external dataset (synthetic, seed 1)", in_distribution,
                           sample_logits(model, external))
    return future_classes, external_data


if __name__ == "__main__":
    main()
