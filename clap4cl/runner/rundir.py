"""The run directory: config check, atomic JSON, the checkpoint and resuming from it."""
from __future__ import annotations

import ctypes
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Tuple

from clap4cl.errors import UserError
from clap4cl.runner.config import dump
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


def prepare_run_dir(output: Path, config: Dict[str, Any]) -> None:
    """Create the run directory, refusing one that holds a different config (or a config
    naming an unknown dataset or method: nothing is written then)."""
    checked_names(config)
    output.mkdir(parents=True, exist_ok=True)
    saved = output / "config.yaml"
    text = dump(config)
    if saved.is_file() and saved.read_text() != text:
        raise UserError(f"run directory {str(output)!r} holds a run with a different config: "
                        f"choose another --output or delete that directory")
    saved.write_text(text)


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
