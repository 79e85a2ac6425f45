"""Start-up time of the command line (goal: ``clap4cl --help`` in at most 1.5 s).

Prints the median wall time of 5 runs of ``clap4cl --help``, of a one-line config error
(``clap4cl run --set method=nope``, exit status 2) and, for comparison, of
``python -c "import torch"``, with the machine's load average before and after.

    python benchmarks/bench_startup.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 1.5
CASES = (
    ("clap4cl --help", [sys.executable, "-m", "clap4cl", "--help"], 0),
    ("clap4cl run --set method=nope", [sys.executable, "-m", "clap4cl", "run", "--set", "method=nope"], 2),
    ('python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
)


def wall_time(command, expected_status: int) -> float:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != expected_status:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}, expected {expected_status}: "
                         f"{done.stderr.decode().strip()}")
    return elapsed


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"before: {load()}")
    for name, command, status in CASES:
        times = [wall_time(command, status) for _ in range(args.repeats)]
        goal = f"  (goal <= {GOAL_SECONDS} s: {'met' if statistics.median(times) <= GOAL_SECONDS else 'MISSED'})" \
            if name == "clap4cl --help" else ""
        print(f"{name:<32} median {statistics.median(times):6.3f} s  "
              f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)}){goal}")
    print(f"after:  {load()}")


if __name__ == "__main__":
    main()
