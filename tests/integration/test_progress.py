"""Run progress people can read, TensorBoard steps of zero-shot runs, the external ROC plot."""
import io
import json

from clap4cl.evaluation import scores
from clap4cl.runner import experiment, plots
from clap4cl.runner.config import load_config
from clap4cl.runner.logs import RunProgress

SMALL = {"dataset.name": "synthetic", "dataset.n_experiences": 3, "logging.tensorboard": False,
         "dataset.options": {"n_classes": 6, "train_per_class": 20, "test_per_class": 10}}


def config_with(**overrides):
    sets = {**SMALL, **overrides}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])


def drive(progress, n_experiences, start=0):
    for step in range(start, n_experiences):
        for phase in RunProgress.PHASES:
            progress.start(step, phase)
            progress.finish(step, phase)
    progress.close()


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    drive(RunProgress(3, stream=out), 3)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split(":")[0] for line in lines] == [
        f"[clap4cl] experience {k}/3 {phase} done" for k in (1, 2, 3) for phase in ("train", "eval")]
    assert lines[0].split("phases")[0].endswith("1/6 ") and lines[-1].endswith("ETA 0:00:00")


def test_one_bar_on_a_terminal_and_resumed_runs_start_where_they_stopped():
    out = io.StringIO()
    drive(RunProgress(3, start=1, stream=out, tty=True), 3, start=1)
    text = out.getvalue()
    assert "[clap4cl]" not in text and "6/6 phases" in text and "experience 3/3 eval" in text
    quiet = io.StringIO()
    drive(RunProgress(3, enabled=False, stream=quiet, tty=True), 3)
    assert quiet.getvalue() == ""


def test_a_run_prints_one_line_per_phase_and_no_epoch_bars(tmp_path, capsys):
    experiment.run_experiment(config_with(method="clap", **{"clap.epochs": 1}), tmp_path / "run",
                              progress=True)
    out = capsys.readouterr().out
    assert "\r" not in out and "Epoch" not in out
    lines = [line for line in out.splitlines() if line.startswith("[clap4cl] experience")]
    assert len(lines) == 6 and lines[-1].startswith("[clap4cl] experience 3/3 eval done: 6/6")


def test_zero_shot_tensorboard_points_are_at_the_experience_index(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    experiment.run_experiment(config_with(method="zeroshot", **{"logging.tensorboard": True}),
                              tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("summary/step_accuracy")] == [0, 1, 2]
    assert [e.step for e in events.Scalars("accuracy/experience_000")] == [0, 1, 2]


def test_novelty_roc_shows_the_external_dataset(tmp_path, monkeypatch):
    saved = {}
    real_save = plots.save_figures

    def keep(figures, directory):
        saved[directory.parent.name] = {name: [ax.get_title() for ax in fig.axes] for name, fig
                                        in figures.items()}
        saved[directory.parent.name + "_lines"] = [len(ax.lines) for ax in
                                                   figures["novelty_roc.png"].axes]
        real_save(figures, directory)

    monkeypatch.setattr(plots, "save_figures", keep)
    experiment.run_experiment(config_with(method="zeroshot", **{"eval.novelty_dataset": "synthetic"}),
                              tmp_path / "external", progress=False)
    experiment.run_experiment(config_with(method="zeroshot"), tmp_path / "plain", progress=False)
    n = len(scores.NOVELTY_SCORES)
    titles = saved["external"]["novelty_roc.png"]
    assert len(titles) == 3 and titles[1] == "synthetic, last step"
    # ROC panels: one curve per score plus the diagonal; per-step panel: both kinds + chance
    assert saved["external_lines"] == [n + 1, n + 1, 2 * n + 1]
    assert len(saved["plain"]["novelty_roc.png"]) == 2 and saved["plain_lines"] == [n + 1, n + 1]
    assert sorted(p.name for p in (tmp_path / "external" / "plots").iterdir()) == sorted(plots.PLOT_FILES)
