"""The clap4cl command line: the default run, its contracts and bad input."""
import json

import pytest

from clap4cl.cli import main
from cli_helper import run_cli  # pytest puts tests/integration on sys.path


def test_default_run_writes_the_contract(default_cli_run):
    code, root = default_cli_run
    assert code == 0
    results = json.loads((root / "run" / "results.json").read_text())
    assert results["method"] == "clap" and results["dataset"] == "digits"
    assert results["eval_context"] == "per_image"
    assert results["n_experiences"] == 5 and results["completed_experiences"] == 5
    flat = [c for exp in results["classes_per_experience"] for c in exp]
    assert sorted(flat) == list(range(10))
    matrix = results["accuracy_matrix"]
    for t, row in enumerate(matrix):
        assert all(v is None for v in row[t + 1:]) and all(0 <= v <= 1 for v in row[: t + 1])
    assert len(results["step_accuracy"]) == 5 and len(results["ece"]) == 5
    assert set(results["calibration"][0]) == {"ece", "ece_batch_mean", "nll", "brier", "aurc", "eaurc"}
    assert [c["ece"] for c in results["calibration"]] == results["ece"]
    assert results["last_accuracy_task_mean"] == pytest.approx(sum(matrix[-1]) / 5)
    assert all(a >= s - 1e-12 for a, s in zip(results["task_aware_accuracy"], results["step_accuracy"]))
    assert results["last_accuracy"] == results["step_accuracy"][-1]
    assert [n["step"] for n in results["novelty"]] == [0, 1, 2, 3]
    assert all(0 <= n["auroc"] <= 1 for n in results["novelty"])
    assert set(results["timing"]) == {"extract", "train", "eval"}
    assert (root / "run" / "config.yaml").is_file()
    assert any((root / "run" / "tensorboard").rglob("events.out.tfevents*"))
    assert sorted(p.name for p in (root / "run" / "plots").glob("*.png")) == sorted(
        ["accuracy_matrix.png", "accuracy_per_step.png", "novelty_roc.png", "reliability.png"])


SYNTHETIC_SMALL = ["--set", "dataset.name=synthetic", "--set", "dataset.n_experiences=3",
                   "--set", "dataset.options={n_classes: 6, train_per_class: 20, test_per_class: 10}",
                   "--set", "logging.tensorboard=false"]


@pytest.mark.parametrize("method", ["zeroshot", "clap_deterministic", "clip_adapter"])
def test_every_method_runs_from_the_cli(tmp_path, method):
    code = main(["run", "--quiet", "--output", str(tmp_path / "run"), "--set", f"method={method}",
                 "--set", "clap.epochs=1", "--set", "clip_adapter.epochs=1", *SYNTHETIC_SMALL])
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == method and results["completed_experiences"] == 3
    if method == "zeroshot":
        # Zero-shot learns nothing, and an experience's own classes are always among the
        # candidates, yet new classes compete: accuracy on experience 0 can only drop or stay.
        col0 = [row[0] for row in results["accuracy_matrix"]]
        assert all(b <= a + 1e-12 for a, b in zip(col0, col0[1:]))


def test_rerun_with_warm_cache_does_not_extract(default_cli_run, tmp_path):
    _, root = default_cli_run
    files = sorted((root / "cache" / "features").glob("*.npy"))
    assert len(files) == 3  # train original + train flip + test original
    stamps = [f.stat().st_mtime_ns for f in files]
    code, _ = run_cli("run", "--quiet", "--output", str(tmp_path / "again"), cwd=root,
                      env_cache=root / "cache")
    assert code == 0
    assert sorted((root / "cache" / "features").glob("*.npy")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    first = json.loads((root / "run" / "results.json").read_text())
    second = json.loads((tmp_path / "again" / "results.json").read_text())
    assert first["accuracy_matrix"] == second["accuracy_matrix"]


def test_foreign_run_directory_is_refused(default_cli_run, capsys):
    _, root = default_cli_run
    code, err = run_cli("run", "--quiet", "--set", "run=1", "--output", str(root / "run"),
                        cwd=root, env_cache=root / "cache", capsys=capsys)
    assert code == 2
    assert "different config" in err and "Traceback" not in err


@pytest.mark.parametrize("args, fragment", [
    (["--set", "dataset.name=nonexistent"], "digits"),
    (["--set", "backbone.arch=ViT-Z-99"], "tiny-vit"),
    (["--set", "dataset.nope=1"], "unknown config key"),
    (["--set", "dataset.n_experiences=five"], "must be int"),
    (["--set", "dataset.class_order=[0,1,2]"], "permutation"),
    (["--set", "dataset.n_experiences=11"], "experiences"),
    (["--set", "dataset.name=cifar100", "--set", "dataset.root=/nonexistent/data"], "download"),
    (["--set", "eval.context=sometimes"], "per_image"),
    (["--config", "/nonexistent.yaml"], "not found"),
    (["--set", "novalue"], "key=value"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.setenv("CLAP4CL_CACHE", str(tmp_path / "cache"))
    code = main(["run", "--quiet", "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("clap4cl: error:")
    assert fragment in err


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_extract_then_report(default_cli_run, tmp_path, capsys, monkeypatch):
    _, root = default_cli_run
    monkeypatch.setenv("CLAP4CL_CACHE", str(root / "cache"))
    assert main(["extract", "--quiet"]) == 0
    assert main(["report", str(root / "run")]) == 0
    table = capsys.readouterr().out
    assert "| clap | digits |" in table


def test_seeds_run_into_subdirectories_with_an_aggregate_table(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["run", "--quiet", "--output", str(out), "--seeds", "0", "1",
                 "--set", "dataset.name=synthetic", "--set", "dataset.n_experiences=2",
                 "--set", "dataset.options={n_classes: 6, train_per_class: 20, test_per_class: 10}",
                 "--set", "logging.tensorboard=false"])
    assert code == 0
    orders = [json.loads((out / f"run{k}" / "results.json").read_text())["class_order"] for k in (0, 1)]
    assert orders[0] != orders[1]  # class orders 1993 and 1994
    table = (out / "report.md").read_text()
    assert "| clap | synthetic |" in table and "| 2 |" in table and "±" in table
    assert table.strip() in capsys.readouterr().out


def test_same_config_gives_identical_results(tmp_path):
    args = ["run", "--quiet", "--set", "clap.epochs=1", *SYNTHETIC_SMALL]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--output", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    a.pop("timing"), b.pop("timing")
    assert a == b
