"""The complete CLAP protocol on full-size streams of cached features, on the CPU.

A CIFAR-100-sized synthetic feature stream (100 classes, 10 experiences, 50 000 training
samples x 2 views, 10 000 test, D = 512) and an ImageNet-R-sized one (200 classes,
24 000 / 6 000) go through ``clap4cl run``'s engine with the paper's settings: 5 epochs,
M = 20, memory 2000 (CIFAR) or 20 per class (ImageNet-R), class-balanced finetuning,
evaluation after every experience, novelty detection, checkpoints. Prints the time per
phase, peak memory and the top entries of a cProfile profile.
Goal: each completes on 2 CPU cores with peak memory <= 2 GiB.

``--scale s`` keeps the classes, experiences, batch sizes and M (so every step has the
full-size shapes) and multiplies the samples per class and the memory by s (so
finetuning keeps its share of the steps): ``--scale 0.05`` runs the
CIFAR-100-sized protocol in about a minute, for profiling on a busy machine.
``--against TREE`` runs the same benchmark alternately with the code of another source
tree (e.g. a ``git worktree`` of an older commit) and with this one, each in a fresh
process, and prints the ratios per phase and of peak memory.

    python benchmarks/bench_full_stream.py [--size cifar100|imagenet_r|both] [--epochs 5]
        [--threads auto] [--scale 1.0] [--against TREE] [--repeats 1] [--count-flops]

``--count-flops`` counts the floating-point operations of every matrix product of the
training and the evaluation phase and prints the time they need at the machine's peak
product rate: the floor below which no schedule of the same arithmetic can go.

The run's own thread policy applies (``threads: auto``) unless ``--threads N`` is given;
the output names the thread counts each phase used, the machine and the load.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time

import torch

from clap4cl.runner import experiment
from clap4cl.runner import results as run_results
from clap4cl.runner.config import load_config
from clap4cl.runner.experiment import run_experiment
from machine import header, matmul_peak_gflops

SIZES = {
    "cifar100": dict(n_classes=100, train_per_class=500, test_per_class=100,
                     memory={"memory.policy": "fixed_total", "memory.size": 2000}),
    "imagenet_r": dict(n_classes=200, train_per_class=120, test_per_class=30,
                       memory={"memory.policy": "per_class", "memory.per_class": 20}),
}
TIME_GOALS = {"cifar100": 270}   # seconds, per-image evaluation, 2 idle cores


def config_for(size: str, epochs: int, finetune_epochs: int, scale: float = 1.0, threads="auto"):
    spec = SIZES[size]
    train, test = (max(1, round(spec[k] * scale)) for k in ("train_per_class", "test_per_class"))
    options = (f"{{n_classes: {spec['n_classes']}, dim: 512, train_per_class: "
               f"{train}, test_per_class: {test}}}")
    # Scaled with the stream, so finetuning keeps its share of the steps; at least one
    # exemplar per class (a smaller fixed total leaves the memory empty).
    memory = {k: (max(spec["n_classes"] if k == "memory.size" else 1, round(v * scale))
                  if isinstance(v, int) else v) for k, v in spec["memory"].items()}
    overrides = {"method": "clap", "dataset.name": "synthetic", "dataset.n_experiences": 10,
                 "dataset.options": options, "clap.epochs": epochs,
                 "clap.finetune_epochs": finetune_epochs, "clap.mc_samples": 20,
                 "eval.context": "per_image", "logging.tensorboard": False, "threads": threads,
                 **memory}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def resident_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


class PhaseRecorder:
    """Per phase of the run (extract = generating the stream, train, eval): the
    resident-memory high-water mark (sampled every 20 ms), the intra-op thread counts the
    run's thread policy chose, and a cProfile profile of that phase alone; with
    ``count_flops`` also the floating-point operations of its matrix products (counted
    by ``torch.utils.flop_counter``, which slows the run down: its times are not kept)."""

    def __init__(self, count_flops: bool = False):
        self.peaks, self.threads, self.profiles, self.flops = {}, {}, {}, {}
        self.count_flops = count_flops
        self.phase = "setup"
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            rss = resident_gib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(0.02)

    @contextlib.contextmanager
    def watching(self):
        original_phase, original_threads = run_results.Timer.phase, experiment.phase_threads
        recorder = self

        @contextlib.contextmanager
        def phase(timer, name):
            recorder.phase = name
            profiler = recorder.profiles.setdefault(name, cProfile.Profile())
            try:
                with original_phase(timer, name), recorder._flop_counter(name):
                    profiler.enable()
                    try:
                        yield
                    finally:
                        profiler.disable()
            finally:
                recorder.phase = "between phases"

        @contextlib.contextmanager
        def phase_threads(name, setting, **kwargs):
            with original_threads(name, setting, **kwargs):
                recorder.threads.setdefault(name, set()).add(torch.get_num_threads())
                yield

        run_results.Timer.phase, experiment.phase_threads = phase, phase_threads
        try:
            yield
        finally:
            run_results.Timer.phase, experiment.phase_threads = original_phase, original_threads

    @contextlib.contextmanager
    def _flop_counter(self, name):
        if not self.count_flops:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            yield
        self.flops[name] = self.flops.get(name, 0) + counter.get_total_flops()


def print_arithmetic_floor(recorder: PhaseRecorder, size: str) -> None:
    """Seconds the counted matrix products of training and evaluation need at the
    machine's peak product rate, against the time goal of the protocol."""
    floors = {}
    for name in ("train", "eval"):
        threads = max(recorder.threads.get(name, {torch.get_num_threads()}))
        rate = matmul_peak_gflops(threads)
        floors[name] = recorder.flops.get(name, 0) / rate / 1e9
        print(f"  {name}: {recorder.flops.get(name, 0) / 1e12:8.2f} TFLOP of matrix products; "
              f"at the peak rate of {rate:.0f} GFLOP/s ({threads} threads) >= {floors[name]:6.1f} s")
    goal = TIME_GOALS.get(size)
    total = sum(floors.values())
    verdict = "" if goal is None else (f" (goal {goal} s: " + ("reachable in arithmetic)" if total < goal
                                       else f"below the arithmetic by {total / goal:.2f}x)"))
    print(f"  arithmetic floor of training + evaluation >= {total:.1f} s{verdict}; "
          "the times of this run are not shown: counting slows it down")


