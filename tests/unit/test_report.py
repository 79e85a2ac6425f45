"""`clap4cl report`: grouping by the whole config, duplicate seeds, damaged results files."""
import json

import pytest

from clap4cl.cli import main
from clap4cl.errors import UserError
from clap4cl.runner.config import dump, load_config
from clap4cl.runner.report import markdown_report


def write_run(directory, *, run=0, last=0.5, sets=()):
    directory.mkdir(parents=True)
    config = load_config(None, [f"run={run}", "dataset.name=synthetic", *sets])
    (directory / "config.yaml").write_text(dump(config))
    results = {"method": config["method"], "dataset": "synthetic", "backbone": None, "run": run,
               "eval_context": "per_image", "avg_incremental_accuracy": last + 0.1,
               "last_accuracy": last, "bwt": -0.1, "ece": [0.2, 0.1], "novelty": []}
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def test_runs_of_one_setting_are_averaged(tmp_path):
    dirs = [write_run(tmp_path / f"r{k}", run=k, last=v) for k, v in enumerate((0.5, 0.7))]
    table = markdown_report(dirs)
    rows = table.splitlines()[2:]
    assert len(rows) == 1
    # Last: mean 60.00, sample std of (50, 70) = 14.14
    assert "| clap | synthetic | – | per_image | 2 | 70.00 ± 14.14 | 60.00 ± 14.14 |" in rows[0]
    assert rows[0].endswith("| – |")


def test_runs_with_different_hyperparameters_are_separate_rows_naming_the_key(tmp_path):
    a = write_run(tmp_path / "a", last=0.5)
    b = write_run(tmp_path / "b", last=0.7, sets=["clap.lr=0.01"])
    rows = markdown_report([a, b]).splitlines()[2:]
    assert len(rows) == 2
    assert sorted(r.rsplit("|", 2)[1].strip() for r in rows) == ["clap.lr=0.0016", "clap.lr=0.01"]
    assert all("| 1 |" in r for r in rows)


def test_threads_and_logging_do_not_split_a_setting(tmp_path):
    a = write_run(tmp_path / "a", run=0)
    b = write_run(tmp_path / "b", run=1, sets=["threads=2", "logging.progress=false"])
    assert len(markdown_report([a, b]).splitlines()[2:]) == 1


def test_the_same_seed_twice_in_one_setting_is_refused(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    with pytest.raises(UserError, match="same setting with the same run 0: pass each seed once"):
        markdown_report([a, b])


@pytest.mark.parametrize("content, reason", [
    (b"", "it is empty"),
    (b"{not json", "it is not valid JSON"),
    (b"\xff\xfe\x00binary", "it is not valid JSON"),
    (b"[1, 2]", "a JSON object is expected"),
    (b'{"method": "clap"}', "key 'dataset' is missing"),
    (b'{"method": "clap", "dataset": "d", "run": 0, "avg_incremental_accuracy": "x",'
     b' "last_accuracy": 1, "ece": []}', "key 'avg_incremental_accuracy' is missing or not a number"),
])
def test_a_damaged_results_file_is_one_line_naming_it(tmp_path, capsys, content, reason):
    run = write_run(tmp_path / "run")
    (run / "results.json").write_bytes(content)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err and str(run / "results.json") in err


def test_a_missing_results_file_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no results.json" in err
