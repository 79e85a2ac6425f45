"""Resumable runs: SIGKILL mid-stream, resume, same results; a diverging loss stops cleanly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import strategies
from clap4cl.runner import experiment
from clap4cl.cli import main
from clap4cl.runner.config import load_config

ARGS = ["--set", "dataset.name=synthetic", "--set", "dataset.n_experiences=4",
        "--set", "dataset.options={n_classes: 8, train_per_class: 60, test_per_class: 10}",
        "--set", "clap.epochs=4", "--set", "logging.tensorboard=false"]


def results_without_timing(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    results.pop("timing")
    return results


def _default_sigint():
    # A shell without job control starts background commands with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: the Ctrl-C test would see the
    # child finish (exit 0) when pytest itself runs in the background (`pytest &`).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(run_dir):
    return subprocess.Popen([sys.executable, "-m", "clap4cl.cli", "run", "--quiet", "--output",
                             str(run_dir), *ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)


def completed(run_dir):
    try:
        return json.loads((run_dir / "results.json").read_text())["completed_experiences"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_during_the_third_experience_then_resume_gives_the_uninterrupted_result(tmp_path):
    assert main(["run", "--quiet", "--output", str(tmp_path / "whole"), *ARGS]) == 0
    proc = start_run(tmp_path / "killed")
    deadline = time.time() + 300
    while completed(tmp_path / "killed") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert completed(tmp_path / "killed") == 2              # killed inside the third experience
    assert main(["run", "--quiet", "--output", str(tmp_path / "killed"), *ARGS]) == 0
    assert results_without_timing(tmp_path / "killed") == results_without_timing(tmp_path / "whole")


def test_a_finished_run_is_not_trained_again(tmp_path, monkeypatch):
    config = load_config(None, [a for a in ARGS if a != "--set"])
    first = experiment.run_experiment(config, tmp_path / "run", progress=False)
    monkeypatch.setattr(strategies.CLAP, "train", lambda *a, **k: pytest.fail("trained again"))
    again = experiment.run_experiment(config, tmp_path / "run", progress=False)
    first.pop("timing"), again.pop("timing")
    assert again == first


def test_non_finite_loss_stops_with_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    real_loss = strategies.clap.clap_loss

    def diverging(model, out, targets, tasks, **kwargs):
        loss = real_loss(model, out, targets, tasks, **kwargs)
        return loss * float("nan") if model.heads.n_tasks == 2 else loss

    monkeypatch.setattr(strategies.clap, "clap_loss", diverging)
    code = main(["run", "--quiet", "--output", str(tmp_path / "run"), *ARGS])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "the loss is nan at experience 1, epoch 0, iteration 0" in err
    assert completed(tmp_path / "run") == 1 and (tmp_path / "run" / "checkpoint.pkl").is_file()
    monkeypatch.setattr(strategies.clap, "clap_loss", real_loss)
    assert main(["run", "--quiet", "--output", str(tmp_path / "run"), *ARGS]) == 0
    assert completed(tmp_path / "run") == 4


def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--quiet", "--output", str(tmp_path / "run"), *ARGS]) == 0
    (tmp_path / "run" / "checkpoint.pkl").write_bytes(b"not a checkpoint")
    assert main(["run", "--quiet", "--output", str(tmp_path / "run"), *ARGS]) == 2
    assert "delete it" in capsys.readouterr().err


def test_ctrl_c_leaves_a_resumable_run_directory(tmp_path):
    proc = start_run(tmp_path / "run")
    deadline = time.time() + 300
    while completed(tmp_path / "run") < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"run the same command again to resume" in err, \
        (proc.returncode, completed(tmp_path / "run"), err.decode(errors="replace")[-2000:])
    assert main(["run", "--quiet", "--output", str(tmp_path / "run"), *ARGS]) == 0
    assert completed(tmp_path / "run") == 4


def test_feature_datasets_pickle_as_recipe_or_file_path(tmp_path):
    import pickle

    import numpy as np
    import torch

    import scenarios
    from scenarios.features import FeatureDataset

    bench = scenarios.class_incremental("synthetic", n_experiences=2, n_classes=4,
                                        train_per_class=50, test_per_class=5)
    base = bench.train_stream[0].dataset.eval()
    blob = pickle.dumps(base)
    assert len(blob) < 20_000                      # 200 x 64 x 2 float32 would be 100 kB
    restored = pickle.loads(blob)
    assert all(torch.equal(restored[i][0], base[i][0]) for i in range(len(base)))

    path = tmp_path / "views.npy"
    np.save(path, np.arange(40, dtype=np.float16).reshape(10, 4))
    mapped = FeatureDataset([np.load(path, mmap_mode="r")], list(range(10)))
    blob = pickle.dumps(mapped)
    assert len(blob) < 1000 and torch.equal(pickle.loads(blob)[3][0], mapped[3][0])
