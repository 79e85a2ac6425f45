"""A class-incremental CLAP experiment written against the Python API.

Scenario -> CLAP model and strategy (uncertainty-selected replay memory) -> an Avalanche
EvaluationPlugin with accuracy, forgetting and BWT plus the toolkit's calibration and
continual metrics, logged to TensorBoard -> a per-step table.

    python examples/class_incremental_clap.py                      # synthetic features, seconds
    python examples/class_incremental_clap.py --dataset digits     # real images, packaged digits encoder
    tensorboard --logdir runs/example-clap
"""
from __future__ import annotations

import argparse
import warnings

from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.logging import InteractiveLogger, TensorboardLogger
from avalanche.training.plugins import EvaluationPlugin

import scenarios
from clap4cl import ClapModel, class_text_features, load_clip
from clap4cl.evaluation.plugin_metrics import calibration_plugin_metrics, continual_metrics
from strategies import CLAP, ClassBalancedMemory, make_selector


def build_stream(dataset: str, n_experiences: int, per_class=None):
    """(benchmark, class text statistics, logit scale) of a feature-level stream;
    ``per_class``: training samples per class of the synthetic stream (None: its default)."""
    if dataset == "synthetic":
        sizes = {} if per_class is None else {"train_per_class": per_class,
                                              "test_per_class": max(1, per_class // 4)}
        bench = scenarios.class_incremental("synthetic", n_experiences=n_experiences, n_classes=20,
                                            **sizes)
        return bench, bench.text_features, 100.0
    clip = load_clip("tiny-vit", "digits")  # or load_clip("ViT-B-16", "openai") when online
    bench = scenarios.class_incremental(dataset, n_experiences=n_experiences, level="features",
                                        backbone=clip)
    return bench, class_text_features(clip, bench.class_names, bench.templates), clip.logit_scale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--n-experiences", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--logdir", default="runs/example-clap")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--per-class", type=int, default=None,
                        help="training samples per class of the synthetic stream")
    args = parser.parse_args(argv)

    bench, text, logit_scale = build_stream(args.dataset, args.n_experiences, args.per_class)
    loggers = [TensorboardLogger(args.logdir)] + ([] if args.quiet else [InteractiveLogger()])
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True), bwt_metrics(stream=True),
        *calibration_plugin_metrics(experience=False), *continual_metrics(), loggers=loggers)
    model = ClapModel(text, logit_scale, mc_samples=args.mc_samples)
    memory = ClassBalancedMemory("fixed_total", size=2000, selector=make_selector("entropy"))
    strategy = CLAP(model=model, memory=memory, train_epochs=args.epochs, finetune_epochs=2,
                    evaluator=evaluator)

    stream = "eval_phase/test_stream"
    rows = []
    for t, experience in enumerate(bench.train_stream):
        strategy.train(experience)
        metrics = strategy.eval(bench.test_stream[: t + 1])
        rows.append((t, metrics[f"StepAcc/{stream}"], metrics[f"ECE_Stream/{stream}/Task000"],
                     metrics.get(f"BWT/{stream}")))
    print("| step | accuracy | ECE | BWT |\n|---|---|---|---|")
    for t, acc, ece, bwt in rows:
        print(f"| {t} | {100 * acc:.2f} | {100 * ece:.2f} | {'–' if bwt is None else f'{100 * bwt:.2f}'} |")
    return rows


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    main()
