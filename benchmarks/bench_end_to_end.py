"""The whole default ``clap4cl run`` vs. a bare encoder forward over the same images.

For the default run's data (digits: 1347 train images x 2 views + 450 test = 3144
encoder passes) and the encoder given by --arch (random weights cost what pretrained
ones cost), this measures in one process:

1. the bare image encoder (``encode_images`` under ``torch.no_grad``) over exactly the
   views the run extracts, on preprocessed tensors already in memory, at the
   extraction's batch size;
2. the full run through ``clap4cl run``'s engine (``run_experiment``) with the default
   config (the paper's CLAP settings: 5 epochs, M = 20, memory, finetuning, per-image
   evaluation after every experience, novelty detection; TensorBoard and plots as the
   CLI writes them, no progress bars) and a fresh empty cache, so extraction really
   happens; broken down by the phases of results.json's ``timing``;

and prints their ratio and peak memory. Goal: full run <= 1.3x the bare encoder pass.

    python benchmarks/bench_end_to_end.py [--arch ViT-B-32] [--threads 2] [--order bare-first]
        [--dataset digits] [--limit N] [--set KEY=VALUE ...] [--profile] [--quick]
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import os
import re
import resource
import tempfile
import time
from pathlib import Path

import torch

import scenarios
from bench_extraction import bare_encoder_seconds
from bench_full_stream import profile_top
from clap4cl.encoders.backbones import load_clip
from clap4cl.runner.config import default_config_path, load_config
from clap4cl.errors import UserError
from clap4cl.runner.experiment import run_experiment
from clap4cl.features.cache import TEST_VIEWS, TRAIN_VIEWS
from machine import header
from scenarios.base import ImageDataset, make_fingerprint

GOAL = 1.3
DISTURBED = 0.2  # cores used by other processes above which the measurement is flagged
QUICK_ARCH = "tiny-vit"


class _FirstImages(ImageDataset):
    """The first ``n`` images of an image dataset (``--limit``)."""

    def __init__(self, base: ImageDataset, n: int):
        super().__init__(base.targets[:n], base.transform)
        self.base = base

    def load_image(self, index: int):
        return self.base.load_image(index)


def limited_splits_loader(limit):
    """``scenarios.get_dataset_splits`` keeping only the first ``limit`` images of each split
    (the unchanged loader when ``limit`` is None). The run and the bare pass both load their
    images through it, so they see the same images."""
    loader = scenarios.registry.get_dataset_splits
    if limit is None:
        return loader

    def load(name, root=None, **kwargs):
        splits = loader(name, root, **kwargs)
        return dataclasses.replace(
            splits, train=_FirstImages(splits.train, limit), test=_FirstImages(splits.test, limit),
            fingerprint=make_fingerprint(splits.fingerprint, f"first {limit} images"))

    return load


def run_config(args, cache_dir: Path):
    overrides = [f"backbone.arch={args.arch}", f"cache.dir={cache_dir}", *args.overrides]
    if args.dataset is not None:
        overrides.append(f"dataset.name={args.dataset}")
    if args.root is not None:
        overrides.append(f"dataset.root={args.root}")
    return load_config(default_config_path(), overrides)


def bare_pass(config, load_splits):
    """(seconds, (train images, test images), GiB of input tensors) of the bare encoder over
    every view the run extracts: train original + flip, test original."""
    bb, ds = config["backbone"], config["dataset"]
    backbone = load_clip(bb["arch"], bb["pretrained"], precision=bb["precision"], device=bb["device"])
    splits = load_splits(scenarios.canonical_name(ds["name"]), ds["root"], **ds["options"])
    counts = (len(splits.train), len(splits.test))
    size = backbone.image_size
    with torch.no_grad():
        backbone.encode_images(torch.zeros(2, 3, size, size))  # warm-up
        seconds = bare_encoder_seconds(backbone, splits, config["cache"]["batch_size"])
    n = counts[0] * len(TRAIN_VIEWS) + counts[1] * len(TEST_VIEWS)
    del backbone
    gc.collect()
    return seconds, counts, n * 3 * size * size * 4 / 2 ** 30


def full_run(config, out: Path, profiler=None):
    """(total seconds, results.json document, peak RSS GiB of the run alone or None, peak RSS
    GiB of the process before the run)."""
    before = peak_memory_gib()
    reset = reset_peak_rss()  # also resets ru_maxrss: the process's peak so far is `before`
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    results = run_experiment(config, out / "run", progress=False)
    if profiler is not None:
        profiler.disable()
    total = time.perf_counter() - start
    return total, results, vm_hwm_gib() if reset else None, before


class OtherLoad:
    """CPU seconds that other processes used while the block ran (busy time of /proc/stat
    minus this process's own), so a measurement disturbed by other work shows it."""

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        (busy0, own0, t0), (busy1, own1, t1) = self.start, self._sample()
        self.seconds = max(0.0, (busy1 - busy0) - (own1 - own0))
        self.cores = self.seconds / max(t1 - t0, 1e-9)

    @staticmethod
    def _sample():
        own = sum(os.times()[:2])
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            busy = own
        return busy, own, time.perf_counter()


def peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM, which ru_maxrss reads too) to the
    current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm_gib() -> float:
    kib = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)
    return int(kib) / 2 ** 20


