"""One evaluation path: results.json, the TensorBoard scalars and the reliability diagram
show the same numbers, for every evaluation context."""
import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clap4cl.evaluation import metrics
from clap4cl.runner import experiment, plots
from clap4cl.runner.config import load_config

STREAM = {"dataset.name": "synthetic", "dataset.n_experiences": 3,
          "dataset.options": {"n_classes": 6, "train_per_class": 12, "test_per_class": 8},
          "logging.tensorboard": True, "eval.batch_size": 16}
CLAP = {"method": "clap", "clap.epochs": 1, "clap.finetune_epochs": 1, "clap.mc_samples": 3,
        "clap.vga_ffn_dim": 16, "memory.size": 12}
MULTI_ENCODER = {"method": "multi_encoder", "dataset.name": "two_modality",
                 "dataset.options": {"n_classes": 6, "train_size": 120, "test_size": 60},
                 "multi_encoder.epochs": 2, "memory.size": 12}


def run(tmp_path, monkeypatch, sets):
    """The run's results.json, its TensorBoard scalars {tag: [(step, value)]} and the bins
    the reliability diagram was drawn from."""
    drawn = []
    real = plots.reliability_diagram

    def recording(bins, title=""):
        drawn.append(bins)
        return real(bins, title)

    monkeypatch.setattr(plots, "reliability_diagram", recording)
    config = load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    experiment.run_experiment(config, tmp_path / "run", progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)]
               for tag in events.Tags()["scalars"]}
    return results, scalars, drawn


def expected_scalars(results):
    """Every number of results.json per step, by TensorBoard tag, read off the document."""
    steps = range(results["completed_experiences"])
    rows = [row[: t + 1] for t, row in enumerate(results["accuracy_matrix"])]
    out = {}

    def put(tag, step, value):
        out.setdefault(tag, []).append((step, value))

    for t in steps:
        for k in range(t + 1):
            put(f"accuracy/experience_{k:03d}", t, results["accuracy_matrix"][t][k])
        for key in ("step_accuracy", "step_accuracy_task_mean", "task_aware_accuracy", "ece"):
            put(f"summary/{key}", t, results[key][t])
        for name, value in results["calibration"][t].items():
            put(f"calibration/{name}", t, value)
        last = t == results["completed_experiences"] - 1
        put("summary/avg_incremental_accuracy", t, results["avg_incremental_accuracy"] if last
            else metrics.average_incremental_accuracy(results["step_accuracy"][: t + 1]))
        if t > 0:
            put("summary/bwt", t, results["bwt"] if last else metrics.backward_transfer(rows[: t + 1]))
            put("summary/forgetting", t, results["forgetting"] if last
                else metrics.forgetting(rows[: t + 1]))
        if results["reliability"] and results["reliability"][t]:
            for name, value in results["reliability"][t].items():
                if name != "step":
                    put(f"reliability/{name}", t, value)
    for kind in ("novelty", "novelty_external"):
        for entry in results[kind]:
            for score, values in entry["scores"].items():
                for name in ("auroc", "aupr", "fpr95"):
                    put(f"{kind}/{score}_{name}", entry["step"], values[name])
    return out


@pytest.mark.parametrize("context,sets", [
    ("reference", CLAP), ("per_image", CLAP),
    ("mixed", {**CLAP, "eval.novelty_dataset": "synthetic"}), ("reference", MULTI_ENCODER)])
def test_tensorboard_and_results_json_agree_on_every_metric_at_every_step(
        tmp_path, monkeypatch, context, sets):
    results, scalars, drawn = run(tmp_path, monkeypatch,
                                  {**STREAM, **sets, "eval.context": context})
    assert results["completed_experiences"] == 3 and results["eval_context"] == context
    expected = expected_scalars(results)
    assert len(results["novelty"]) == 2 and "calibration/nll" in expected
    assert len(results["novelty_external"]) == (3 if sets.get("eval.novelty_dataset") else 0)
    assert "reliability/VRR" in expected          # both models are multimodal
    for tag, points in expected.items():
        # TensorBoard stores float32: the value written is the results.json value, rounded once
        assert scalars.get(tag) == [(t, float(np.float32(v))) for t, v in points], tag
    # the only other scalars are Avalanche's training curves: no second evaluation
    assert all("train_phase" in tag for tag in set(scalars) - set(expected)), set(scalars)
    # the reliability diagram's bins give the reported ECE of the last step exactly
    bins, = drawn
    assert bins.ece == results["ece"][-1] == results["calibration"][-1]["ece"]
    n_test = 60 if sets is MULTI_ENCODER else 8 * 6
    assert bins.counts.sum() == n_test and len(bins.counts) == metrics.ECE_BINS + 1
