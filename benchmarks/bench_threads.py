"""One CLAP training step and one per-image evaluation batch at 1 and 2 intra-op threads.

The measurement behind the thread policy's "heavy" thresholds (clap4cl/runner/threads.py,
docs/cli-and-config.md "Threads"): for several (classes, width) sizes it times a main-phase
training step (batch 32, batch context, M = 20, the newest of 10-class heads training) and a
per-image evaluation batch of 128, alternating the thread counts, best of 3, and prints
the ratios 1 thread / 2 threads. Run it on an idle machine.

    python benchmarks/bench_threads.py [--sizes 10x512 50x512 100x512 10x128 100x128]
"""
from __future__ import annotations

import argparse
import time

import torch

from bench_clap import grown_model, steps_per_second
from clap4cl.models.clap import ClapModel
from machine import header


def build(n_classes: int, dim: int, per_task: int = 10) -> ClapModel:
    torch.manual_seed(0)
    model = grown_model(n_classes // per_task, per_task, dim, "per_image")
    model.heads.set_trainable([model.heads.n_tasks - 1])      # the main phase: newest head
    return model


def train_step_seconds(model: ClapModel, batch: int = 32, steps: int = 10) -> float:
    x = torch.randn(batch, model.dim)
    y = torch.randint(0, model.n_seen_classes, (batch,))
    steps_per_second(model, x, y, 1)                          # warm-up
    return 1 / steps_per_second(model, x, y, steps)


@torch.no_grad()
def eval_batch_seconds(model: ClapModel, batch: int = 128, repeats: int = 3) -> float:
    model.eval()
    x = torch.nn.functional.normalize(torch.randn(batch, model.dim), dim=-1)
    generator = torch.Generator().manual_seed(0)
    model.sample(x, context="per_image", generator=generator)
    start = time.perf_counter()
    for _ in range(repeats):
        model.sample(x, context="per_image", generator=generator)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10x512", "50x512", "100x512", "10x128", "100x128"],
                        help="CLASSESxWIDTH")
    args = parser.parse_args()
    print(header())
    print("| classes | width | train step 1 thread | 2 threads | ratio | eval batch 1 thread | 2 threads | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n_classes, dim = map(int, size.split("x"))
        model = build(n_classes, dim)
        best = {1: [float("inf")] * 2, 2: [float("inf")] * 2}
        for _ in range(3):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                times = (train_step_seconds(model), eval_batch_seconds(model))
                best[threads] = [min(a, b) for a, b in zip(best[threads], times)]
        (t1, e1), (t2, e2) = best[1], best[2]
        print(f"| {n_classes} | {dim} | {1000 * t1:.1f} ms | {1000 * t2:.1f} ms | {t1 / t2:.2f}× "
              f"| {1000 * e1:.1f} ms | {1000 * e2:.1f} ms | {e1 / e2:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
