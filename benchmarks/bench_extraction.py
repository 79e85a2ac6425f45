"""Feature extraction vs. a bare encoder forward over the same tensors.

For the default run's data (digits, tiny-vit unless --arch says otherwise) this prints
the throughput of the feature cache's extraction (all views the run needs: train
original + flip, test original; fp16 writes, checksums, atomic commits) and of the bare
image encoder over exactly the same preprocessed tensors, measured in one run.
Goal: extraction >= 0.8x the bare encoder's throughput.

    python benchmarks/bench_extraction.py [--arch ViT-B-32] [--dataset digits] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Subset

from clap4cl.encoders.backbones import load_clip
from clap4cl.features.cache import TEST_VIEWS, TRAIN_VIEWS, FeatureCache
from scenarios.registry import get_dataset_splits


def bare_encoder_seconds(backbone, datasets_and_views, batch_size):
    """Encoder forward passes over preprocessed tensors already in memory."""
    tensors = []
    for dataset, views in datasets_and_views:
        images = torch.cat([x for x, _ in DataLoader(dataset, batch_size=batch_size)])
        for view in views:
            tensors.append(torch.flip(images, dims=[-1]) if view == "flip" else images)
    start = time.perf_counter()
    n = 0
    for images in tensors:
        for i in range(0, len(images), batch_size):
            backbone.encode_images(images[i:i + batch_size])
            n += len(images[i:i + batch_size])
    return time.perf_counter() - start, n


def extraction_seconds(backbone, splits, datasets_and_views, batch_size, num_workers):
    with tempfile.TemporaryDirectory() as root:
        cache = FeatureCache(root)
        start = time.perf_counter()
        for (dataset, views), split in zip(datasets_and_views, ("train", "test")):
            cache.get_or_extract(backbone, dataset, dataset_id=splits.fingerprint, split=split,
                                 views=views, batch_size=batch_size, num_workers=num_workers,
                                 progress=False)
        return time.perf_counter() - start, cache


def _first(dataset, limit):
    if limit is None or limit >= len(dataset):
        return dataset
    subset = Subset(dataset, range(limit))
    subset.targets = dataset.targets[:limit]
    return subset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny-vit")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N images of each split (large encoders)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers decoding and preprocessing images during extraction")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    backbone = load_clip(args.arch)
    splits = get_dataset_splits(args.dataset)
    pairs = [(_first(splits.train.with_transform(backbone.preprocess_test), args.limit), TRAIN_VIEWS),
             (_first(splits.test.with_transform(backbone.preprocess_test), args.limit), TEST_VIEWS)]
    backbone.encode_images(torch.zeros(2, 3, backbone.image_size, backbone.image_size))  # warm-up
    # bare passes before and after the extraction, averaged, to cancel slow drift of the machine
    bare_before, n_images = bare_encoder_seconds(backbone, pairs, args.batch_size)
    extract, _ = extraction_seconds(backbone, splits, pairs, args.batch_size, args.num_workers)
    bare_after, _ = bare_encoder_seconds(backbone, pairs, args.batch_size)
    bare = (bare_before + bare_after) / 2
    print(f"dataset {args.dataset}, backbone {args.arch}, {n_images} encoder passes "
          f"(train x2 views + test), batch {args.batch_size}, "
          f"{args.num_workers} loader workers, {torch.get_num_threads()} threads")
    print("| what | seconds | images/s |")
    print("|---|---|---|")
    print(f"| bare encoder forward | {bare:.2f} | {n_images / bare:.0f} |")
    print(f"| cache extraction (decode + preprocess + encode + write) | {extract:.2f} | {n_images / extract:.0f} |")
    ratio = bare / extract
    print(f"extraction throughput = {ratio:.2f} x bare encoder (goal >= 0.8): "
          f"{'met' if ratio >= 0.8 else 'missed'}")


if __name__ == "__main__":
    main()
