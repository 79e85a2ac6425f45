"""Feature extraction shared by the ranks of a ``torchrun`` job.

Every rank encodes its own contiguous run of whole batches
(:func:`clap4cl.distributed.shard_range`) into a shard file next to the cache entry,
written and recorded exactly like an entry; rank 0 then joins the shards into the
entry. The joined file is byte-identical to a single-process one (the shards start on
batch boundaries, so every batch is the single-process batch), a shard finished by an
interrupted run is kept and the others are redone. All ranks must see the same cache
directory (on several nodes: a shared filesystem).

The functions work on a :class:`clap4cl.features.cache.FeatureCache` through its entry
primitives (``load``, ``extract``, ``new_entries``, ``locked``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from clap4cl import distributed
from clap4cl.errors import UserError

SHARED_DIR = ("every rank must use the same cache directory (cache.dir; on several nodes "
              "a directory on a filesystem all nodes share)")


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of an entry, encoded by shard ``index`` of ``count``."""

    index: int
    count: int
    start: int
    stop: int

    @classmethod
    def of(cls, n_items: int, batch_size: int, index: int, count: int) -> "Shard":
        """Shard ``index`` of ``count`` of ``n_items`` in whole batches (see ``shard_range``)."""
        return cls(index, count, *distributed.shard_range(n_items, batch_size, index, count))

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def suffix(self) -> str:
        return f".shard{self.index}of{self.count}"


def record_key(key, shard: Optional[Shard]) -> dict:
    """What a completion record names: the key, and for a shard also which rows it holds
    (a shard of another shard count or batch size is not mistaken for this one)."""
    if shard is None:
        return key.as_dict()
    return {**key.as_dict(), "shard": [shard.index, shard.count], "rows": [shard.start, shard.stop]}


def get_or_extract_sharded(cache, backbone, dataset, keys: Dict[str, object], batch_size,
                           num_workers, progress, label,
                           on_bad_image: str = "skip") -> Dict[str, np.ndarray]:
    """``FeatureCache.get_or_extract`` under torchrun: every rank calls it alike."""
    # No lock is held across a collective: a rank holding the entry lock while another
    # waits for it at the barrier would deadlock. Only rank 0's join takes it.
    n = len(dataset)
    # rank 0 alone inspects the entries, so all ranks agree on the work (a damaged entry is
    # discarded by the join, under the entry lock)
    todo = distributed.broadcast_object(
        [v for v, k in keys.items() if cache.load(k, n) is None] if distributed.is_main()
        else None)
    if todo:
        shards = [Shard.of(n, batch_size, r, distributed.world_size())
                  for r in range(distributed.world_size())]
        cache.root.joinpath("features").mkdir(parents=True, exist_ok=True)
        extract_shard(cache, backbone, dataset, {v: keys[v] for v in todo},
                      shards[distributed.rank()], batch_size, num_workers, progress, label,
                      on_bad_image)
        distributed.barrier()
        problem = None
        if distributed.is_main():
            try:
                with cache.locked(keys.values()):
                    join_shards(cache, {v: keys[v] for v in todo}, n, shards)
            except UserError as exc:
                problem = str(exc)
        problem = distributed.broadcast_object(problem)  # also the barrier after the join
        if problem:
            raise UserError(problem)
    found = {v: cache.load(k, n) for v, k in keys.items()}
    if any(a is None for a in found.values()):
        raise UserError(f"rank {distributed.rank()} cannot read the feature cache entries "
                        f"rank 0 wrote in {cache.root}: {SHARED_DIR}")
    return found


def extract_shard(cache, backbone, dataset, keys: Dict[str, object], shard: Shard,
                  batch_size, num_workers, progress, label, on_bad_image: str = "skip") -> None:
    """Encode ``shard``'s rows of the views whose shard file is not already complete."""
    if shard.rows == 0:  # more ranks than batches
        return
    # this rank alone writes this shard file: it may discard a damaged one
    todo = {v: k for v, k in keys.items()
            if cache.load(k, shard.rows, shard, discard=True) is None}
    if todo:
        cache.extract(backbone, dataset, todo, batch_size, num_workers, progress,
                      f"{label} (shard {shard.index + 1} of {shard.count})", shard,
                      on_bad_image)


def join_shards(cache, keys: Dict[str, object], n: int, shards: List[Shard]) -> None:
    """Concatenate the finished shards of every entry into it, then remove them.

    Runs on rank 0 under the entry lock; an entry another process finished meanwhile
    is kept as it is.
    """
    missing = {v: k for v, k in keys.items() if cache.load(k, n, discard=True) is None}
    if missing:
        shards = [s for s in shards if s.rows]
        parts = {v: [_finished_shard(cache, k, s) for s in shards] for v, k in missing.items()}
        dim = next(iter(parts.values()))[0].shape[1]
        skipped = {}  # the views of a shard were encoded together: they skip alike
        for key in missing.values():
            for shard in shards:
                skipped.update(cache.skipped(key, shard))
        with cache.new_entries(missing, n, dim, skipped=skipped) as arrays:
            for view, array in arrays.items():
                for shard, part in zip(shards, parts[view]):
                    array[shard.start:shard.stop] = part
    for key in keys.values():
        remove_shards(cache, key)


def _finished_shard(cache, key, shard: Shard) -> np.ndarray:
    name = cache.data_path(key, shard).name
    if not cache.meta_path(key, shard).is_file():
        raise UserError(f"feature cache shard {name} is missing after every rank finished "
                        f"encoding: {SHARED_DIR}")
    part = cache.load(key, shard.rows, shard, discard=True)
    if part is None:
        raise UserError(f"feature cache shard {name} was damaged after it was written "
                        f"(it has been removed): run the same command again")
    return part


def remove_shards(cache, key) -> None:
    """Remove every shard file of ``key``: of any shard count, and orphaned temporaries."""
    for path in (cache.root / "features").glob(cache.stem(key) + ".shard*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
