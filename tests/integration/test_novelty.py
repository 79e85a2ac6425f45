"""Novelty detection: the seen / future protocol, every score, external novel data, logs and plots."""
import json

import numpy as np
import pytest
import torch

from clap4cl.runner import evaluate, experiment, plots
from clap4cl.evaluation import metrics, scores as uncertainty
from clap4cl.cli import main
from clap4cl.runner.config import load_config

SMALL = {"dataset.name": "synthetic", "dataset.n_experiences": 3, "logging.tensorboard": False,
         "dataset.options": {"n_classes": 6, "train_per_class": 20, "test_per_class": 10}}


def config_with(**overrides):
    sets = {**SMALL, **overrides}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])


def test_novel_data_is_exactly_the_future_classes_at_each_step(tmp_path, monkeypatch):
    calls = []
    real_curves = evaluate.roc_curves
    real_predict = evaluate.predict_logits

    def recording_predict(model, datasets, *args, **kwargs):
        out = real_predict(model, datasets, *args, **kwargs)
        calls.append(("novel", sorted({int(t) for _, y in out for t in y})))
        return out

    def recording_curves(id_samples, ood_samples):
        calls.append(("sizes", (len(id_samples), len(ood_samples))))
        return real_curves(id_samples, ood_samples)

    monkeypatch.setattr(evaluate, "predict_logits", recording_predict)
    monkeypatch.setattr(evaluate, "roc_curves", recording_curves)
    results = experiment.run_experiment(config_with(method="zeroshot"), tmp_path / "run", progress=False)
    seen_per_step = [cls for cls in results["classes_per_experience"]]
    novel_calls = [c for kind, c in calls if kind == "novel" and c]
    sizes = [c for kind, c in calls if kind == "sizes"]
    assert novel_calls == [[2, 3, 4, 5], [4, 5]]             # labels of the future experiences
    assert sizes == [(20, 40), (40, 20)]                      # 10 test images per class
    assert [n["step"] for n in results["novelty"]] == [0, 1]
    assert sorted(c for cls in seen_per_step for c in cls) == list(range(6))


def test_every_score_is_reported_and_oriented(tmp_path):
    results = experiment.run_experiment(config_with(method="clap", **{"clap.epochs": 2}),
                                        tmp_path / "run", progress=False)
    entry = results["novelty"][0]
    assert set(entry["scores"]) == set(uncertainty.NOVELTY_SCORES)
    assert entry["auroc"] == entry["scores"]["energy"]["auroc"]
    mean = results["novelty_mean"]
    assert mean["energy"]["auroc"] == pytest.approx(np.mean([n["auroc"] for n in results["novelty"]]))
    assert mean["energy"]["auroc"] > 0.7                      # CLAP tells seen from future classes
    assert sorted(p.name for p in (tmp_path / "run" / "plots").iterdir()) == sorted(plots.PLOT_FILES)


def test_scores_metrics_match_the_single_score_path():
    gen = torch.Generator().manual_seed(0)
    id_samples = torch.randn(30, 4, 5, generator=gen) * 3
    ood_samples = torch.randn(20, 4, 5, generator=gen)
    out = metrics.novelty_scores_metrics(id_samples.numpy(), ood_samples.numpy())
    energy = metrics.novelty_metrics(uncertainty.energy(id_samples).numpy(),
                                     uncertainty.energy(ood_samples).numpy())
    assert out["energy"] == energy
    entropy = metrics.novelty_metrics(-uncertainty.entropy(id_samples).numpy(),
                                      -uncertainty.entropy(ood_samples).numpy())
    assert out["entropy"] == entropy


def test_external_novel_dataset_is_scored_at_every_step(tmp_path):
    config = config_with(method="zeroshot", **{"eval.novelty_dataset": "synthetic"})
    results = experiment.run_experiment(config, tmp_path / "run", progress=False)
    assert [n["step"] for n in results["novelty_external"]] == [0, 1, 2]
    assert results["novelty_external_dataset"] == "synthetic"
    assert set(results["novelty_external_mean"]) == set(uncertainty.NOVELTY_SCORES)


def test_external_images_against_synthetic_features_is_refused(tmp_path, capsys):
    code = main(["run", "--quiet", "--output", str(tmp_path / "run"), "--set", "dataset.name=synthetic",
                 "--set", "eval.novelty_dataset=digits"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "eval.novelty_dataset" in err


def test_tensorboard_gets_every_score_per_step_and_the_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = config_with(method="zeroshot", **{"logging.tensorboard": True})
    experiment.run_experiment(config, tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for score in uncertainty.NOVELTY_SCORES:
        assert [e.step for e in events.Scalars(f"novelty/{score}_auroc")] == [0, 1]
    assert {f"plots/{name[:-4]}" for name in plots.PLOT_FILES} <= set(events.Tags()["images"])
    assert "summary/step_accuracy" in scalars


def test_reliability_bins_hand_computed():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct) with 10 bins (+ the 1.0 slot)
    logits = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]]))
    bins = metrics.calibration_bins(logits, np.array([0, 1, 0]), n_bins=10)
    assert bins.counts.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 2, 0]
    assert bins.accuracy[9] == pytest.approx(0.5) and bins.confidence[9] == pytest.approx(0.9)
    assert bins.accuracy[6] == 1.0 and bins.confidence[6] == pytest.approx(0.6)
    assert bins.ece == pytest.approx((2 / 3) * 0.4 + (1 / 3) * 0.4)


def test_the_novelty_pairing_check_reads_dataset_names_as_the_registry_does():
    from clap4cl.errors import UserError
    from clap4cl.runner.inputs import check_novelty_dataset

    check_novelty_dataset(load_config(None, ["dataset.name=Synthetic",
                                             "eval.novelty_dataset=synthetic"]))
    with pytest.raises(UserError, match="cannot be compared"):
        check_novelty_dataset(load_config(None, ["dataset.name=Synthetic",
                                                 "eval.novelty_dataset=digits"]))
