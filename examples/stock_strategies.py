"""The CLAP model, the toolkit's selectors and metrics inside stock Avalanche strategies.

Trains the same ClapModel architecture with Avalanche's Replay-style Naive + ReplayPlugin
(an uncertainty-selected ParametricBuffer), LwF and EWC, side by side with the CLAP
strategy and the zero-shot baseline, and prints one results table.

    python examples/stock_strategies.py [--n-experiences 5] [--epochs 3]
"""
from __future__ import annotations

import argparse
import warnings

import torch
from avalanche.training import EWC, LwF, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ParametricBuffer

import scenarios
from clap4cl import ClapModel
from clap4cl.evaluation.plugin_metrics import calibration_plugin_metrics, continual_metrics
from strategies import CLAP, ClassBalancedMemory, ZeroShotCLIP, make_selector

STREAM = "eval_phase/test_stream"


def evaluator():
    with warnings.catch_warnings(record=True):  # no loggers: the table is the output
        return EvaluationPlugin(*calibration_plugin_metrics(experience=False),
                                *continual_metrics(task_aware=False), loggers=[])


def stock_strategies(text, epochs: int, memory_size: int):
    """name -> (strategy factory); every one trains a fresh ClapModel with SGD."""
    common = dict(criterion=torch.nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=epochs,
                  eval_mb_size=64)

    def model_and_optimizer():
        model = ClapModel(text, 100.0, mc_samples=10)
        return model, torch.optim.SGD(model.parameters(), lr=1e-3)

    def replay():
        model, opt = model_and_optimizer()
        buffer = ParametricBuffer(max_size=memory_size, groupby="class",
                                  selection_strategy=make_selector("entropy"))
        return Naive(model=model, optimizer=opt, evaluator=evaluator(),
                     plugins=[ReplayPlugin(mem_size=memory_size, storage_policy=buffer)], **common)

    def lwf():
        model, opt = model_and_optimizer()
        return LwF(model=model, optimizer=opt, alpha=1.0, temperature=2.0, evaluator=evaluator(), **common)

    def ewc():
        model, opt = model_and_optimizer()
        return EWC(model=model, optimizer=opt, ewc_lambda=10.0, evaluator=evaluator(), **common)

    def clap():
        return CLAP(model=ClapModel(text, 100.0, mc_samples=10), train_epochs=epochs,
                    memory=ClassBalancedMemory("fixed_total", size=memory_size,
                                               selector=make_selector("entropy")),
                    evaluator=evaluator())

    def zeroshot():
        return ZeroShotCLIP(class_features=text.normalized, logit_scale=100.0, evaluator=evaluator())

    return {"zero-shot": zeroshot, "Replay (entropy buffer)": replay, "LwF": lwf, "EWC": ewc,
            "CLAP": clap}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-experiences", type=int, default=5)
    parser.add_argument("--n-classes", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=200)
    args = parser.parse_args(argv)
    bench = scenarios.class_incremental("synthetic", n_experiences=args.n_experiences,
                                        n_classes=args.n_classes)
    table = {}
    for name, make in stock_strategies(bench.text_features, args.epochs, args.memory).items():
        torch.manual_seed(0)
        strategy = make()
        with warnings.catch_warnings(record=True):  # Avalanche's Replay calls its deprecated API
            for t, experience in enumerate(bench.train_stream):
                strategy.train(experience)
                metrics = strategy.eval(bench.test_stream[: t + 1])
        table[name] = (metrics[f"AvgIncrementalAcc/{STREAM}"], metrics[f"StepAcc/{STREAM}"],
                       metrics.get(f"BWT/{STREAM}"), metrics[f"ECE_Stream/{STREAM}/Task000"])
    print("| strategy | Avg | Last | BWT | ECE |\n|---|---|---|---|---|")
    for name, (avg, last, bwt, ece) in table.items():
        print(f"| {name} | {100 * avg:.2f} | {100 * last:.2f} | {100 * (bwt or 0):.2f} | {100 * ece:.2f} |")
    return table


if __name__ == "__main__":
    main()
