"""The attack matrix: every bad input exits 2 with one line naming the key or path and
writes nothing (no run directory, no config.yaml, no cache entry); every valid spelling
of a value is accepted, and a resumed run accepts exactly the changes docs/long-runs.md
lists."""
import errno
import json
import os
import pathlib
import socket
import time
from pathlib import Path

import pytest

from clap4cl.cli import main
from clap4cl.runner.config import load_config

ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = pytest.mark.skipif(IS_ROOT, reason="root bypasses file permissions")

SYNTHETIC = ["--set", "dataset.name=synthetic", "--set", "dataset.n_experiences=3",
             "--set", "dataset.options={n_classes: 6, train_per_class: 20, test_per_class: 5}",
             "--set", "clap.epochs=1", "--set", "clap.finetune_epochs=1",
             "--set", "logging.tensorboard=false"]


def tree(root: Path):
    """Every path below ``root`` with size and modification time: what a run could change."""
    return {str(p.relative_to(root)): (p.is_dir(), p.is_dir() or p.stat().st_size,
                                       p.is_dir() or p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory with its own empty cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAP4CL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def refused(sandbox, capsys, argv, fragments, output="out"):
    """Run ``clap4cl run`` and check the refusal: exit 2, one stderr line naming every
    fragment, no traceback, nothing created or changed below the sandbox."""
    before = tree(sandbox)
    code = main(["run", "--quiet", *(["--output", str(output)] if output else []), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("clap4cl: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert tree(sandbox) == before
    return err


# ---- bad values of config keys (no file system set-up) -------------------------------
BAD_VALUES = [
    (["seed=4294967296"], ["seed", "4294967296", "2**32 - 1"]),
    (["seed=-1"], ["seed", "-1"]),
    (["run=4294967295"], ["run", "4294967295"]),
    (["clap.vga_heads=3"], ["clap.vga_heads", "3", "width 64"]),
    (["dataset.name=synthetic", "dataset.options.dim=30", "clap.vga_heads=4"],
     ["clap.vga_heads", "width 30"]),
    (["backbone.arch=ViT-B-16", "clap.vga_heads=7"], ["clap.vga_heads", "width 512"]),
    (["clap.vga_dropout=1"], ["clap.vga_dropout", "[0, 1)"]),
    (["clap.vga_dropout=-0.1"], ["clap.vga_dropout", "-0.1"]),
    (["clap.warmup_fraction=1.5"], ["clap.warmup_fraction", "1.5", "[0, 1]"]),
    (["clap.warmup_fraction=-0.5"], ["clap.warmup_fraction", "-0.5"]),
    (["method=clip_adapter", "clip_adapter.reduction=65"], ["clip_adapter.reduction", "65", "64"]),
    (["memory.size=0"], ["memory.size", "0"]),
    (["method=clip_adapter", "memory.size=0"], ["memory.size", "clip_adapter"]),
    (["memory.policy=per_class", "memory.per_class=0"], ["memory.per_class", "0"]),
    (["method=coop", "memory.size=0"], ["memory.size", "coop"]),
    (["method=coop", "coop.warmup_fraction=2"], ["coop.warmup_fraction", "2"]),
    (["method=clap_coop", "coop.vga_heads=3"], ["coop.vga_heads", "3", "width 64"]),
    (["clap.lr=.nan"], ["clap.lr", "nan", "finite"]),
    (["clap.lr=nan"], ["clap.lr", "nan", "finite"]),
    (["clap.beta=.inf"], ["clap.beta", "inf"]),
    (["clip_adapter.ratio=-.inf"], ["clip_adapter.ratio"]),
    (["plugins=[{name: cml, weight: .nan}]"], ["plugins[0].weight", "nan"]),
    (["dataset.name=synthetic", "dataset.options={class_offset: .inf}"],
     ["dataset.options.class_offset", "inf"]),
    (["dataset.templates=['a {} of a {}']"], ["dataset.templates[0]", "{}"]),
    (["dataset.templates=['no slot']"], ["dataset.templates[0]", "no slot"]),
    (["dataset.templates=['a {name}']"], ["dataset.templates[0]"]),
    (["dataset.templates=[3]"], ["dataset.templates[0]", "not a string"]),
    (["dataset.templates=[]"], ["dataset.templates", "empty"]),
    (["dataset.name=imagenet_r", "dataset.options.test_fraction=1"],
     ["dataset.options.test_fraction", "1"]),
    (["dataset.name=imagenet_r", "dataset.options.test_fraction=0"],
     ["dataset.options.test_fraction", "0"]),
    (["dataset.name=imagenet_r", "dataset.options.test_fraction=abc"],
     ["dataset.options.test_fraction", "abc"]),
    (["backbone.device=gpu"], ["backbone.device", "gpu"]),
    (["backbone.device=cuda:x"], ["backbone.device", "cuda:x"]),
    # weak messages of earlier versions
    (["method.name=clap"], ["'method.name'", "'method' is a single value"]),
    (["logging.progress.bar=1"], ["logging.progress"]),
    (["plugins=[{weight: 1.0}]"], ["plugins[0]", "has no name"]),
    (["plugins=[{name: cml, weight: abc}]"], ["plugin cml option weight", "float", "'abc'"]),
    (["plugins=[{name: cml, start_epoch: 1.5}]"], ["plugin cml option start_epoch", "int"]),
]


@pytest.mark.parametrize("overrides, fragments", BAD_VALUES,
                         ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_value_is_one_line_and_writes_nothing(sandbox, capsys, overrides, fragments):
    argv = [a for o in overrides for a in ("--set", o)]
    err = refused(sandbox, capsys, argv, fragments)
    assert "None" not in err and "valid keys here are \n" not in err


# ---- files and directories ------------------------------------------------------------
def _binary_config(sandbox):
    path = sandbox / "binary.yaml"
    path.write_bytes(b"method: clap\n\xff\xfe\x00\x81garbage")
    return ["--config", str(path)], [str(path), "UTF-8"], "out"


def _output_is_a_file(sandbox):
    (sandbox / "taken").write_text("x")
    return [], ["--output", "taken", "is a file"], "taken"


def _output_below_a_file(sandbox):
    (sandbox / "taken").write_text("x")
    return [], ["--output", "taken/run", "is a file"], "taken/run"


def _output_in_proc(sandbox):
    return [], ["--output", "/proc/clap4cl-run"], "/proc/clap4cl-run"


def _cache_is_a_file(sandbox):
    (sandbox / "cachefile").write_text("x")
    return ["--set", f"cache.dir={sandbox / 'cachefile'}"], ["cache.dir", "is a file"], "out"


def _cache_below_a_file(sandbox):
    (sandbox / "cachefile").write_text("x")
    return (["--set", f"cache.dir={sandbox / 'cachefile' / 'c'}"],
            ["cache.dir", "cachefile", "is a file"], "out")


def _cache_in_proc(sandbox):
    return ["--set", "cache.dir=/proc/clap4cl-cache"], ["cache.dir", "/proc"], "out"


def _default_cache_is_a_file(sandbox):
    (sandbox / "cache").write_text("x")
    return [], ["cache.dir", "CLAP4CL_CACHE", "is a file"], "out"


def _garbage_pretrained(sandbox):
    path = sandbox / "weights.pt"
    path.write_bytes(os.urandom(4096))
    return (["--set", f"backbone.pretrained={path}"],
            ["backbone.pretrained", str(path), "not an open_clip checkpoint"], "out")


def _text_as_pretrained(sandbox):
    path = sandbox / "weights.pt"
    path.write_text("hello\n")
    return ["--set", f"backbone.pretrained={path}"], ["backbone.pretrained", str(path)], "out"


def _unwritable_output(sandbox):
    (sandbox / "locked").mkdir()
    (sandbox / "locked").chmod(0o500)
    return [], ["--output", "locked/run", "not writable"], "locked/run"


def _unwritable_cache_parent(sandbox):
    (sandbox / "locked").mkdir()
    (sandbox / "locked").chmod(0o500)
    return ["--set", f"cache.dir={sandbox / 'locked' / 'c'}"], ["cache.dir", "not writable"], "out"


FILE_CASES = [_binary_config, _output_is_a_file, _output_below_a_file, _output_in_proc,
              _cache_is_a_file, _cache_below_a_file, _cache_in_proc, _default_cache_is_a_file,
              _garbage_pretrained, _text_as_pretrained,
              pytest.param(_unwritable_output, marks=ROOT_SKIP),
              pytest.param(_unwritable_cache_parent, marks=ROOT_SKIP)]


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_path_is_one_line_and_writes_nothing(sandbox, capsys, case):
    argv, fragments, output = case(sandbox)
    try:
        refused(sandbox, capsys, argv, fragments, output=output)
    finally:
        for locked in sandbox.glob("locked"):
            locked.chmod(0o700)


def test_read_only_cache_that_must_be_written_is_one_line(sandbox, capsys, monkeypatch):
    """The cache exists but refuses writes (as a read-only mount or directory does, which
    root would bypass with chmod): one line naming cache.dir, nothing written."""
    cache = sandbox / "cache"
    cache.mkdir()
    real_mkdir, real_open = pathlib.Path.mkdir, open

    def below_cache(path):
        return cache in Path(os.path.abspath(path)).parents

    def read_only_mkdir(self, *args, **kwargs):
        if below_cache(self):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    def read_only_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, Path)) and below_cache(file) and set(mode) & set("wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only_mkdir)
    monkeypatch.setattr("builtins.open", read_only_open)
    refused(sandbox, capsys, [], ["cache.dir", "read-only", "must be written"])


@ROOT_SKIP
def test_read_only_cache_directory_by_permissions(sandbox, capsys):
    cache = sandbox / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        refused(sandbox, capsys, [], ["cache.dir", "read-only"])
    finally:
        cache.chmod(0o700)


def test_cuda_without_a_gpu_is_one_line(sandbox, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(sandbox, capsys, ["--set", "backbone.device=cuda"], ["backbone.device", "'cuda'", "cpu"])
    refused(sandbox, capsys, ["--set", "backbone.device=cuda:1"], ["backbone.device", "'cuda:1'"])


def test_an_open_clip_tag_offline_fails_in_seconds_with_one_line(sandbox, capsys, monkeypatch):
    """No network (every connection refused), nothing in the hub or open_clip caches: one
    line at once instead of a minute of hub retries; nothing is downloaded."""
    import huggingface_hub.constants as hub

    def no_network(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(sandbox / "hf"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HOME", str(sandbox / "home"))
    start = time.monotonic()
    refused(sandbox, capsys, ["--set", "backbone.arch=ViT-B-32", "--set", "backbone.pretrained=openai"],
            ["backbone.pretrained", "'openai'", "ViT-B-32", "cannot be reached"])
    assert time.monotonic() - start < 10
    # the hub already offline: the same line without probing
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    refused(sandbox, capsys, ["--set", "backbone.arch=ViT-B-32", "--set", "backbone.pretrained=openai"],
            ["backbone.pretrained", "HF_HUB_OFFLINE"])


def test_argparse_errors_name_the_right_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--bogus"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "(see clap4cl run --help)" in err
    with pytest.raises(SystemExit) as exc:
        main(["--bogus"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "(see clap4cl --help)" in err and "clap4cl clap4cl" not in err


# ---- nothing left behind by a rejected run --------------------------------------------
def test_a_run_rejected_by_its_dataset_leaves_nothing_that_blocks_the_fix(sandbox, capsys):
    """The loader refuses the options after the run directory was checked: no config.yaml
    is left, so the corrected command runs in the same directory."""
    bad = [*SYNTHETIC, "--set", "dataset.options.n_classes=0"]
    refused(sandbox, capsys, bad, ["n_classes"])
    assert not (sandbox / "out").exists()
    assert main(["run", "--quiet", "--output", "out", *SYNTHETIC]) == 0


# ---- valid spellings are accepted ------------------------------------------------------
@pytest.mark.parametrize("spelling, value", [("1e-3", 1e-3), ("1E-3", 1e-3), (".5", 0.5),
                                             ("5.", 5.0), ("+2.5e-1", 0.25), ("1.0e-3", 1e-3),
                                             ("2", 2.0), ("0.0016", 0.0016)])
def test_every_float_spelling_is_accepted(tmp_path, spelling, value):
    for overrides, path in ((["clap.lr=" + spelling, "clip_adapter.lr=" + spelling], None),
                            ([], tmp_path / "c.yaml")):
        if path is not None:
            path.write_text(f"clap:\n  lr: {spelling}\nclip_adapter:\n  lr: {spelling}\n")
        config = load_config(path and str(path), overrides)
        assert config["clap"]["lr"] == value and type(config["clap"]["lr"]) is float
        assert config["clip_adapter"]["lr"] == value
    config = load_config(None, [f"plugins=[{{name: cml, weight: {spelling}}}]"])
    assert config["plugins"] == [{"name": "cml", "weight": value}]


def test_dotted_keys_reach_free_form_options_and_mappings_merge():
    config = load_config(str(ROOT / "configs" / "synthetic.yaml"),
                         ["dataset.options.train_per_class=7", "dataset.options={seed: 3}"])
    assert config["dataset"]["options"] == {"n_classes": 20, "train_per_class": 7, "seed": 3}
    assert load_config(None, ["dataset.name=synthetic", "dataset.options.n_classes=20"]
                       )["dataset"]["options"] == {"n_classes": 20}


def test_readme_example_runs(sandbox, capsys):
    assert main(["run", "--quiet", "--output", "out", "--config",
                 str(ROOT / "configs" / "synthetic.yaml"), "--set", "dataset.options.n_classes=10",
                 "--set", "dataset.options={seed: 3, train_per_class: 10, test_per_class: 5}",
                 "--set", "logging.tensorboard=false"]) == 0
    results = json.loads((sandbox / "out" / "results.json").read_text())
    assert len(results["class_order"]) == 10 and results["completed_experiences"] == 5


# ---- what may change on resume ----------------------------------------------------------
def _stop_after_first_experience(monkeypatch):
    """The loss of the second experience becomes NaN (the run stops, resumable)."""
    import strategies

    real = strategies.clap.clap_loss

    def diverging(model, out, targets, tasks, **kwargs):
        loss = real(model, out, targets, tasks, **kwargs)
        return loss * float("nan") if model.heads.n_tasks == 2 else loss

    monkeypatch.setattr(strategies.clap, "clap_loss", diverging)
    return lambda: monkeypatch.setattr(strategies.clap, "clap_loss", real)


def test_resume_accepts_a_lower_learning_rate_and_presentation_changes(sandbox, capsys, monkeypatch):
    restore = _stop_after_first_experience(monkeypatch)
    assert main(["run", "--output", "out", *SYNTHETIC]) == 2
    assert "the loss is nan" in capsys.readouterr().err
    config_before = (sandbox / "out" / "config.yaml").read_text()
    restore()
    # other presentation (--quiet, TensorBoard on, threads), a lower lr, 2 epochs: resumes
    assert main(["run", "--quiet", "--output", "out", *SYNTHETIC, "--set", "clap.lr=8e-4",
                 "--set", "clap.epochs=2", "--set", "logging.tensorboard=true",
                 "--set", "threads=1"]) == 0
    results = json.loads((sandbox / "out" / "results.json").read_text())
    assert results["completed_experiences"] == 3
    assert results["config_changes_on_resume"] == [
        {"key": "clap.epochs", "from": 1, "to": 2, "from_experience": 1},
        {"key": "clap.lr", "from": 0.0016, "to": 0.0008, "from_experience": 1}]
    assert (sandbox / "out" / "config.yaml").read_text() == config_before
    # the finished run again with the same changes: nothing new, nothing refused
    assert main(["run", "--quiet", "--output", "out", *SYNTHETIC, "--set", "clap.lr=8e-4",
                 "--set", "clap.epochs=2"]) == 0
    again = json.loads((sandbox / "out" / "results.json").read_text())
    assert again["config_changes_on_resume"] == results["config_changes_on_resume"]
    # a finished run cannot take a new learning rate: it would train nothing
    refused(sandbox, capsys, [*SYNTHETIC, "--set", "clap.lr=1e-4", "--set", "clap.epochs=2"],
            ["finished run", "clap.lr"])


@pytest.mark.parametrize("change, key", [(["memory.size=500"], "memory.size"),
                                         (["clap.beta=1.0"], "clap.beta"),
                                         (["dataset.options.seed=9"], "dataset.options.seed")])
def test_resume_refuses_changes_to_what_was_trained(sandbox, capsys, monkeypatch, change, key):
    restore = _stop_after_first_experience(monkeypatch)
    assert main(["run", "--quiet", "--output", "out", *SYNTHETIC]) == 2
    capsys.readouterr()
    restore()
    refused(sandbox, capsys, [*SYNTHETIC, *[a for c in change for a in ("--set", c)]],
            ["different config", key, "only learning rates, epochs and logging"])
