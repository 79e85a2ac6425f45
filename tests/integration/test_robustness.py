"""Nothing lost, nothing orphaned: SIGTERM, a finished run's damaged results.json, temporaries
of killed runs, divergence without a NaN loss, NaN inputs, bad images from the command line."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import scenarios
from clap4cl.cli import main

SMALL = ["--set", "dataset.name=synthetic", "--set", "dataset.n_experiences=3",
         "--set", "dataset.options={n_classes: 6, train_per_class: 30, test_per_class: 10}",
         "--set", "logging.tensorboard=false"]
ADAPTER = [*SMALL, "--set", "method=clip_adapter", "--set", "clip_adapter.epochs=2"]
LONG = ["--set", "dataset.name=synthetic", "--set", "dataset.n_experiences=4",
        "--set", "dataset.options={n_classes: 8, train_per_class: 60, test_per_class: 10}",
        "--set", "clap.epochs=4", "--set", "logging.tensorboard=false"]


def cli(*args, cwd=None):
    return subprocess.Popen([sys.executable, "-m", "clap4cl.cli", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def completed(run_dir):
    try:
        return json.loads((run_dir / "results.json").read_text())["completed_experiences"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sigterm_stops_with_one_line_exit_143_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = cli("run", "--quiet", "--output", str(run), *LONG)
    deadline = time.time() + 300
    while completed(run) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.count("\n") == 1 and "SIGTERM" in err and "run the same command again" in err
    assert "Traceback" not in err
    assert 1 <= completed(run) < 4
    assert main(["run", "--quiet", "--output", str(run), *LONG]) == 0
    assert completed(run) == 4


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--quiet", "--output", str(run), *ADAPTER]) == 0
    return run, json.loads((run / "results.json").read_text())


@pytest.mark.parametrize("damage", ["truncated", "deleted", "empty", "not_an_object"])
def test_a_finished_run_rebuilds_its_damaged_results_json(finished, damage):
    run, original = finished
    path = run / "results.json"
    if damage == "deleted":
        path.unlink()
    else:
        path.write_text({"truncated": path.read_text()[:100], "empty": "",
                         "not_an_object": "[1, 2]"}[damage])
    assert main(["run", "--quiet", "--output", str(run), *ADAPTER]) == 0
    rebuilt = json.loads(path.read_text())
    assert {k: v for k, v in rebuilt.items() if k != "timing"} == \
        {k: v for k, v in original.items() if k != "timing"}
    assert set(rebuilt["timing"]) == set(original["timing"])


def test_temporaries_of_a_killed_run_are_removed_on_the_next_run(finished):
    run, _ = finished
    dead, alive = dead_pid(), os.getpid()
    orphans = [run / f"checkpoint.pkl.tmp{dead}", run / f"results.tmp{dead}"]
    live = run / f"checkpoint.pkl.tmp{alive}"  # a writer that is still running
    for path in [*orphans, live]:
        path.write_bytes(b"\0" * 1000)
    assert main(["run", "--quiet", "--output", str(run), *ADAPTER]) == 0
    assert not any(p.exists() for p in orphans)
    assert live.exists()
    live.unlink()


def test_divergence_without_a_non_finite_loss_is_one_line(tmp_path, capsys):
    code = main(["run", "--quiet", "--output", str(tmp_path / "run"), *ADAPTER,
                 "--set", "clip_adapter.lr=100000000.0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "training diverged in experience 0" in err and "lower the learning rate" in err
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.fixture
def nan_features(monkeypatch):
    """The synthetic stream with NaN in one training and one test feature."""
    real = scenarios.get_feature_dataset

    def poisoned(*args, **kwargs):
        data = real(*args, **kwargs)
        train, test = data.train_features.copy(), data.test_features.copy()
        train[0, 0] = test[0, 0] = np.nan
        return dataclasses.replace(data, train_features=train, test_features=test)

    monkeypatch.setattr(scenarios, "get_feature_dataset", poisoned)


@pytest.mark.parametrize("method", ["zeroshot", "clip_adapter", "clap"])
def test_nan_input_features_are_named_as_the_cause(tmp_path, capsys, nan_features, method):
    args = ADAPTER if method == "clip_adapter" else [*SMALL, "--set", f"method={method}",
                                                      "--set", "clap.epochs=1"]
    code = main(["run", "--quiet", "--output", str(tmp_path / "run"), *args,
                 "--set", f"method={method}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "input features" in err and "NaN or infinite" in err
    assert "learning rate" not in err


# ---- bad images through the command line ---------------------------------------------------
def image_folder(root, bad):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (16, 16, 3)).astype(np.uint8)).save(
                    root / split / name / f"{i}.png")
    for rel in bad:
        (root / rel).write_bytes(b"")
    return root


BAD = ["train/cat/zero.png", "test/dog/zero.png"]


def folder_args(tmp_path, root):
    return ["--set", "dataset.name=image_folder", "--set", f"dataset.root={root}",
            "--set", "dataset.n_experiences=1", "--set", "method=zeroshot",
            "--set", f"cache.dir={tmp_path / 'cache'}", "--set", "logging.tensorboard=false",
            "--set", "eval.novelty=false"]


def test_bad_images_are_skipped_with_one_warning_line_each_and_counted(tmp_path):
    root = image_folder(tmp_path / "data", BAD)
    proc = cli("run", "--quiet", "--output", str(tmp_path / "run"), *folder_args(tmp_path, root))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    warned = [line for line in err.splitlines() if "skipped image" in line]
    assert len(warned) == len(BAD)
    for rel in BAD:
        assert sum(str(root / rel) in line and "empty" in line for line in warned) == 1
    assert all(line.startswith("clap4cl: warning: ") for line in warned)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["skipped_images"] == len(BAD)


def test_on_bad_image_error_is_one_line_naming_the_file(tmp_path, capsys):
    root = image_folder(tmp_path / "data", BAD[1:])
    code = main(["extract", "--quiet", *folder_args(tmp_path, root),
                 "--set", "dataset.on_bad_image=error"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(root / BAD[1]) in err and "empty" in err