def bench(size: str, epochs: int, finetune_epochs: int, top: int, scale: float = 1.0,
          threads="auto", count_flops: bool = False) -> dict:
    config = config_for(size, epochs, finetune_epochs, scale, threads)
    recorder = PhaseRecorder(count_flops)
    time.sleep(0.1)
    imported = recorder.peaks["setup"]
    with tempfile.TemporaryDirectory() as out, recorder.watching():
        start = time.perf_counter()
        results = run_experiment(config, f"{out}/run", progress=False)
        total = time.perf_counter() - start
    timing = results["timing"]
    scaled = "" if scale == 1.0 else f", samples per class x {scale:g}"
    print(f"\n{size}-sized stream: {SIZES[size]['n_classes']} classes, 10 experiences, "
          f"{epochs} epochs + {finetune_epochs} finetuning, M = 20, per_image evaluation{scaled}")
    if count_flops:
        print_arithmetic_floor(recorder, size if scale == 1.0 else None)
        return {}
    print(f"  threads: {threads} -> " + ", ".join(
        f"{name} {'/'.join(map(str, sorted(n)))}" for name, n in recorder.threads.items())
        + f"; load average {os.getloadavg()[0]:.2f} at the end")
    goal = TIME_GOALS.get(size) if scale == 1.0 else None
    verdict = "" if goal is None else (f"   (goal <= {goal} s: " + ("met)" if total <= goal
                                       else f"missed by {total / goal:.2f}x)"))
    print(f"  total {total:7.1f} s{verdict}\n  generate/load {timing['extract']:6.1f} s   "
          f"train {timing['train']:7.1f} s   evaluate {timing['eval']:6.1f} s")
    print(f"  peak memory {peak_memory_gib():.2f} GiB (goal <= 2 GiB)   "
          f"last accuracy {100 * results['last_accuracy']:.2f}   "
          f"novelty AUROC (energy, mean) {100 * results['novelty_mean']['energy']['auroc']:.2f}")
    print(f"  resident memory high-water marks: after imports {imported:.2f} GiB, "
          + ", ".join(f"{name} {gib:.2f} GiB" for name, gib in recorder.peaks.items()
                      if name != "setup"))
    for name in ("train", "eval"):
        print(f"  {name} profile, top {top} by own time:")
        for line in profile_top(recorder.profiles[name], top):
            print("   ", line[:150])
    return {"total": total, "extract": timing["extract"], "train": timing["train"],
            "eval": timing["eval"], "peak_gib": peak_memory_gib(),
            "last_accuracy": results["last_accuracy"]}


