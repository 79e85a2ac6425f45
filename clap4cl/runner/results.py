"""The results.json document (schema: docs/cli-and-config.md) and the phase timer."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import numpy as np

from clap4cl.evaluation import metrics
from clap4cl.runner.inputs import feature_only
from strategies.plugins.registry import plugin_name


class Timer:
    """Accumulates wall-clock seconds per phase."""

    def __init__(self):
        self.seconds = {"extract": 0.0, "train": 0.0, "eval": 0.0}

    def phase(self, name):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] += time.perf_counter() - self.start

        return _Phase()


def novelty_summary(entries: List[Dict[str, Any]]) -> Optional[Dict[str, Dict[str, float]]]:
    """Per score, each metric averaged over the steps (None without entries)."""
    if not entries:
        return None
    names = entries[0]["scores"]
    return {name: {m: float(np.mean([e["scores"][name][m] for e in entries]))
                   for m in ("auroc", "aupr", "fpr95")} for name in names}


def summarise(config, benchmark, rows: List[List[float]], steps: List[Dict[str, Any]],
              timer: Timer, completed: int) -> Dict[str, Any]:
    """The results.json document (schema: docs/cli-and-config.md)."""
    n_exp = len(benchmark.train_stream)
    matrix = [row + [None] * (n_exp - len(row)) for row in rows]
    novelty = [s["novelty"] for s in steps if s["novelty"] is not None]
    external = [s["novelty_external"] for s in steps if s["novelty_external"] is not None]
    step_acc = [s["step_accuracy"] for s in steps]
    task_mean = [metrics.task_mean_accuracy(row) for row in rows]
    return {
        "method": config["method"],
        "dataset": config["dataset"]["name"],
        "backbone": None if feature_only(config) else config["backbone"]["arch"],
        "run": config["run"],
        "n_experiences": n_exp,
        "completed_experiences": completed,
        "class_order": [int(c) for c in benchmark.info.class_order],
        "classes_per_experience": [[int(c) for c in cls]
                                   for cls in benchmark.info.classes_per_experience],
        "eval_context": config["eval"]["context"],
        "accuracy_matrix": matrix,
        "step_accuracy": step_acc,
        "avg_incremental_accuracy": metrics.average_incremental_accuracy(step_acc) if step_acc else None,
        "last_accuracy": step_acc[-1] if step_acc else None,
        "step_accuracy_task_mean": task_mean,
        "last_accuracy_task_mean": task_mean[-1] if task_mean else None,
        "task_aware_accuracy": [s["task_aware_accuracy"] for s in steps],
        "bwt": metrics.backward_transfer(rows),
        "forgetting": metrics.forgetting(rows),
        "ece": [s["ece"] for s in steps],
        "calibration": [s["calibration"] for s in steps],
        "novelty": novelty,
        "novelty_mean": novelty_summary(novelty),
        "novelty_external": external,
        "novelty_external_dataset": config["eval"]["novelty_dataset"],
        "novelty_external_mean": novelty_summary(external),
        "plugins": [plugin_name(p) for p in config["plugins"]],
        "skipped_images": len(getattr(benchmark.info, "skipped_images", ())),
        "reliability": [s.get("reliability") for s in steps] if any(s.get("reliability") for s in steps) else None,
        "timing": {k: round(v, 3) for k, v in timer.seconds.items()},
    }


def step_scalars(results: Dict[str, Any], step: int) -> Dict[str, float]:
    """Every number of ``step`` in the results.json document ``results`` (written after
    that step), keyed by its TensorBoard tag: the one source of the run's scalars.

    Cumulative summaries (average incremental accuracy, BWT, forgetting) are their values
    after ``step``; per-step lists are read at index ``step``; novelty entries are those of
    ``step``.
    """
    out: Dict[str, float] = {}
    for k, value in enumerate(results["accuracy_matrix"][step]):
        if value is not None:
            out[f"accuracy/experience_{k:03d}"] = value
    for key in ("step_accuracy", "step_accuracy_task_mean", "task_aware_accuracy", "ece"):
        out[f"summary/{key}"] = results[key][step]
    for key in ("avg_incremental_accuracy", "bwt", "forgetting"):
        if results[key] is not None:
            out[f"summary/{key}"] = results[key]
    for name, value in results["calibration"][step].items():
        out[f"calibration/{name}"] = value
    for kind in ("novelty", "novelty_external"):
        for entry in results[kind]:
            if entry["step"] == step:
                for score, values in entry["scores"].items():
                    for name in ("auroc", "aupr", "fpr95"):
                        out[f"{kind}/{score}_{name}"] = values[name]
    entry = (results["reliability"] or [None] * (step + 1))[step]
    for name, value in (entry or {}).items():
        if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"reliability/{name}"] = value
    return out
