"""What a benchmark's figures depend on: date, machine, load, torch, threads, command.

Every benchmark script prints :func:`header` first, so a figure copied from its output
carries the conditions it was measured under (docs/benchmarks.md).
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def describe() -> str:
    """One line: cores, CPU model, torch version and thread settings."""
    import torch

    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    return (f"{cores()} cores, {cpu_model()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads at start{', ' + env if env else ''}")


def header() -> str:
    """Date and time, machine, load and the command line, as printed by every benchmark."""
    return (f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {describe()}\n"
            f"{load()} at start (idle means well below {cores()})\n"
            f"command: python {' '.join(sys.argv)}")
