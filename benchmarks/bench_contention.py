"""The default ``clap4cl run`` under CPU contention: the thread policy against one thread.

Runs the default experiment (digits, CLAP, tiny-vit; a warm cache, so training and
evaluation dominate) twice per condition, in fresh processes:

- ``policy``: ``threads: auto`` (the default),
- ``torch default``: ``threads`` = the core count (what plain PyTorch does),
- ``1 thread``: ``OMP_NUM_THREADS=1``,

each while N busy processes (default N = number of cores) spin on the CPU, then once more
idle. Prints the train + eval seconds of each and the ratios policy / 1 thread (goal ≤ 1.3
under load, ≤ 1.1 idle).

    python benchmarks/bench_contention.py [--busy N] [--experiences 5] [--skip-idle]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import header


def spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def run_once(out: Path, cache: Path, experiences: int, env_extra: dict, sets=()) -> dict:
    env = {**os.environ, "CLAP4CL_CACHE": str(cache), **env_extra}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if name not in env_extra:
            env.pop(name, None)
    cmd = [sys.executable, "-m", "clap4cl", "run", "--quiet", "--output", str(out),
           "--set", f"dataset.n_experiences={experiences}", "--set", "logging.tensorboard=false",
           *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    timing = json.loads((out / "results.json").read_text())["timing"]
    return {"wall": wall, "work": timing["train"] + timing["eval"], **timing}


def measure(label: str, busy: int, args, cache: Path, root: Path) -> dict:
    cores = os.cpu_count() or 1
    conditions = {
        "policy": ({}, ()),
        "torch default": ({}, (f"threads={cores}",)),
        "1 thread": ({"OMP_NUM_THREADS": "1"}, ()),
    }
    spinners = []
    if busy:
        stop_at = time.time() + 3600
        spinners = [mp.Process(target=spin, args=(stop_at,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
    try:
        results = {}
        for name, (env, sets) in conditions.items():
            runs = [run_once(root / f"{label}-{name.replace(' ', '_')}-{k}", cache,
                             args.experiences, env, sets) for k in range(args.repeats)]
            results[name] = min(runs, key=lambda r: r["work"])
    finally:
        for p in spinners:
            p.terminate()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="busy processes during the loaded measurement (default: cores)")
    parser.add_argument("--experiences", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="runs per condition (best kept)")
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args()
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp), Path(tmp) / "cache"
        cold = run_once(root / "warm", cache, args.experiences, {})  # fills the feature cache
        print(f"default run with a cold cache, policy, no busy processes: {cold['wall']:.1f} s wall "
              f"(extract {cold['extract']:.1f} s, train {cold['train']:.1f} s, eval {cold['eval']:.1f} s)")
        table = {}
        if not args.skip_idle:
            table["idle"] = measure("idle", 0, args, cache, root)
        table[f"{args.busy} busy"] = measure("busy", args.busy, args, cache, root)
    print(f"\n{'condition':<10} {'policy s':>9} {'torch default s':>16} {'1 thread s':>11} "
          f"{'policy/1 thread':>16} {'torch default/1 thread':>23}")
    for name, r in table.items():
        one = r["1 thread"]["work"]
        print(f"{name:<10} {r['policy']['work']:>9.1f} {r['torch default']['work']:>16.1f} "
              f"{one:>11.1f} {r['policy']['work'] / one:>16.2f} "
              f"{r['torch default']['work'] / one:>23.2f}")
    print("(seconds = train + eval from results.json; extraction is a warm-cache read)")
    for name, r in table.items():
        print(f"{name}: the policy's whole run (warm cache) took {r['policy']['wall']:.1f} s wall")


if __name__ == "__main__":
    main()
