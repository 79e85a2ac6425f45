"""Avalanche's EvaluationPlugin and loggers, TensorBoard scalars and the run's plots."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict


def make_evaluator(output: Path, config: Dict[str, Any], progress: bool,
                   write_tensorboard: bool = True):
    """Avalanche EvaluationPlugin with the training loss and accuracy per epoch and the
    configured loggers (TensorBoard only if the config and ``write_tensorboard`` both want
    it).

    It computes no evaluation metric: every number of an evaluation step comes from
    ``runner.evaluate.evaluate_step`` and reaches TensorBoard through
    :func:`log_step_scalars`, from the same values as results.json.
    """
    from avalanche.logging import InteractiveLogger, TensorboardLogger
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics

    loggers = []
    tensorboard = None
    if progress:
        loggers.append(InteractiveLogger())
    if config["logging"]["tensorboard"] and write_tensorboard:
        tensorboard = TensorboardLogger(tb_log_dir=str(output / "tensorboard"))
        loggers.append(tensorboard)
    with warnings.catch_warnings():  # no loggers is a deliberate choice (--quiet, no TensorBoard)
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(accuracy_metrics(epoch=True), loss_metrics(epoch=True),
                                     loggers=loggers)
    return evaluator, tensorboard


def tensorboard_logger(strategy):
    from avalanche.logging import TensorboardLogger

    loggers = getattr(strategy.evaluator, "loggers", [])
    return next((lg for lg in loggers if isinstance(lg, TensorboardLogger)), None)


def write_plots(output: Path, results: Dict[str, Any], plot_data: Dict[str, Any], tensorboard) -> None:
    """The run's four PNG plots in ``output/plots`` (and as TensorBoard figures)."""
    from clap4cl.runner import plots

    figures = plots.run_figures(results, plot_data["reliability"], plot_data.get("roc"))
    if tensorboard is not None:
        step = results["completed_experiences"] - 1
        for file_name, fig in figures.items():
            tensorboard.writer.add_figure(f"plots/{file_name[:-4]}", fig, step, close=False)
    plots.save_figures(figures, output / "plots")


def log_step_scalars(tensorboard, step: int, results: Dict[str, Any]) -> None:
    """Every number of ``step`` in the results.json document ``results`` as a TensorBoard
    scalar (tags: ``runner.results.step_scalars``)."""
    if tensorboard is None:
        return
    from clap4cl.runner.results import step_scalars

    for tag, value in step_scalars(results, step).items():
        tensorboard.writer.add_scalar(tag, value, step)
