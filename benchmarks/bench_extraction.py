"""Feature-cache fill vs. a bare pipeline doing the same work in memory.

Three timings over the same images, in one process (all views a run needs: train
original + flip, test original):

- cache fill: ``FeatureCache.get_or_extract`` as ``scenarios.class_incremental(...,
  level="features")`` calls it (decode, preprocess, encode, fp16 memmap writes,
  checksums, atomic commits); only the time inside ``get_or_extract`` is counted, the
  class text features the benchmark also computes are not;
- bare pipeline: a plain loop decoding and preprocessing every image through the
  backbone's test transform one by one, stacking batches, encoding each view, converting
  to fp16, keeping nothing (measured before and after the cache fill, averaged);
- bare encoder: the encoder alone over preprocessed tensors already in memory.

Goal: cache fill >= 0.8x the bare pipeline's throughput.

    python benchmarks/bench_extraction.py [--arch ViT-B-32] [--dataset digits|fashion_mnist|generated]
        [--images 6000] [--batch-size 128] [--num-workers 0]

``--dataset generated`` writes random 28x28 grayscale images (Fashion-MNIST's format, ``--images``
train images and a sixth of that for test) to a temporary folder and reads them with the
fashion_mnist loader; ``fashion_mnist`` uses the installed ``dataset-fashion-mnist``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import scenarios
from clap4cl.encoders.backbones import load_clip
from clap4cl.features.cache import TEST_VIEWS, TRAIN_VIEWS, FeatureCache
from machine import header
from scenarios.registry import get_dataset_splits


def write_generated_idx(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random 28x28 images and balanced labels of 10 classes as the four idx files."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())


def bare_pipeline_seconds(backbone, splits, batch_size):
    """Decode + per-image preprocessing + encoding of every view, nothing stored."""
    start, n = time.perf_counter(), 0
    for dataset, views in ((splits.train, TRAIN_VIEWS), (splits.test, TEST_VIEWS)):
        dataset = dataset.with_transform(backbone.preprocess_test)
        for first in range(0, len(dataset), batch_size):
            images = torch.stack([dataset[i][0] for i in range(first, min(first + batch_size,
                                                                          len(dataset)))])
            for view in views:
                batch = torch.flip(images, dims=[-1]) if view == "flip" else images
                backbone.encode_images(batch).numpy().astype(np.float16)
                n += len(batch)
    return time.perf_counter() - start, n


def bare_encoder_seconds(backbone, splits, batch_size):
    """Encoder forward passes over preprocessed tensors already in memory."""
    tensors = []
    for dataset, views in ((splits.train, TRAIN_VIEWS), (splits.test, TEST_VIEWS)):
        dataset = dataset.with_transform(backbone.preprocess_test)
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        tensors += [torch.flip(images, dims=[-1]) if v == "flip" else images for v in views]
    start = time.perf_counter()
    for images in tensors:
        for i in range(0, len(images), batch_size):
            backbone.encode_images(images[i:i + batch_size])
    return time.perf_counter() - start


def cache_fill_seconds(backbone, name, root, batch_size, num_workers):
    """Seconds spent in FeatureCache.get_or_extract while class_incremental builds the
    feature-level benchmark into an empty cache, and the whole call's seconds."""
    spent = []
    original = FeatureCache.get_or_extract

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as cache_dir:
        FeatureCache.get_or_extract = timed
        try:
            start = time.perf_counter()
            scenarios.class_incremental(name, n_experiences=2, root=root, level="features",
                                        backbone=backbone, cache=FeatureCache(cache_dir),
                                        batch_size=batch_size, num_workers=num_workers,
                                        progress=False)
            whole = time.perf_counter() - start
        finally:
            FeatureCache.get_or_extract = original
    return sum(spent), whole


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny-vit")
    parser.add_argument("--dataset", default="digits",
                        choices=["digits", "fashion_mnist", "generated"])
    parser.add_argument("--images", type=int, default=6000,
                        help="train images of --dataset generated (test: a sixth)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers decoding and preprocessing images during the cache fill")
    args = parser.parse_args()
    print(header())
    backbone = load_clip(args.arch)
    with tempfile.TemporaryDirectory() as data_dir:
        name, root = args.dataset, None
        if name == "generated":
            write_generated_idx(Path(data_dir), args.images, max(10, args.images // 6))
            name, root = "fashion_mnist", data_dir
        splits = get_dataset_splits(name, root)
        backbone.encode_images(torch.zeros(2, 3, backbone.image_size, backbone.image_size))
        before, n_passes = bare_pipeline_seconds(backbone, splits, args.batch_size)
        fill, whole = cache_fill_seconds(backbone, name, root, args.batch_size, args.num_workers)
        after, _ = bare_pipeline_seconds(backbone, splits, args.batch_size)
        encoder = bare_encoder_seconds(backbone, splits, args.batch_size)
    bare = (before + after) / 2
    print(f"dataset {args.dataset} ({len(splits.train)} train + {len(splits.test)} test images), "
          f"backbone {args.arch}, {n_passes} encoder passes (train x2 views + test), "
          f"batch {args.batch_size}, {args.num_workers} loader workers")
    print("| what | seconds | passes/s |")
    print("|---|---|---|")
    print(f"| bare encoder forward (tensors in memory) | {encoder:.2f} | {n_passes / encoder:.0f} |")
    print(f"| bare pipeline (decode + preprocess + encode), mean of {before:.2f} and {after:.2f} "
          f"| {bare:.2f} | {n_passes / bare:.0f} |")
    print(f"| cache fill via class_incremental(level='features') | {fill:.2f} | "
          f"{n_passes / fill:.0f} |")
    print(f"(class_incremental as a whole, with class text features: {whole:.2f} s)")
    ratio = bare / fill
    print(f"cache fill = {ratio:.2f} x bare pipeline (goal >= 0.8): "
          f"{'met' if ratio >= 0.8 else 'missed'}; {encoder / fill:.2f} x bare encoder")


if __name__ == "__main__":
    main()
