"""The run directory: checks, config.yaml, atomic JSON, the checkpoint and resuming from it."""
from __future__ import annotations

import ctypes
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from clap4cl.errors import UserError
from clap4cl.runner.checks import check_writable_dir
from clap4cl.runner.config import dump, get
from clap4cl.runner.results import Timer

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def path_component(value, what: str) -> str:
    """``value`` as one safe file-name component (no separators, no ``..``), else UserError."""
    text = str(value)
    if not _SAFE_COMPONENT.fullmatch(text) or ".." in text:
        raise UserError(f"{what} {text!r} cannot name a directory: use letters, digits, "
                        f"'_', '-' and '.' only")
    return text


def checked_names(config: Dict[str, Any]) -> Tuple[str, str]:
    """(dataset, method) of ``config``, checked against the registries before any path
    or file is made from them."""
    from scenarios.registry import canonical_name

    from clap4cl.runner.assemble import METHODS

    dataset = canonical_name(config["dataset"]["name"])
    method = config["method"]
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return path_component(dataset, "dataset"), path_component(method, "method")


def default_output(config: Dict[str, Any], *, seeds: bool = False) -> Path:
    """``runs/<dataset>-<method>-run<k>`` (``runs/<dataset>-<method>`` for ``--seeds``),
    from registry names only, so the directory is always inside ``runs/``."""
    dataset, method = checked_names(config)
    name = f"{dataset}-{method}" if seeds else f"{dataset}-{method}-run{int(config['run'])}"
    return Path("runs") / name


# Keys that only change how a run is shown or how fast it goes, never its results: they
# may differ when a run directory is resumed and are not recorded.
PRESENTATION_KEYS = ("logging.progress", "logging.tensorboard", "threads")
# Keys that may change when a run resumes, for the experiences not yet trained (e.g. a
# lower learning rate after a non-finite loss); each change is recorded in results.json
# under config_changes_on_resume (see docs/long-runs.md).
RESUMABLE_KEYS = ("clap.lr", "clap.finetune_lr_factor", "clap.epochs", "clap.finetune_epochs",
                  "clip_adapter.lr", "clip_adapter.epochs", "multi_encoder.lr",
                  "multi_encoder.epochs", "coop.lr", "coop.finetune_lr_factor", "coop.epochs",
                  "coop.finetune_epochs")


