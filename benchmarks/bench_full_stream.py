"""The complete CLAP protocol on full-size streams of cached features, on the CPU.

A CIFAR-100-sized synthetic feature stream (100 classes, 10 experiences, 50 000 training
samples x 2 views, 10 000 test, D = 512) and an ImageNet-R-sized one (200 classes,
24 000 / 6 000) go through ``clap4cl run``'s engine with the paper's settings: 5 epochs,
M = 20, memory 2000 (CIFAR) or 20 per class (ImageNet-R), class-balanced finetuning,
evaluation after every experience, novelty detection, checkpoints. Prints the time per
phase, peak memory and the top entries of a cProfile profile.
Goal: each completes on 2 CPU cores with peak memory <= 2 GiB.

    python benchmarks/bench_full_stream.py [--size cifar100|imagenet_r|both] [--epochs 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import resource
import tempfile
import threading
import time

import torch

from clap4cl.runner import results as run_results
from clap4cl.runner.config import load_config
from clap4cl.runner.experiment import run_experiment

SIZES = {
    "cifar100": dict(n_classes=100, train_per_class=500, test_per_class=100,
                     memory={"memory.policy": "fixed_total", "memory.size": 2000}),
    "imagenet_r": dict(n_classes=200, train_per_class=120, test_per_class=30,
                       memory={"memory.policy": "per_class", "memory.per_class": 20}),
}


def config_for(size: str, epochs: int, finetune_epochs: int):
    spec = SIZES[size]
    options = (f"{{n_classes: {spec['n_classes']}, dim: 512, train_per_class: "
               f"{spec['train_per_class']}, test_per_class: {spec['test_per_class']}}}")
    overrides = {"method": "clap", "dataset.name": "synthetic", "dataset.n_experiences": 10,
                 "dataset.options": options, "clap.epochs": epochs,
                 "clap.finetune_epochs": finetune_epochs, "clap.mc_samples": 20,
                 "eval.context": "per_image", "logging.tensorboard": False, **spec["memory"]}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def resident_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


class PhaseMemory:
    """Resident-memory high-water mark per phase of the run (extract = generating the
    stream, train, eval), sampled every 20 ms while ``clap4cl.runner.run_results.Timer`` phases run."""

    def __init__(self):
        self.peaks = {}
        self.phase = "setup"
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            rss = resident_gib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(0.02)

    @contextlib.contextmanager
    def watching(self):
        original = run_results.Timer.phase
        memory = self

        @contextlib.contextmanager
        def phase(timer, name):
            memory.phase = name
            try:
                with original(timer, name):
                    yield
            finally:
                memory.phase = "between phases"

        run_results.Timer.phase = phase
        try:
            yield
        finally:
            run_results.Timer.phase = original


def bench(size: str, epochs: int, finetune_epochs: int, top: int) -> None:
    config = config_for(size, epochs, finetune_epochs)
    profiler = cProfile.Profile()
    memory = PhaseMemory()
    time.sleep(0.1)
    imported = memory.peaks["setup"]
    with tempfile.TemporaryDirectory() as out, memory.watching():
        start = time.perf_counter()
        profiler.enable()
        results = run_experiment(config, f"{out}/run", progress=False)
        profiler.disable()
        total = time.perf_counter() - start
    timing = results["timing"]
    print(f"\n{size}-sized stream: {SIZES[size]['n_classes']} classes, 10 experiences, "
          f"{epochs} epochs + {finetune_epochs} finetuning, M = 20, per_image evaluation")
    print(f"  total {total:7.1f} s   generate/load {timing['extract']:6.1f} s   "
          f"train {timing['train']:7.1f} s   evaluate {timing['eval']:6.1f} s")
    print(f"  peak memory {peak_memory_gib():.2f} GiB (goal <= 2 GiB)   "
          f"last accuracy {100 * results['last_accuracy']:.2f}   "
          f"novelty AUROC (energy, mean) {100 * results['novelty_mean']['energy']['auroc']:.2f}")
    print(f"  resident memory high-water marks: after imports {imported:.2f} GiB, "
          + ", ".join(f"{name} {gib:.2f} GiB" for name, gib in memory.peaks.items()
                      if name != "setup"))
    print(f"  profile, top {top} by own time:")
    for line in profile_top(profiler, top):
        print("   ", line[:150])


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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in (("cifar100", "imagenet_r") if args.size == "both" else (args.size,)):
        bench(size, args.epochs, args.finetune_epochs, args.top)


if __name__ == "__main__":
    main()
