"""With CLAP's per-image context the reliability report is formed from the evaluation's own
forward passes (clap4cl.runner.reliability.SharedReliabilityPass): the same numbers as the
report computed alone, to fp32 rounding, with the VGA run once per seen test image
instead of twice."""
import contextlib
import json

import pytest

from clap4cl.models.clap.layers import VisualGuidedAttention
from clap4cl.runner import experiment, reliability
from clap4cl.runner.config import load_config

from test_results_pinned import differences

# 14 test images per experience in batches of 5: evaluation chunks straddle the report's batches.
SETS = {"dataset.name": "synthetic", "dataset.n_experiences": 3, "logging.tensorboard": False,
        "dataset.options": {"n_classes": 6, "train_per_class": 12, "test_per_class": 7},
        "eval.batch_size": 5, "eval.novelty": False, "method": "clap", "clap.epochs": 1,
        "clap.finetune_epochs": 1, "clap.mc_samples": 3, "clap.vga_ffn_dim": 16,
        "memory.size": 12}


def run(tmp_path, monkeypatch, name, shared: bool, **overrides):
    """results.json's reliability entries, the passes used and the images the VGA saw."""
    passes, images_attended = [], []
    real_for_step, real_attend = reliability.SharedReliabilityPass.for_step, \
        VisualGuidedAttention._attend_images

    def for_step(*args, **kwargs):
        made = real_for_step(*args, **kwargs) if shared else None
        passes.append(made)
        return made

    def attend(self, x, images, factored):
        images_attended.append(images.shape[0])
        return real_attend(self, x, images, factored)

    monkeypatch.setattr(reliability.SharedReliabilityPass, "for_step", for_step)
    monkeypatch.setattr(VisualGuidedAttention, "_attend_images", attend)
    config = load_config(None, [f"{k}={json.dumps(v)}" for k, v in {**SETS, **overrides}.items()])
    results = experiment.run_experiment(config, tmp_path / name, progress=False)
    monkeypatch.undo()
    return results["reliability"], passes, sum(images_attended)


@pytest.mark.parametrize("overrides", [{}, {"eval.mean_only": True, "eval.mc_samples": 2}])
def test_shared_reliability_equals_the_report_computed_alone(tmp_path, monkeypatch, overrides):
    alone, _, attended_alone = run(tmp_path, monkeypatch, "alone", False, **overrides)
    shared, passes, attended_shared = run(tmp_path, monkeypatch, "shared", True, **overrides)
    assert len(passes) == 3 and all(p is not None and p.complete for p in passes)
    assert alone and all(entry["VRR"] is not None for entry in alone)
    assert differences(alone, shared, tolerance=(1e-6, 1e-6)) == []
    # seen test images per step: 14, 28, 42; the report no longer runs the VGA on them
    assert attended_alone - attended_shared == 14 + 28 + 42


def test_an_unwatched_evaluation_falls_back_to_the_report(tmp_path, monkeypatch):
    """Rows the pass never saw (here: it watches nothing) leave it incomplete; the step
    then computes the report alone, with a fresh generator, and gets its numbers."""
    alone, _, _ = run(tmp_path, monkeypatch, "alone", False)
    monkeypatch.setattr(reliability.SharedReliabilityPass, "watching",
                        lambda self: contextlib.nullcontext())
    fallback, passes, _ = run(tmp_path, monkeypatch, "fallback", True)
    assert passes and not any(p.complete for p in passes)
    assert differences(alone, fallback, tolerance=(1e-6, 1e-6)) == []

