"""CML, MAR, MAD and attribution regularisation on a stock Avalanche strategy.

Trains a multi-encoder classifier (modality a informative, modality b weak) with
Avalanche's ``Naive`` (with ``multimodal``: its forward passes the dropout mask and
keeps the step's features) + ``ReplayPlugin`` on the same two-experience stream: modality
dropout alone, then dropout + each regulariser, and prints the violation ranking rate, the
per-subset accuracies and the attribution share of modality a, one row per setting.

    python examples/multimodal_regularizers.py [--epochs 20] [--b-mode weak|noise]
"""
from __future__ import annotations

import argparse
import warnings

import torch
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin

import scenarios
from clap4cl.evaluation.modality_metrics import modality_plugin_metrics
from clap4cl.models.multi_encoder import MultiEncoderClassifier
from strategies import (AttributionRegPlugin, CMLPlugin, MADPlugin, MARPlugin,
                        ModalityDropoutPlugin)
from strategies.multimodal_step import multimodal

STREAM = "eval_phase/test_stream"


def settings(epochs: int):
    """Plugin lists to compare; ModalityDropoutPlugin comes first in each."""
    return {
        "dropout only": [],
        "+ CML": [CMLPlugin(weight=5.0)],
        "+ MAR": [MARPlugin(weight=1.0, holdout=0.2, mining_epochs=(1, max(1, epochs // 4)),
                            begin_epoch=max(1, epochs // 4))],
        "+ MAD": [MADPlugin(weight=1.0)],
        "+ attribution": [AttributionRegPlugin(weight=1.0, target={"a": 0.5, "b": 0.5})],
    }


def run(plugins, benchmark, epochs: int, seed: int):
    torch.manual_seed(seed)
    model = MultiEncoderClassifier(benchmark.input_dims, len(benchmark.class_names))
    with warnings.catch_warnings(record=True):  # no loggers: the table is the output
        evaluator = EvaluationPlugin(*modality_plugin_metrics(experience=False, attribution=True),
                                     loggers=[])
    strategy = multimodal(Naive)(model=model, optimizer=torch.optim.Adam(model.parameters(), 3e-3),
                                 criterion=torch.nn.CrossEntropyLoss(), train_mb_size=128,
                                 train_epochs=epochs, eval_mb_size=512, evaluator=evaluator,
                                 plugins=[ModalityDropoutPlugin(seed=seed), *plugins,
                                          ReplayPlugin(mem_size=200)])
    with warnings.catch_warnings(record=True):  # ReplayPlugin warns about its own deprecated API
        for experience in benchmark.train_stream:
            strategy.train(experience)
    result = strategy.eval(benchmark.test_stream)
    get = lambda name: result[f"{name}/{STREAM}"]  # noqa: E731
    return (get("VRR_Stream"), get("SubsetAcc_Stream/a+b"), get("SubsetAcc_Stream/a"),
            get("SubsetAcc_Stream/b"), get("AttributionShare_Stream/a"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--b-mode", choices=("weak", "noise"), default="weak")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    benchmark = scenarios.class_incremental("two_modality", n_experiences=2, seed=args.seed,
                                            b_mode=args.b_mode)
    table = {name: run(plugins, benchmark, args.epochs, args.seed)
             for name, plugins in settings(args.epochs).items()}
    print("| setting | VRR | acc a+b | acc a | acc b | share of a |")
    print("|---|---|---|---|---|---|")
    for name, values in table.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return table


if __name__ == "__main__":
    main()
