"""Avalanche's EvaluationPlugin, the run's progress, TensorBoard scalars and the run's plots."""
from __future__ import annotations

import datetime
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, TextIO


def make_evaluator(output: Path, config: Dict[str, Any], write_tensorboard: bool = True):
    """Avalanche EvaluationPlugin with the training loss and accuracy per epoch and, if the
    config and ``write_tensorboard`` both want it, TensorBoard.

    It computes no evaluation metric: every number of an evaluation step comes from
    ``runner.evaluate.evaluate_step`` and reaches TensorBoard through
    :func:`log_step_scalars`, from the same values as results.json. Progress is not an
    Avalanche logger (whose per-epoch bars fill a redirected log with ``\\r`` frames):
    :class:`RunProgress` reports the whole run.
    """
    from avalanche.logging import TensorboardLogger
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics

    loggers = []
    tensorboard = None
    if config["logging"]["tensorboard"] and write_tensorboard:
        tensorboard = TensorboardLogger(tb_log_dir=str(output / "tensorboard"))
        loggers.append(tensorboard)
    with warnings.catch_warnings():  # no loggers is a deliberate choice (--quiet, no TensorBoard)
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(accuracy_metrics(epoch=True), loss_metrics(epoch=True),
                                     loggers=loggers)
    return evaluator, tensorboard


class RunProgress:
    """The progress of a whole run: experiences × phases (train, eval) with an ETA.

    On a terminal it is one tqdm bar; otherwise (a log file, a pipe) one plain line per
    finished phase, e.g. ``[clap4cl] experience 2/5 eval done: 4/10 phases, 0:00:12
    elapsed, ETA 0:00:18``. The ETA extrapolates the time per experience of this
    process (a resumed run counts from where it restarted). ``enabled=False`` prints
    nothing.
    """

    PHASES = ("train", "eval")

    def __init__(self, n_experiences: int, start: int = 0, *, enabled: bool = True,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None):
        self.n_experiences, self.enabled = int(n_experiences), enabled
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.total = len(self.PHASES) * self.n_experiences
        self.done = self.first = len(self.PHASES) * int(start)
        self.started = time.monotonic()
        self.bar = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, file=self.stream, unit="phase",
                            dynamic_ncols=True,
                            bar_format="{desc} {bar} {n_fmt}/{total_fmt} phases "
                                       "[{elapsed}<{remaining}]")

    def start(self, step: int, phase: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"experience {step + 1}/{self.n_experiences} {phase}")

    def finish(self, step: int, phase: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"[clap4cl] experience {step + 1}/{self.n_experiences} {phase} done: "
                  f"{self.done}/{self.total} phases, {_clock(self.elapsed())} elapsed, "
                  f"ETA {_clock(self.eta())}", file=self.stream, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self) -> Optional[float]:
        """Seconds left, from the mean time per phase of this process (None before one)."""
        finished = self.done - self.first
        return None if finished == 0 else self.elapsed() / finished * (self.total - self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: Optional[float]) -> str:
    return "?" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def tensorboard_logger(strategy):
    from avalanche.logging import TensorboardLogger

    loggers = getattr(strategy.evaluator, "loggers", [])
    return next((lg for lg in loggers if isinstance(lg, TensorboardLogger)), None)


def write_plots(output: Path, results: Dict[str, Any], plot_data: Dict[str, Any], tensorboard) -> None:
    """The run's four PNG plots in ``output/plots`` (and as TensorBoard figures)."""
    from clap4cl.runner import plots

    figures = plots.run_figures(results, plot_data["reliability"], plot_data.get("roc"),
                                plot_data.get("roc_external"))
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
