"""Feature extraction sharded over torchrun ranks: same cache bytes as one process,
interrupted shards redone and finished ones kept, and the batch-aligned shard ranges.

The torchrun tests start real 2-rank gloo groups on CPU (``--standalone``). Every
process gets OMP_NUM_THREADS=1 (torchrun's own default for its workers): on this machine
the features are the same with 2 threads, but how a BLAS splits fp32 reductions over
threads is not what these tests are about (in-process references use 1 thread too).
"""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sharded_extract_helper as helper  # pytest puts tests/ on sys.path
from clap4cl.cli import main
from clap4cl.distributed import shard_range
from clap4cl.features import sharding
from clap4cl.features.cache import TRAIN_VIEWS, FeatureCache, Shard

HELPER = Path(helper.__file__)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "KILL_RANK1_AT"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args, env=None, cwd=None):
    """``torchrun --standalone --nproc_per_node=2 ARGS`` with this interpreter's torch."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True,
                          env=env or _env(), cwd=cwd, timeout=300)


@contextlib.contextmanager
def one_thread():
    """In-process work under the torch thread count the subprocesses get."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def files(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def reports(directory: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("rank*.json"))}


def test_torchrun_extract_writes_the_single_process_cache(tmp_path, monkeypatch):
    sharded, alone = tmp_path / "sharded", tmp_path / "alone"
    run = torchrun("-m", "clap4cl", "extract", "--set", f"cache.dir={sharded}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    monkeypatch.chdir(tmp_path)
    with one_thread():
        assert main(["extract", "--quiet", "--set", f"cache.dir={alone}"]) == 0

    got, want = files(sharded / "features"), files(alone / "features")
    assert sorted(got) == sorted(want)
    assert not [name for name in got if ".shard" in name or ".tmp" in name]
    assert sum(name.endswith(".npy") for name in got) == 3  # train original + flip, test
    for name in want:
        assert got[name] == want[name], name
    assert list((sharded / "text").glob("*.pt"))
    # rank 0 alone reports and shows progress (of its own shard)
    assert run.stdout.count("are cached in") == 1
    assert "(shard 1 of 2)" in run.stderr and "(shard 2 of 2)" not in run.stderr


def test_killed_shard_is_redone_and_the_finished_one_kept(tmp_path, tiny_backbone):
    cache_dir, report_dir = tmp_path / "cache", tmp_path / "reports"
    cache = FeatureCache(cache_dir)
    keys = [cache.key(tiny_backbone, helper.DATASET_ID, helper.SPLIT, v) for v in TRAIN_VIEWS]
    first, second = (Shard.of(helper.N_IMAGES, helper.BATCH_SIZE, r, 2) for r in (0, 1))
    kill_at = second.start + helper.BATCH_SIZE  # rank 1 dies in its second batch
    assert first.rows and kill_at < second.stop

    killed = torchrun(str(HELPER), str(cache_dir), str(report_dir),
                      env=_env(KILL_RANK1_AT=str(kill_at)))
    assert killed.returncode != 0
    assert not report_dir.exists()
    for key in keys:
        assert cache.load(key, first.rows, first) is not None  # valid record and checksum
        assert not cache.meta_path(key, second).exists()
        assert not cache.data_path(key, second).exists()
        assert not cache.data_path(key).exists() and not cache.meta_path(key).exists()
    # rank 1 had written its first batch into a temporary file when it was killed
    assert list((cache_dir / "features").glob("*.shard1of2.tmp*.npy"))

    rerun = torchrun(str(HELPER), str(cache_dir), str(report_dir))
    assert rerun.returncode == 0, rerun.stderr
    counts = {rank: r["encoded"] for rank, r in reports(report_dir).items()}
    assert counts == {"rank0": 0, "rank1": second.rows}

    alone_dir = tmp_path / "alone"
    with one_thread():
        alone = helper.extract(FeatureCache(alone_dir), tiny_backbone, helper.RandomImages())
    assert alone["encoded"] == helper.N_IMAGES
    got, want = files(cache_dir / "features"), files(alone_dir / "features")
    assert sorted(got) == sorted(want)  # no shard file or orphaned temporary left
    for name in want:
        assert got[name] == want[name], name
    # every rank got the finished features, equal to the single process's
    assert [r["features"] for r in reports(report_dir).values()] == [alone["features"]] * 2


def test_ranks_without_a_shared_cache_directory_fail_with_one_clear_error(tmp_path):
    run = torchrun(str(HELPER), str(tmp_path / "cache"), str(tmp_path / "reports"),
                   "--cache-per-rank")
    assert run.returncode != 0
    assert "is missing after every rank finished encoding: every rank must use the same " \
           "cache directory" in run.stderr
    assert not (tmp_path / "reports").exists()


def test_a_shard_recorded_for_other_rows_is_not_reused(tmp_path, tiny_backbone):
    """Same file name (shard 0 of 2) but another batch size: other rows, so it is redone."""
    data = helper.RandomImages()
    cache = FeatureCache(tmp_path)
    (tmp_path / "features").mkdir()
    keys = {"original": cache.key(tiny_backbone, "toy", "test", "original")}
    old, new = Shard.of(len(data), 8, 0, 2), Shard.of(len(data), 4, 0, 2)
    assert cache.data_path(keys["original"], old) == cache.data_path(keys["original"], new)
    assert old.rows != new.rows
    sharding.extract_shard(cache, tiny_backbone, data, keys, old, 8, 0, False, "toy")
    assert cache.extracted_images == old.rows

    with pytest.warns(RuntimeWarning, match="belongs to another key"):
        sharding.extract_shard(cache, tiny_backbone, data, keys, new, 4, 0, False, "toy")
    assert cache.extracted_images == old.rows + new.rows
    part = cache.load(keys["original"], new.rows, new)
    batches = [data.x[i:i + 4] for i in range(new.start, new.stop, 4)]
    expected = torch.cat([tiny_backbone.encode_images(b) for b in batches]).numpy().astype(np.float16)
    np.testing.assert_array_equal(np.asarray(part), expected)


@pytest.mark.parametrize("n_items, batch_size, n_shards, expected", [
    (10, 3, 2, [(0, 6), (6, 10)]),                   # batches [0,3) [3,6) | [6,9) [9,10)
    (10, 3, 3, [(0, 6), (6, 9), (9, 10)]),           # 4 batches: the first shard gets two
    (5, 4, 4, [(0, 4), (4, 5), (5, 5), (5, 5)]),     # more shards than batches: empty ones
    (8, 4, 1, [(0, 8)]),
    (0, 4, 2, [(0, 0), (0, 0)]),
])
def test_shard_range_by_hand(n_items, batch_size, n_shards, expected):
    assert [shard_range(n_items, batch_size, s, n_shards) for s in range(n_shards)] == expected


def test_shard_ranges_cover_everything_once_in_whole_batches():
    for n_items in range(0, 30):
        for batch_size in range(1, 8):
            n_batches = -(-n_items // batch_size)
            for n_shards in range(1, 6):
                ranges = [shard_range(n_items, batch_size, s, n_shards) for s in range(n_shards)]
                bounds = [b for r in ranges for b in r]
                assert bounds == sorted(bounds) and bounds[0] == 0 and bounds[-1] == n_items
                assert all(stop == start for (_, stop), (start, _) in zip(ranges, ranges[1:]))
                assert all(start % batch_size == 0 or start == n_items for start, _ in ranges)
                sizes = [-(-(stop - start) // batch_size) for start, stop in ranges]
                assert sum(sizes) == n_batches and max(sizes) - min(sizes) <= 1


def test_shard_range_outside_torchrun_is_everything_and_bad_shards_are_refused():
    assert shard_range(10, 3) == (0, 10)
    with pytest.raises(ValueError):
        shard_range(10, 3, 2, 2)
