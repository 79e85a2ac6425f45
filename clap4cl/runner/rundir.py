"""The run directory: config check, atomic JSON, the checkpoint and resuming from it."""
from __future__ import annotations

import ctypes
import functools
import json
import os
from pathlib import Path
from typing import Any, Dict

from clap4cl.errors import UserError
from clap4cl.runner.config import dump
from clap4cl.runner.results import Timer


def prepare_run_dir(output: Path, config: Dict[str, Any]) -> None:
    """Create the run directory, refusing one that holds a different config."""
    output.mkdir(parents=True, exist_ok=True)
    saved = output / "config.yaml"
    text = dump(config)
    if saved.is_file() and saved.read_text() != text:
        raise UserError(f"run directory {str(output)!r} holds a run with a different config: "
                        f"choose another --output or delete that directory")
    saved.write_text(text)


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


CHECKPOINT = "checkpoint.pkl"


def resume(strategy, output: Path, timer: Timer, train_stream):
    """(strategy, first experience to train): the state of ``output/checkpoint.pkl`` put
    into the freshly built ``strategy`` if there is one (see ``runner.checkpoint``: plain
    data only, never unpickled code), else the strategy with an empty ``run_state``."""
    from clap4cl.runner.checkpoint import load_checkpoint

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
