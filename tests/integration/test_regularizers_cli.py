"""The regularisers through `clap4cl run`: config, results.json's before/after, errors."""
import json

import pytest

from clap4cl.cli import main
from clap4cl.runner.config import default_config_path, load_config
from clap4cl.runner.experiment import run_experiment

CONFIGS = default_config_path().parent


def quiet(config, tmp_path):
    config["logging"].update(progress=False, tensorboard=False)
    config["cache"]["dir"] = str(tmp_path / "cache")
    return config


def test_cml_on_the_multi_encoder_halves_the_violation_rate_in_results_json(tmp_path):
    config = quiet(load_config(CONFIGS / "two_modality_cml.yaml"), tmp_path)
    results = run_experiment(config, tmp_path / "run")
    effect = results["plugin_effect"]
    assert results["plugins"] == ["modality_dropout", "cml"]
    assert effect["baseline_plugins"] == ["modality_dropout"]
    assert effect["vrr_after"] <= 0.5 * effect["vrr_before"]
    assert effect["last_accuracy_after"] >= effect["last_accuracy_before"] - 0.02
    assert [r["step"] for r in results["reliability"]] == [0, 1]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["plugin_effect"] == effect
    assert (tmp_path / "run" / "baseline" / "results.json").is_file()


def test_cml_on_clap_reports_guidance_and_null_image_violations(tmp_path):
    config = quiet(load_config(CONFIGS / "synthetic_clap_cml.yaml"), tmp_path)
    config["dataset"]["n_experiences"] = 2
    config["dataset"]["options"] = {"n_classes": 6}
    results = run_experiment(config, tmp_path / "run")
    last = results["reliability"][-1]
    assert {"VRR/without_guidance", "VRR/without_image+guidance", "SubsetAcc/none",
            "PriorNewestTaskMass"} <= set(last)
    assert 0 <= last["VRR"] <= 1 and 0 <= last["PriorNewestTaskMass"] <= 1
    effect = results["plugin_effect"]
    assert effect["vrr_before"] is not None and effect["vrr_after"] is not None
    assert results["baseline"]["reliability"][-1]["step"] == 1


def test_regularised_run_interrupted_after_one_experience_resumes_to_the_same_results(
        tmp_path, monkeypatch):
    import strategies.multi_encoder as me

    config = quiet(load_config(CONFIGS / "two_modality_cml.yaml"), tmp_path)
    config["eval"]["baseline_without_regularizers"] = False
    config["plugins"].append({"name": "mar", "mining_epochs": [1, 1], "begin_epoch": 1})
    config["multi_encoder"]["epochs"] = 3
    whole = run_experiment(config, tmp_path / "whole")
    real_train, calls = me.AdamNaive.train, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(me.AdamNaive, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "split")
    monkeypatch.setattr(me.AdamNaive, "train", real_train)
    resumed = run_experiment(config, tmp_path / "split")
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    assert resumed["reliability"] == whole["reliability"]


@pytest.mark.parametrize("setting, message", [
    ("plugins=[{name: cmll}]", "unknown plugin 'cmll'"),
    ("plugins=[{name: cml, wieght: 1}]", "plugin cml has no option 'wieght'"),
    ("plugins=[{name: cml, pairs: some}]", "pairs must be one of"),
    ("method=multi_encoder", "cannot run on dataset 'digits'"),
])
def test_bad_plugin_settings_exit_2_with_one_line(setting, message, tmp_path, capsys):
    code = main(["run", "--set", setting, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
