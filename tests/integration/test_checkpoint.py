"""The run checkpoint is plain data: every method resumes bit-identically, planted or old
checkpoints are refused with one line and nothing in them runs."""
import json
import pickle

import pytest
import torch

from clap4cl.cli import main
from clap4cl.runner import checkpoint, experiment
from clap4cl.runner.config import default_config_path, load_config

CONFIGS = default_config_path().parent
SYNTHETIC = ["dataset.name=synthetic", "dataset.n_experiences=3",
             "dataset.options={n_classes: 6, train_per_class: 20, test_per_class: 8}",
             "clap.epochs=2", "clap.finetune_epochs=1", "clip_adapter.epochs=2",
             "memory.size=30", "logging.tensorboard=false", "logging.progress=false"]
TWO_MODALITY = ["method=multi_encoder", "dataset.name=two_modality", "dataset.n_experiences=2",
                "dataset.options={train_size: 300, test_size: 100}", "multi_encoder.epochs=2",
                "memory.size=40", "logging.tensorboard=false", "logging.progress=false"]
CLI_ARGS = [a for s in SYNTHETIC for a in ("--set", s)] + ["--set", "method=zeroshot"]


def config_of(settings, tmp_path, path=None):
    config = load_config(path, settings)
    config["cache"]["dir"] = str(tmp_path / "cache")
    return config


def stop_after_checkpoints(monkeypatch, n):
    """Make the run stop (as if killed) right after its n-th checkpoint."""
    real, saved = experiment.save_run_checkpoint, []

    def save_then_stop(strategy, output):
        real(strategy, output)
        saved.append(1)
        if len(saved) == n:
            raise KeyboardInterrupt
    monkeypatch.setattr(experiment, "save_run_checkpoint", save_then_stop)
    return real


def without_timing(results):
    return {k: v for k, v in results.items() if k != "timing"}


