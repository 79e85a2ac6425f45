"""Every example in examples/ runs (at tiny sizes) and produces what it promises."""
import math
import runpy
from pathlib import Path


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"]


def test_class_incremental_script(tmp_path, capsys):
    rows = example("class_incremental_clap.py")(
        ["--n-experiences", "4", "--epochs", "1", "--mc-samples", "4", "--quiet", "--per-class", "60",
         "--logdir", str(tmp_path / "tb")])
    assert [r[0] for r in rows] == [0, 1, 2, 3] and all(0.5 < r[1] <= 1 for r in rows)
    assert rows[0][3] is None and rows[-1][3] is not None     # BWT from the second step on
    assert any((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert "| step | accuracy | ECE | BWT |" in capsys.readouterr().out


def test_stock_strategies_side_by_side(capsys):
    table = example("stock_strategies.py")(
        ["--n-experiences", "2", "--n-classes", "6", "--epochs", "1", "--memory", "12"])
    assert list(table) == ["zero-shot", "Replay (entropy buffer)", "LwF", "EWC", "CLAP"]
    for avg, last, bwt, ece in table.values():
        assert 0 <= last <= 1 and 0 <= avg <= 1 and math.isfinite(ece)
    assert "| CLAP |" in capsys.readouterr().out


def test_ood_evaluation(capsys):
    future, external = example("ood_evaluation.py")(
        ["--n-experiences", "4", "--trained-experiences", "1", "--epochs", "2"])
    assert set(future) == set(external) == {"energy", "msp", "entropy", "variance",
                                            "mutual_information"}
    assert future["energy"]["auroc"] > 0.7 and external["energy"]["auroc"] > 0.7
    out = capsys.readouterr().out
    assert "future classes of the stream" in out and "external dataset" in out


def test_multimodal_regularizers(capsys):
    table = example("multimodal_regularizers.py")(["--epochs", "4"])
    assert list(table) == ["dropout only", "+ CML", "+ MAR", "+ MAD", "+ attribution"]
    for vrr, full, a, b, share in table.values():
        assert 0 <= vrr <= 1 and 0 <= share <= 1 and full > 0.5
    assert "| + CML |" in capsys.readouterr().out