def profile_top(profiler, top: int, sort: str = "tottime"):
    """The header line and the ``top`` entries of a cProfile profile sorted by ``sort``."""
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats(sort).print_stats(top)
    lines = [ln for ln in stream.getvalue().splitlines() if ln.strip()]
    header = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return lines[header:header + top + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="both", choices=("cifar100", "imagenet_r", "both"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--threads", default="auto",
                        help="the run's threads setting: auto (its policy, the default) or a number")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the samples per class (classes and shapes stay)")
    parser.add_argument("--against", metavar="TREE",
                        help="also run another source tree's code and print the ratios")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tree with --against")
    parser.add_argument("--count-flops", action="store_true",
                        help="count each phase's matrix-product FLOPs and print the floor they "
                             "set at the machine's peak product rate (slow; no times)")
    parser.add_argument("--json", help=argparse.SUPPRESS)   # child processes of --against
    args = parser.parse_args()
    sizes = ("cifar100", "imagenet_r") if args.size == "both" else (args.size,)
    if args.against:
        for size in sizes:
            compare(size, args)
        return
    threads = args.threads if args.threads == "auto" else int(args.threads)
    print(header())
    figures = {size: bench(size, args.epochs, args.finetune_epochs, args.top, args.scale, threads,
                           args.count_flops) for size in sizes}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh)


def compare(size: str, args) -> None:
    """Alternate fresh processes running ``args.against``'s code and this tree's; print
    the per-phase medians and the ratios old / new."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"old": os.path.abspath(args.against), "new": here}
    runs = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, tree in trees.items():
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, os.path.abspath(__file__), "--size", size,
                           "--epochs", str(args.epochs), "--finetune-epochs", str(args.finetune_epochs),
                           "--threads", str(args.threads), "--top", str(args.top),
                           "--scale", str(args.scale), "--json", out.name]
                print(f"\n=== {name} code: {tree} (load average {os.getloadavg()[0]:.2f})", flush=True)
                env = {**os.environ, "PYTHONPATH": tree}
                subprocess.run(command, env=env, check=True, cwd=tree)
                with open(out.name) as fh:
                    runs[name].append(json.load(fh)[size])

    def median(name, key):
        values = sorted(r[key] for r in runs[name])
        return values[len(values) // 2]

    print(f"\n{size}, samples per class x {args.scale:g}, {args.repeats} run(s) per tree "
          f"(medians; old = {trees['old']})")
    print(f"  {'':10} {'old':>9} {'new':>9} {'old/new':>8}")
    for key, unit in (("total", "s"), ("train", "s"), ("eval", "s"), ("extract", "s"),
                      ("peak_gib", "GiB")):
        old, new = median("old", key), median("new", key)
        print(f"  {key:10} {old:8.2f}{unit[0]} {new:8.2f}{unit[0]} {old / max(new, 1e-9):8.2f}")
    print(f"  last accuracy old {median('old', 'last_accuracy'):.6f}, "
          f"new {median('new', 'last_accuracy'):.6f}")


if __name__ == "__main__":
    main()