def check_run_dir(output: Path, config: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Refuse a run directory this config cannot run in, writing nothing: not writable,
    or holding a run with a different config. Returns the allowed changes of a resumed
    run (``RESUMABLE_KEYS`` whose value differs from the run's, as ``{"key", "from",
    "to"}``), to be recorded once it resumes."""
    checked_names(config)
    check_writable_dir(output, "--output")
    saved = output / "config.yaml"
    if not saved.is_file():
        return []
    try:
        run = yaml.safe_load(saved.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{str(saved)!r} cannot be read ({type(exc).__name__}): choose another "
                        f"--output or delete that directory") from exc
    if not isinstance(run, dict):
        raise UserError(f"{str(saved)!r} does not hold a config: choose another --output or "
                        f"delete that directory")
    for change in recorded_changes(output):
        _set_dotted(run, change["key"], change["to"])
    current = yaml.safe_load(dump(config))
    differing = [key for key in _differences(run, current) if key not in PRESENTATION_KEYS]
    fixed = [key for key in differing if key not in RESUMABLE_KEYS]
    if fixed:
        key = fixed[0]
        raise UserError(f"run directory {str(output)!r} holds a run with a different config "
                        f"({key} = {get(run, key, None)!r} there, {get(current, key, None)!r} "
                        f"now; only learning rates, epochs and logging may change on resume): "
                        f"choose another --output or delete that directory")
    if not differing:
        return []
    done = completed_experiences(output)
    if done is not None and done >= config["dataset"]["n_experiences"]:
        raise UserError(f"run directory {str(output)!r} holds a finished run: {differing[0]} = "
                        f"{get(current, differing[0], None)!r} would apply to no experience; choose "
                        f"another --output to train with it")
    return [{"key": key, "from": get(run, key, None), "to": get(current, key, None)}
            for key in differing]


def write_run_config(output: Path, config: Dict[str, Any]) -> None:
    """Create the run directory and its config.yaml (kept as first written when the run
    resumes: allowed changes are recorded in results.json). Called once every input
    has been checked and built, so a rejected command leaves nothing behind."""
    output.mkdir(parents=True, exist_ok=True)
    saved = output / "config.yaml"
    if not saved.is_file():
        tmp = saved.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(dump(config))
        os.replace(tmp, saved)


def record_changes(run_state: Dict[str, Any], changes: List[Dict[str, Any]], start: int) -> None:
    """Append the allowed config changes of this resume to ``run_state`` (first
    experience trained with them: ``start``)."""
    if changes:
        run_state.setdefault("config_changes", []).extend(
            {**change, "from_experience": start} for change in changes)


def recorded_changes(output: Path) -> List[Dict[str, Any]]:
    """The config changes of earlier resumes, from ``results.json`` (none if unreadable)."""
    results = _read_results(output)
    changes = results.get("config_changes_on_resume") if results else None
    return [c for c in changes if isinstance(c, dict) and "key" in c and "to" in c] \
        if isinstance(changes, list) else []


def completed_experiences(output: Path) -> Optional[int]:
    """Experiences the run in ``output`` finished: from results.json, 0 without a
    checkpoint, None when it cannot be told."""
    results = _read_results(output)
    if results and isinstance(results.get("completed_experiences"), int):
        return results["completed_experiences"]
    return None if (output / CHECKPOINT).is_file() else 0


def _read_results(output: Path) -> Optional[Dict[str, Any]]:
    try:
        results = json.loads((output / "results.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def _differences(a: Any, b: Any, prefix: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(a) + [k for k in b if k not in a]
        return [d for k in keys
                for d in _differences(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


_MISSING = object()


def _set_dotted(config: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[parts[-1]] = value


def restore_results(output: Path, results: Dict[str, Any]) -> None:
    """Rewrite ``output/results.json`` from ``results`` (the checkpoint's) when it is
    missing, unreadable or older than them: a finished run that is run again leaves an
    intact results.json behind."""
    if not results:
        return
    path = output / "results.json"
    try:
        saved = json.loads(path.read_text())
        intact = (isinstance(saved, dict) and saved.get("completed_experiences")
                  == results.get("completed_experiences"))
    except (OSError, ValueError):
        intact = False
    if not intact:
        write_json_atomic(path, results)


# ``checkpoint.pkl.tmp<pid>`` and ``results.tmp<pid>``: what write_json_atomic and the
# checkpoint write before renaming
_RUN_TEMPORARY = re.compile(r".+\.tmp(?P<pid>\d+)")


def remove_orphan_temporaries(output: Path) -> None:
    """Remove the temporary files that a killed run left in ``output`` (their writer's
    process id is not alive; only one run writes a run directory at a time)."""
    from clap4cl.features.cache import pid_alive

    for path in output.glob("*.tmp*"):
        match = _RUN_TEMPORARY.fullmatch(path.name)
        if match and path.is_file() and not pid_alive(int(match.group("pid"))):
            path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


CHECKPOINT = "checkpoint.pkl"


def resume(strategy, output: Path, timer: Timer, train_stream):
    """(strategy, first experience to train): the state of ``output/checkpoint.pkl`` put
    into the freshly built ``strategy`` if there is one (see ``runner.checkpoint``: plain
    data only, never unpickled code), else the strategy with an empty ``run_state``."""
    from clap4cl import distributed
    from clap4cl.runner.checkpoint import load_checkpoint

    if distributed.is_main():  # the writer of the run directory
        remove_orphan_temporaries(output)
    path = output / CHECKPOINT
    if path.is_file():
        start, strategy.run_state = load_checkpoint(strategy, path, train_stream)
        timer.seconds.update({k: v for k, v in strategy.run_state["timer"].items() if k != "extract"})
        return strategy, start
    strategy.run_state = {"rows": [], "steps": [], "plot_data": {}, "results": {}, "timer": {}}
    return strategy, 0


def save_run_checkpoint(strategy, output: Path) -> None:
    """The run's checkpoint (strategy state and ``run_state``), written atomically."""
    from clap4cl.runner.checkpoint import save_checkpoint

    save_checkpoint(strategy, strategy.run_state, output / CHECKPOINT)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the memory that glibc keeps after large temporaries are freed back to the OS.

    Evaluation allocates (samples × M × classes) arrays that grow with every experience;
    glibc keeps the freed space fragmented in its heap, so without this the resident size
    rises by about 100 MB per experience at CIFAR-100 size. A no-op without glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