def assert_same_state(a, b, where="checkpoint"):
    """Two checkpoint documents (or parts) hold identical values, tensors bit for bit."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where      # NaN == NaN here


def final_state(run_dir):
    document = torch.load(run_dir / "checkpoint.pkl", weights_only=True)
    run_state = json.loads(document.pop("run_state"))
    run_state.pop("timer")
    run_state["results"].pop("timing")
    return document, run_state


def run_whole_and_resumed(config, tmp_path, monkeypatch, stop_after=1):
    whole = experiment.run_experiment(config, tmp_path / "whole")
    real = stop_after_checkpoints(monkeypatch, stop_after)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(config, tmp_path / "split")
    saved = torch.load(tmp_path / "split" / "checkpoint.pkl", weights_only=True)
    assert saved["next_experience"] == stop_after
    monkeypatch.setattr(experiment, "save_run_checkpoint", real)
    resumed = experiment.run_experiment(config, tmp_path / "split")
    assert without_timing(resumed) == without_timing(whole)
    (whole_doc, whole_run), (split_doc, split_run) = final_state(tmp_path / "whole"), \
        final_state(tmp_path / "split")
    assert split_run == whole_run
    assert_same_state(split_doc, whole_doc)
    return whole


@pytest.mark.parametrize("method", ["zeroshot", "clap", "clap_deterministic", "clip_adapter"])
def test_every_method_resumes_to_the_uninterrupted_run_bit_for_bit(method, tmp_path, monkeypatch):
    config = config_of([*SYNTHETIC, f"method={method}"], tmp_path)
    whole = run_whole_and_resumed(config, tmp_path, monkeypatch)
    assert whole["completed_experiences"] == 3


def test_clap_resumes_after_the_second_experience_with_uncertainty_selection(tmp_path, monkeypatch):
    config = config_of([*SYNTHETIC, "method=clap", "memory.selector=entropy"], tmp_path)
    run_whole_and_resumed(config, tmp_path, monkeypatch, stop_after=2)


def test_multi_encoder_resumes_with_adam_moments_and_its_replay_memory(tmp_path, monkeypatch):
    config = config_of(TWO_MODALITY, tmp_path)
    run_whole_and_resumed(config, tmp_path, monkeypatch)
    saved = torch.load(tmp_path / "split" / "checkpoint.pkl", weights_only=True)
    groups = next(v for k, v in saved["objects"].items() if "QuietReplayPlugin" in k)["groups"]
    assert [len(g["indices"]) for g in groups] == [20, 20]      # memory.size 40 over 2 experiences
    assert saved["strategy"]["optimizer"]["state"]              # Adam's moments are kept


def test_clap_with_modality_dropout_and_cml_resumes_bit_for_bit(tmp_path, monkeypatch):
    config = config_of(["dataset.n_experiences=3", "dataset.options={n_classes: 6, "
                        "train_per_class: 20, test_per_class: 8}", "clap.epochs=2",
                        "memory.size=30", "eval.baseline_without_regularizers=false",
                        "logging.tensorboard=false", "logging.progress=false"],
                       tmp_path, CONFIGS / "synthetic_clap_cml.yaml")
    config["plugins"][1]["pairs"] = "nested_chain"      # CML draws its drop orders too
    run_whole_and_resumed(config, tmp_path, monkeypatch)
    saved = torch.load(tmp_path / "split" / "checkpoint.pkl", weights_only=True)
    assert {k.split(":")[1] for k in saved["objects"]} >= {"ModalityDropoutPlugin", "CMLPlugin"}


def test_the_checkpoint_is_plain_data_without_strategy_objects(tmp_path):
    config = config_of([*SYNTHETIC, "method=clap", "dataset.n_experiences=2"], tmp_path)
    experiment.run_experiment(config, tmp_path / "run")
    document = torch.load(tmp_path / "run" / "checkpoint.pkl", weights_only=True)
    assert document["format"] == checkpoint.FORMAT and document["version"] == checkpoint.VERSION
    assert document["next_experience"] == 2
    assert document["clock"]["train_exp_counter"] == 2
    exemplars = document["memory"]["exemplars"]
    assert sorted(c for c, _, _ in exemplars) == list(range(6))
    assert all(len(idx) == 5 and all(isinstance(i, int) for i in idx) for _, _, idx in exemplars)
    assert set(document["rng"]) == {"torch", "torch.cuda", "numpy", "random"}
    assert document["rng"]["numpy"]["keys"].shape == (624,)
    assert json.loads(document["run_state"])["results"]["completed_experiences"] == 2
    assert document["model"]["_extra_state"] == {"task_sizes": [3, 3]}


def test_non_plain_state_is_refused_when_the_checkpoint_is_written():
    with pytest.raises(TypeError, match=r"checkpoint\['objects'\]\['x'\] is a object"):
        checkpoint.check_plain({"objects": {"x": object()}}, "checkpoint")


class Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def test_the_payload_runs_when_unpickled_so_the_refusal_tests_can_fail(tmp_path):
    pickle.loads(pickle.dumps(Payload(tmp_path / "marker")))
    assert (tmp_path / "marker").read_text() == "the payload ran"


def plant(path, marker, kind):
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"strategy": Payload(marker), "exp_counter": 1}))
    else:                                       # torch's zip format, as torch.save writes it
        torch.save({"strategy": Payload(marker), "exp_counter": 1}, path)


@pytest.mark.parametrize("kind", ["pickle", "torch_zip"])
def test_a_planted_checkpoint_is_refused_with_one_line_and_its_code_does_not_run(tmp_path, kind,
                                                                                capsys):
    run_dir, marker = tmp_path / "D", tmp_path / "marker"
    run_dir.mkdir()
    plant(run_dir / "checkpoint.pkl", marker, kind)
    assert main(["run", "--quiet", "--output", str(run_dir), *CLI_ARGS]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "is not a clap4cl checkpoint" in lines[0] and "checkpoint.pkl" in lines[0]
    assert not marker.exists()
    assert not (run_dir / "results.json").exists()


def test_a_checkpoint_of_an_older_version_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    from avalanche.checkpointing import save_checkpoint

    def old_writer(strategy, output):                # what clap4cl wrote before 0.2
        save_checkpoint(strategy, str(output / "checkpoint.pkl"))
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "save_run_checkpoint", old_writer)
    assert main(["run", "--quiet", "--output", str(tmp_path / "D"), *CLI_ARGS]) == 130
    monkeypatch.undo()
    assert checkpoint.written_by_old_version(tmp_path / "D" / "checkpoint.pkl")
    capsys.readouterr()
    assert main(["run", "--quiet", "--output", str(tmp_path / "D"), *CLI_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("written by an older version of clap4cl: run directories from before 0.2 are "
            "refused: delete checkpoint.pkl to start again") in err


def test_a_checkpoint_that_does_not_fit_the_run_is_a_one_line_error(tmp_path, monkeypatch):
    from clap4cl.errors import UserError

    config = config_of([*SYNTHETIC, "method=clap"], tmp_path)
    real = stop_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(config, tmp_path / "run")
    monkeypatch.setattr(experiment, "save_run_checkpoint", real)
    document = torch.load(tmp_path / "run" / "checkpoint.pkl", weights_only=True)
    document["next_experience"] = 7
    torch.save(document, tmp_path / "run" / "checkpoint.pkl")
    with pytest.raises(UserError, match="does not fit this run .*outside the stream of 3"):
        experiment.run_experiment(config, tmp_path / "run")


def test_library_strategies_resume_with_avalanche_forgetting_and_bwt_metrics(tmp_path):
    """The checkpoint functions on a strategy built in Python, whose evaluator carries
    Avalanche's forgetting and BWT metrics (state across experiences) too."""
    import warnings

    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.training.determinism.rng_manager import RNGManager
    from avalanche.training.plugins import EvaluationPlugin

    import scenarios
    from clap4cl.runner import assemble
    from clap4cl.runner.config import defaults

    bench = scenarios.class_incremental("synthetic", n_experiences=3, run=0, n_classes=6,
                                        train_per_class=20, test_per_class=8)
    config = defaults()
    config["clap"].update(epochs=2, finetune_epochs=1, mc_samples=4, vga_ffn_dim=32)
    config["memory"]["size"] = 30

    def fresh():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified")
            evaluator = EvaluationPlugin(accuracy_metrics(stream=True),
                                         forgetting_metrics(experience=True, stream=True),
                                         bwt_metrics(experience=True, stream=True), loggers=[])
        return assemble.build_from_config(config, text_features=bench.text_features,
                                          logit_scale=100.0, evaluator=evaluator)

    def train_and_eval(strategy, steps):
        results = None
        for k in steps:
            strategy.train(bench.train_stream[k])
            results = strategy.eval(bench.test_stream[: k + 1])
        return results

    RNGManager.set_random_seeds(3)
    expected = train_and_eval(fresh(), range(3))
    RNGManager.set_random_seeds(3)
    interrupted = fresh()
    train_and_eval(interrupted, range(2))
    checkpoint.save_checkpoint(interrupted, {}, tmp_path / "checkpoint.pkl")
    del interrupted
    RNGManager.set_random_seeds(99)                  # the crashed process's RNG is gone
    resumed = fresh()
    start, run_state = checkpoint.load_checkpoint(resumed, tmp_path / "checkpoint.pkl",
                                                  bench.train_stream)
    assert (start, run_state) == (2, {"plot_data": {}})
    got = train_and_eval(resumed, range(start, 3))
    forgetting = "StreamForgetting/eval_phase/test_stream"
    assert got[forgetting] == expected[forgetting] and expected[forgetting] != 0
    assert got == expected
