"""Evaluation is reproducible and never changes training: its Monte-Carlo samples come
from generators keyed on (run seed, step, evaluated data), not from the global RNG."""
import json

import numpy as np
import pytest
import torch

from clap4cl.runner import evaluate, experiment
from clap4cl.runner.config import load_config

SMALL = {"dataset.name": "synthetic", "dataset.n_experiences": 3, "logging.tensorboard": False,
         "method": "clap", "clap.epochs": 1, "clap.finetune_epochs": 1, "clap.mc_samples": 4,
         "clap.vga_ffn_dim": 32,
         "dataset.options": {"n_classes": 6, "train_per_class": 20, "test_per_class": 10}}


def config_with(**overrides):
    sets = {**SMALL, **overrides}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])


def test_evaluation_draws_nothing_from_the_global_rng(tmp_path, monkeypatch):
    real, changed = experiment.evaluate_step, []

    def watched(*args, **kwargs):
        before = torch.get_rng_state().clone()
        out = real(*args, **kwargs)
        changed.append(not torch.equal(before, torch.get_rng_state()))
        return out

    monkeypatch.setattr(experiment, "evaluate_step", watched)
    results = experiment.run_experiment(config_with(**{"eval.novelty_dataset": "synthetic"}),
                                        tmp_path / "run", progress=False)
    assert changed == [False, False, False]
    assert results["reliability"] is not None and len(results["novelty_external"]) == 3


def test_extra_evaluation_does_not_change_the_accuracy_matrix(tmp_path, monkeypatch):
    full = experiment.run_experiment(config_with(**{"eval.novelty_dataset": "synthetic"}),
                                     tmp_path / "full", progress=False)
    monkeypatch.setattr(evaluate, "reliability_entry", lambda *a, **k: None)
    plain = experiment.run_experiment(config_with(**{"eval.novelty": False}),
                                      tmp_path / "plain", progress=False)
    assert full["novelty"] and full["novelty_external"] and full["reliability"]
    assert not plain["novelty"] and not plain["novelty_external"] and plain["reliability"] is None
    assert full["accuracy_matrix"] == plain["accuracy_matrix"]
    assert full["ece"] == plain["ece"]


def test_the_same_model_evaluated_twice_gives_identical_numbers(tmp_path, monkeypatch):
    real, pairs = experiment.evaluate_step, []

    def twice(*args, **kwargs):
        first, second = real(*args, **kwargs), real(*args, **kwargs)
        pairs.append((dict(first), dict(second)))
        return second

    monkeypatch.setattr(experiment, "evaluate_step", twice)
    experiment.run_experiment(config_with(**{"eval.novelty_dataset": "synthetic"}),
                              tmp_path / "run", progress=False)
    assert len(pairs) == 3
    for first, second in pairs:
        plots = first.pop("plot_data"), second.pop("plot_data")
        assert first == second
        np.testing.assert_array_equal(plots[0]["reliability"][0], plots[1]["reliability"][0])


def test_eval_mc_samples_and_mean_only(tmp_path, monkeypatch):
    real, shapes, rows = evaluate.predict_logits, [], []

    def recording(model, datasets, *args, **kwargs):
        out = real(model, datasets, *args, **kwargs)
        shapes.extend(l.shape[1] for l, _ in out)
        return out

    monkeypatch.setattr(evaluate, "predict_logits", recording)
    config = config_with(**{"eval.mc_samples": 3, "eval.mean_only": True, "dataset.n_experiences": 2})
    real_step = experiment.evaluate_step

    def checked(strategy, collector, benchmark, step, *args, **kwargs):
        out = real_step(strategy, collector, benchmark, step, *args, **kwargs)
        # the closed-form mean τ⟨x̂, h + μ⟩, computed independently of the run
        model = strategy.model.eval()
        for k in range(step + 1):
            x = torch.stack([benchmark.test_stream[k].dataset.eval()[i][0]
                             for i in range(len(benchmark.test_stream[k].dataset))])
            y = torch.as_tensor(benchmark.test_stream[k].dataset.targets)
            mean = model.forward_samples(x, 0).logits[0]
            rows.append((out["row"][k], float((mean.argmax(1) == y).double().mean())))
        return out

    monkeypatch.setattr(experiment, "evaluate_step", checked)
    experiment.run_experiment(config, tmp_path / "run", progress=False)
    assert shapes and set(shapes) == {3}                    # novel data: M = eval.mc_samples
    assert rows and all(a == pytest.approx(b) for a, b in rows)
