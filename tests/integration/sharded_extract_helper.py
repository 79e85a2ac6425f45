"""Extract a small random image set through ``FeatureCache``, alone or under torchrun.

Run by tests/integration/test_distributed_extraction.py (not collected by pytest itself)::

    python sharded_extract_helper.py CACHE_DIR REPORT_DIR [--cache-per-rank]

Writes REPORT_DIR/rank<r>.json: how many images this rank encoded and a hash of the
features ``get_or_extract`` returned to it. ``--cache-per-rank`` gives every rank its own
cache directory (CACHE_DIR/rank<r>), like nodes without a shared filesystem.

Fault injection (test-only): with ``KILL_RANK1_AT=<index>`` in the environment, rank 1
SIGKILLs itself (no clean-up, like an OOM kill or a lost node) when its loader reaches
that item, after waiting until rank 0's shard is complete, so the test sees one finished
and one interrupted shard whatever the scheduling.
"""
import argparse
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from clap4cl import distributed
from clap4cl.encoders.backbones import load_clip
from clap4cl.features.cache import TRAIN_VIEWS, FeatureCache, Shard

N_IMAGES, BATCH_SIZE, DATASET_ID, SPLIT = 40, 8, "toy-images", "train"


class RandomImages(Dataset):
    """Seeded random (3, 32, 32) tensors; ``before_item(index)`` runs before each item."""

    def __init__(self, before_item=None):
        self.x = torch.randn(N_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        self.before_item = before_item

    def __len__(self):
        return N_IMAGES

    def __getitem__(self, index):
        if self.before_item is not None:
            self.before_item(index)
        return self.x[index], 0


def shard_records(cache, backbone, index, count):
    """Completion records of shard ``index`` of ``count``, one per view."""
    shard = Shard.of(N_IMAGES, BATCH_SIZE, index, count)
    return [cache.meta_path(cache.key(backbone, DATASET_ID, SPLIT, view), shard)
            for view in TRAIN_VIEWS]


def kill_at(index, wait_for):
    def before_item(i):
        if i == index:
            deadline = time.monotonic() + 120
            while not all(p.is_file() for p in wait_for) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
    return before_item


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("--cache-per-rank", action="store_true")
    args = parser.parse_args()

    distributed.init_from_env(seed=0, device="cpu")
    rank = distributed.rank()
    root = args.cache_dir / f"rank{rank}" if args.cache_per_rank else args.cache_dir
    cache, backbone = FeatureCache(root), load_clip("tiny-vit")
    before_item = None
    if rank == 1 and os.environ.get("KILL_RANK1_AT"):
        before_item = kill_at(int(os.environ["KILL_RANK1_AT"]),
                              shard_records(cache, backbone, 0, distributed.world_size()))
    report = extract(cache, backbone, RandomImages(before_item))
    args.report_dir.mkdir(parents=True, exist_ok=True)
    (args.report_dir / f"rank{rank}.json").write_text(json.dumps(report))


def extract(cache, backbone, dataset) -> dict:
    """Both train views of ``dataset`` through ``cache``: images encoded, feature hashes."""
    found = cache.get_or_extract(backbone, dataset, dataset_id=DATASET_ID, split=SPLIT,
                                 views=TRAIN_VIEWS, batch_size=BATCH_SIZE, progress=False)
    return {"encoded": cache.extracted_images,
            "features": {v: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
                         for v, a in found.items()}}


if __name__ == "__main__":
    main()
