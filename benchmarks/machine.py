"""What a benchmark's figures depend on: date, machine, its product rate, load, torch,
threads, command.

Every benchmark script prints :func:`header` first, so a figure copied from its output
carries the conditions it was measured under (docs/benchmarks.md).
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
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


# (rows, width, ffn) of the rate's product: the VGA's feed-forward layers, CLAP's largest.
PRODUCT_SHAPE = (2048, 512, 2048)


def matmul_peak_gflops(threads: int, rows: int = PRODUCT_SHAPE[0], width: int = PRODUCT_SHAPE[1],
                       ffn: int = PRODUCT_SHAPE[2]) -> float:
    """The best of 20 fp32 products (rows, width) @ (width, ffn) at ``threads`` intra-op
    threads, in GFLOP/s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(rows, width), torch.randn(width, ffn)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(20):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * rows * width * ffn / best / 1e9


def product_rate() -> str:
    """The machine's fp32 matrix-product rate at torch's thread count, measured now:
    hosts of the same CPU name differ and a shared host's rate varies between runs
    (103-180 GFLOP/s in three consecutive runs on one 2-core host, docs/benchmarks.md),
    so it is printed beside the times it may explain."""
    import torch

    threads = torch.get_num_threads()
    rows, width, ffn = PRODUCT_SHAPE
    return (f"fp32 product rate {matmul_peak_gflops(threads):.0f} GFLOP/s at {threads} threads "
            f"(({rows}, {width}) @ ({width}, {ffn}), best of 20)")


def header() -> str:
    """Date and time, machine and its product rate, load and the command line, as
    printed by every benchmark."""
    return (f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {describe()}\n"
            f"{load()} at start (idle means well below {cores()})\n"
            f"{product_rate()}\n"
            f"command: python {' '.join(sys.argv)}")
