"""How many CPU threads each phase of a run uses (the ``threads`` config key).

PyTorch's default, one intra-op thread per core, is right for large encoder passes and
wrong for the small matrix products of training heads on cached features: there, OpenMP
threads spin-wait between tiny operations, and on a machine with other work running one
run can become several times slower (measured in docs/benchmarks.md, "Threads under load").

The rule (``threads: auto``):

- a user who chose already wins: if ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, or
  ``torch.set_num_threads`` was called before the run, nothing is changed;
- extraction (the frozen image encoder over raw images) uses every core torch would use;
- training and evaluation on cached features use one thread, or two when a step's work
  is large (``heavy_heads``) and at least 1.5 cores sat idle over 0.1 s at the start of
  the phase (``idle_cores``; the run's own threads do not count);
- inter-op parallelism is one thread (nothing in a run has independent operators to overlap).

``threads: <n>`` uses ``n`` threads in every phase.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Optional, Union

from clap4cl.runner.assemble import TRAINING_SECTION

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
PHASES = ("extract", "train", "eval")
# Per-step multiply-accumulates (batch x classes x width^2) above which a second thread pays off.
HEAVY_HEAD_MACS = 2e9
# Multiply-accumulates of CLAP's VGA per training step or evaluation batch above which a
# second thread pays off: 1.2-1.5x per training step from 2e8 on, 1.6-2x per per-image
# evaluation batch (docs/benchmarks.md, "Threads").
HEAVY_VGA_MACS = 2e8
# Idle cores (see idle_cores) a heavy phase needs before it takes a second thread.
IDLE_FOR_TWO = 1.5

_torch_default: Optional[int] = None


def record_torch_default() -> None:
    """Remember torch's thread count at start-up, to tell later whether the user changed it."""
    global _torch_default
    import torch

    if _torch_default is None:
        _torch_default = torch.get_num_threads()


def user_chose_threads() -> bool:
    """True when the environment or an earlier ``torch.set_num_threads`` fixed the count."""
    import torch

    if any(os.environ.get(name) for name in THREAD_ENV):
        return True
    return _torch_default is not None and torch.get_num_threads() != _torch_default


def heavy_heads(batch_size: int, n_classes: int, width: int) -> bool:
    """Whether one training step's head work is large enough for a second thread."""
    return batch_size * n_classes * width * width >= HEAVY_HEAD_MACS


def run_training_is_heavy(config, n_classes: int, text_features) -> bool:
    """Whether one training step is large enough for a second thread: its heads' work
    (``heavy_heads``) or, for CLAP, the VGA's forward and backward pass over the classes
    with the batch as context, 3 x classes x width x (2 feed-forward widths + 4 widths)."""
    section = TRAINING_SECTION.get(config["method"])
    batch = config[section]["batch_size"] if section else 0
    width = _width(text_features)
    if section == "clap" and config["clap"]["vga"]:
        ffn = config["clap"]["vga_ffn_dim"]
        if 3 * n_classes * width * (2 * ffn + 4 * width) >= HEAVY_VGA_MACS:
            return True
    return heavy_heads(batch, n_classes, width)


def run_eval_is_heavy(config, n_classes: int, text_features) -> bool:
    """Whether one evaluation batch is large enough for a second thread. CLAP's heads and
    VGA run per (image, class) pair with the ``per_image`` context, (batch x classes x
    width x (VGA feed-forward width + 2 widths)) multiply-accumulates, and per class with
    the batch as context (small); other methods do a head's work per image."""
    width = _width(text_features)
    batch = config["eval"]["batch_size"]
    if TRAINING_SECTION.get(config["method"]) == "clap":
        if config["eval"]["context"] != "per_image":
            return False
        ffn = config["clap"]["vga_ffn_dim"] if config["clap"]["vga"] else 0
        return batch * n_classes * width * (ffn + 2 * width) >= HEAVY_VGA_MACS
    return heavy_heads(batch, n_classes, width)


def _width(text_features) -> int:
    return text_features.mean.shape[-1] if text_features is not None else 0


def threads_for(phase: str, setting: Union[str, int], *, heavy: bool = False,
                cores: Optional[int] = None, load: Optional[float] = None) -> Optional[int]:
    """Thread count for ``phase`` under ``setting`` (``"auto"`` or a positive int); None = leave as is."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if setting != "auto":
        return int(setting)
    if user_chose_threads():
        return None
    cores = cores if cores is not None else _torch_default_or_cores()
    if phase == "extract":
        return cores
    if not heavy or cores < 2:
        return 1
    free = idle_cores() if load is None else max(0.0, cores - load)
    return 2 if free is not None and free >= IDLE_FOR_TWO else 1


@contextlib.contextmanager
def phase_threads(phase: str, setting: Union[str, int], *, heavy: bool = False) -> Iterator[None]:
    """Run the block with the thread count of ``phase``, then restore the previous count."""
    import torch

    record_torch_default()
    wanted = threads_for(phase, setting, heavy=heavy)
    before = torch.get_num_threads()
    if wanted is not None and wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def single_interop_thread(setting: Union[str, int] = "auto") -> None:
    """Under ``auto``: one inter-op thread, unless the user set it or torch already started
    its pool."""
    import torch

    if setting != "auto" or os.environ.get("OMP_NUM_THREADS"):
        return
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # the pool exists already (torch allows this call once, early)
        pass


def validate_setting(value) -> Optional[str]:
    """An error message for a bad ``threads`` value, or None."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return None
    return f"threads = {value!r} is not valid: use auto or a positive integer"


def _torch_default_or_cores() -> int:
    if _torch_default is not None:
        return _torch_default
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def idle_cores(interval: float = 0.1) -> Optional[float]:
    """How many cores no process used during the next ``interval`` seconds (Linux
    /proc/stat; the load average instead elsewhere). Measured at the start of a phase,
    while the run itself waits, so the run's own threads do not count as load, as
    they would in the one-minute load average."""
    try:
        before = _cpu_times()
        time.sleep(interval)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        try:
            return max(0.0, _cpus() - os.getloadavg()[0])
        except OSError:
            return None
    idle, total = (a - b for a, b in zip(after, before))
    return _cpus() * idle / total if total > 0 else None


def _cpu_times():
    """(idle, total) clock ticks of all CPUs since boot, from /proc/stat's first line."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:9]]   # user .. steal
    return ticks[3] + ticks[4], sum(ticks)                     # idle + iowait


def _cpus() -> int:
    return os.cpu_count() or 1