def print_profile(profiler, top: int) -> None:
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        print(f"\nprofile of the run, top {top} by {title}:")
        for line in profile_top(profiler, top, key):
            print("   ", line[:160])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test in seconds: --arch {QUICK_ARCH} (the default run's encoder)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--order", default="bare-first", choices=("bare-first", "run-first", "both"),
                        help="both: bare pass before and after the run, averaged (cancels drift)")
    parser.add_argument("--dataset", default=None, help="dataset.name (default: the default config's)")
    parser.add_argument("--root", default=None, help="dataset.root")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N images of each split (run and bare pass)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="further config overrides, as clap4cl run --set (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the run and print its top entries (slows the run down)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.quick:
        args.arch = QUICK_ARCH
    torch.set_num_threads(args.threads)
    print(header())
    load_splits = limited_splits_loader(args.limit)
    scenarios.get_dataset_splits = load_splits  # what scenarios.class_incremental calls
    profiler = cProfile.Profile() if args.profile else None

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            config = run_config(args, tmp / "cache")  # the cache directory does not exist yet
            measured = measure(args, config, load_splits, tmp, profiler)
        except UserError as exc:  # bad --set, --dataset, --limit: one line, as clap4cl run
            parser.exit(2, f"bench_end_to_end: error: {exc}\n")
    report(args, config, profiler, **measured)


def measure(args, config, load_splits, tmp: Path, profiler):
    """The bare pass(es) and the run, in the order of ``--order``."""
    bare_times, bare_loads = [], []
    if args.order != "run-first":
        with OtherLoad() as load:
            seconds, (n_train, n_test), tensor_gib = bare_pass(config, load_splits)
        bare_times.append(seconds)
        bare_loads.append(load.cores)
    with OtherLoad() as run_load:
        total, results, run_peak, peak_before_run = full_run(config, tmp, profiler)
    if args.order != "bare-first":
        with OtherLoad() as load:
            seconds, (n_train, n_test), tensor_gib = bare_pass(config, load_splits)
        bare_times.append(seconds)
        bare_loads.append(load.cores)
    return dict(bare_times=bare_times, bare_loads=bare_loads, n_train=n_train, n_test=n_test,
                tensor_gib=tensor_gib, total=total, results=results, run_load=run_load.cores,
                run_peak=run_peak, peak_before_run=peak_before_run)


def report(args, config, profiler, *, bare_times, bare_loads, n_train, n_test, tensor_gib, total,
           results, run_load, run_peak, peak_before_run):
    bare = sum(bare_times) / len(bare_times)
    timing = results["timing"]
    other = total - sum(timing.values())
    ratio = total / bare
    order = {"bare-first": "bare pass first, then the run",
             "run-first": "the run first, then the bare pass",
             "both": "bare pass before and after the run (averaged)"}[args.order]
    n_images = n_train * len(TRAIN_VIEWS) + n_test * len(TEST_VIEWS)
    print(f"dataset {results['dataset']}, backbone {args.arch} "
          f"({config['backbone']['pretrained'] or 'random weights'}), {n_images} encoder passes "
          f"({n_train} train x {len(TRAIN_VIEWS)} views + {n_test} test), "
          f"batch {config['cache']['batch_size']}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; order: {order}")
    print(f"run: {config['method']}, {results['n_experiences']} experiences, "
          f"{config['clap']['epochs']} epochs + {config['clap']['finetune_epochs']} finetuning, "
          f"M = {config['clap']['mc_samples']}, memory {config['memory']['size']}, "
          f"eval context {config['eval']['context']}, novelty detection "
          f"{'on' if config['eval']['novelty'] else 'off'}; "
          f"last accuracy {100 * results['last_accuracy']:.1f} %")
    print("| what | seconds | images/s | share of the run |")
    print("|---|---|---|---|")
    each = (f" (mean of {bare_times[0]:.2f} s before and {bare_times[1]:.2f} s after the run)"
            if len(bare_times) > 1 else "")
    print(f"| bare encoder forward{each} | {bare:.2f} | {n_images / bare:.1f} | |")
    print(f"| full run (`clap4cl run` engine) | {total:.2f} | {n_images / total:.1f} | 100 % |")
    phases = (("extract", "extract (load backbone + data, decode, preprocess, encode, cache write, prompts)"),
              ("train", "train"), ("eval", "eval"))
    for key, label in phases:
        print(f"| - {label} | {timing[key]:.2f} | | {100 * timing[key] / total:.1f} % |")
    print(f"| - other (strategy setup, checkpoints, results, plots, TensorBoard) | {other:.2f} | | "
          f"{100 * other / total:.1f} % |")
    verdict = (f"met ({GOAL * bare - total:.1f} s to spare)" if ratio <= GOAL else
               f"missed by {total - GOAL * bare:.1f} s ({ratio / GOAL:.2f}x the goal)")
    print(f"full run = {ratio:.2f} x bare encoder (goal <= {GOAL}): {verdict}"
          + ("  [profiled: cProfile overhead inflates the run]" if args.profile else ""))
    print(f"time outside the bare encoder work: {total - bare:.2f} s "
          f"({100 * (total - bare) / bare:.0f} % of the bare pass)")
    print(f"other processes' CPU use meanwhile (of {os.cpu_count()} cores): "
          f"{' / '.join(f'{c:.2f}' for c in bare_loads)} cores during the bare pass"
          f"{'es' if len(bare_loads) > 1 else ''}, {run_load:.2f} during the run")
    if max(bare_loads + [run_load]) > DISTURBED:
        print(f"WARNING: other work shared the {os.cpu_count()} cores during the measurement; "
              f"its times (and small-op training most) are slowed down: rerun on a quiet machine")
    line = (f"peak memory (ru_maxrss, whole process: imports, bare pass with its "
            f"{tensor_gib:.2f} GiB of input tensors, run): "
            f"{max(peak_before_run, peak_memory_gib()):.2f} GiB")
    if run_peak is not None:
        line += f"; the run alone (VmHWM reset before it): {run_peak:.2f} GiB"
    print(line)
    if profiler is not None:
        print_profile(profiler, args.top)


if __name__ == "__main__":
    main()
