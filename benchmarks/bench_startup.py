"""Start-up time of the command line (goal: at most 1.5 s each on an idle machine).

Prints the median wall time of 5 runs of ``clap4cl --help``, of a one-line config error
(``clap4cl run --set method=nope``, exit status 2), of ``import clap4cl`` and, for
comparison, of ``python -c "import torch"``, with the machine's load average before and after.

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

from machine import header, load

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 1.5
CASES = (
    ("clap4cl --help", [sys.executable, "-m", "clap4cl", "--help"], 0),
    ("clap4cl run --set method=nope", [sys.executable, "-m", "clap4cl", "run", "--set", "method=nope"], 2),
    ('python -c "import clap4cl"', [sys.executable, "-c", "import clap4cl"], 0),
    ('python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
)
# The cases with the start-up goal (the last one is the floor, for comparison).
GOAL_CASES = {name for name, _, _ in CASES[:3]}


def wall_time(command, expected_status: int) -> float:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != expected_status:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}, expected {expected_status}: "
                         f"{done.stderr.decode().strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(header())
    for name, command, status in CASES:
        times = [wall_time(command, status) for _ in range(args.repeats)]
        goal = f"  (goal <= {GOAL_SECONDS} s: {'met' if statistics.median(times) <= GOAL_SECONDS else 'MISSED'})" \
            if name in GOAL_CASES else ""
        print(f"{name:<32} median {statistics.median(times):6.3f} s  "
              f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)}){goal}")
    print(f"after:  {load()}")


if __name__ == "__main__":
    main()
