"""The on-disk fp16 feature cache: reuse, corruption recovery, keys, views, concurrency."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from clap4cl.encoders.backbones import load_clip
from clap4cl.features.cache import TRAIN_VIEWS, FeatureCache

N = 12


class TensorImages(Dataset):
    """Already preprocessed images: (tensor (3, 32, 32), label)."""

    def __init__(self, n=N, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g).tolist()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.fixture(scope="module")
def data():
    return TensorImages()


@pytest.fixture
def count_encodes(monkeypatch):
    """count_encodes(backbone) -> list receiving the batch size of every encode_images call."""

    def install(backbone):
        calls = []
        original = backbone.encode_images

        def encode_images(x):
            calls.append(len(x))
            return original(x)

        monkeypatch.setattr(backbone, "encode_images", encode_images)
        return calls

    return install


def extract(cache, backbone, data, views=("original",), dataset_id="toy", split="test"):
    return cache.get_or_extract(backbone, data, dataset_id=dataset_id, split=split,
                                views=views, progress=False)


def test_warm_cache_does_not_encode_and_returns_equal_memmaps(tiny_backbone, data, cache_root,
                                                              count_encodes):
    cache = FeatureCache(cache_root)
    first = extract(cache, tiny_backbone, data, views=TRAIN_VIEWS, split="train")
    assert cache.extracted_images == N
    assert set(first) == {"original", "flip"}
    for array in first.values():
        assert isinstance(array, np.memmap)
        assert array.shape == (N, 64) and array.dtype == np.float16
        assert not array.flags.writeable
    # the stored features are the encoder's output rounded to fp16
    expected = tiny_backbone.encode_images(data.x).numpy().astype(np.float16)
    np.testing.assert_array_equal(np.asarray(first["original"]), expected)

    calls = count_encodes(tiny_backbone)
    warm = FeatureCache(cache_root)
    second = extract(warm, tiny_backbone, data, views=TRAIN_VIEWS, split="train")
    assert calls == [] and warm.extracted_images == 0
    for view in TRAIN_VIEWS:
        assert isinstance(second[view], np.memmap)
        np.testing.assert_array_equal(np.asarray(second[view]), np.asarray(first[view]))
    # a subset of the views is served from the same files
    only_flip = extract(FeatureCache(cache_root), tiny_backbone, data, views=("flip",), split="train")
    assert calls == []
    np.testing.assert_array_equal(np.asarray(only_flip["flip"]), np.asarray(first["flip"]))


def test_only_missing_views_are_extracted(tiny_backbone, data, cache_root):
    cache = FeatureCache(cache_root)
    extract(cache, tiny_backbone, data, views=("original",), split="train")
    assert cache.extracted_images == N
    extract(cache, tiny_backbone, data, views=TRAIN_VIEWS, split="train")
    # one more pass over the images for the flip view only
    assert cache.extracted_images == 2 * N
    npys = sorted(p.name for p in (cache_root / "features").glob("*.npy"))
    assert len(npys) == 2 and npys[0].startswith("train-flip-") and npys[1].startswith("train-original-")


def test_flip_view_is_the_encoding_of_the_mirrored_tensor(tiny_backbone, data, cache_root):
    out = extract(FeatureCache(cache_root), tiny_backbone, data, views=TRAIN_VIEWS, split="train")
    mirrored = tiny_backbone.encode_images(torch.flip(data.x, dims=[-1])).numpy().astype(np.float16)
    np.testing.assert_array_equal(np.asarray(out["flip"]), mirrored)
    assert np.abs(np.asarray(out["flip"], np.float32) - np.asarray(out["original"], np.float32)).max() > 1e-2


def _data_file(cache_root, view="original"):
    (path,) = (cache_root / "features").glob(f"*-{view}-*.npy")
    return path


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "no_record", "record_of_other_shape"])
def test_damaged_entries_are_detected_and_rebuilt(damage, tiny_backbone, data, cache_root,
                                                  count_encodes):
    reference = np.array(extract(FeatureCache(cache_root), tiny_backbone, data)["original"])
    path = _data_file(cache_root)
    meta = path.with_suffix(".json")
    assert meta.is_file()
    if damage == "flip_bytes":
        raw = bytearray(path.read_bytes())
        middle = len(raw) - reference.nbytes // 2  # inside the data, after the header
        raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size - 100)
    elif damage == "no_record":  # killed between the data rename and the record write
        meta.unlink()
    else:
        record = json.loads(meta.read_text())
        record["shape"] = [N + 1, 64]
        meta.write_text(json.dumps(record))
    calls = count_encodes(tiny_backbone)
    cache = FeatureCache(cache_root)
    with pytest.warns(RuntimeWarning, match="invalid because"):
        rebuilt = extract(cache, tiny_backbone, data)["original"]
    assert cache.extracted_images == N and sum(calls) == N
    np.testing.assert_array_equal(np.asarray(rebuilt), reference)
    # the rebuilt entry is valid again: no warning, no encoding
    calls.clear()
    again = extract(FeatureCache(cache_root), tiny_backbone, data)["original"]
    assert calls == []
    np.testing.assert_array_equal(np.asarray(again), reference)


def test_dataset_of_another_size_is_not_served_a_stale_entry(tiny_backbone, data, cache_root):
    extract(FeatureCache(cache_root), tiny_backbone, data)
    smaller = TensorImages(n=N - 2)
    cache = FeatureCache(cache_root)
    with pytest.warns(RuntimeWarning, match="rows but the dataset has"):
        out = extract(cache, tiny_backbone, smaller)["original"]
    assert out.shape == (N - 2, 64) and cache.extracted_images == N - 2


def test_entries_are_keyed_by_backbone(tiny_backbone, data, cache_root, count_encodes):
    cache = FeatureCache(cache_root)
    first = extract(cache, tiny_backbone, data)["original"]
    other = load_clip("tiny-vit", seed=1)
    calls = count_encodes(other)
    second = extract(cache, other, data)["original"]
    assert sum(calls) == N and cache.extracted_images == 2 * N
    assert len(list((cache_root / "features").glob("*.npy"))) == 2
    expected = other.encode_images(data.x).numpy().astype(np.float16)
    np.testing.assert_array_equal(np.asarray(second), expected)
    assert np.abs(np.asarray(first, np.float32) - np.asarray(second, np.float32)).max() > 1e-2
    rn = load_clip("tiny-rn")
    assert FeatureCache.key(rn, "toy", "test", "original") != \
        FeatureCache.key(tiny_backbone, "toy", "test", "original")


def test_keys_differ_by_dataset_split_view_and_precision(tiny_backbone, cache_root):
    cache = FeatureCache(cache_root)
    base = cache.key(tiny_backbone, "toy", "test", "original")
    variants = [cache.key(tiny_backbone, "toy2", "test", "original"),
                cache.key(tiny_backbone, "toy", "train", "original"),
                cache.key(tiny_backbone, "toy", "test", "flip"),
                cache.key(load_clip("tiny-vit", precision="fp16"), "toy", "test", "original")]
    paths = {cache.data_path(k) for k in [base] + variants}
    assert len(paths) == 5
    assert len({k.digest() for k in [base] + variants}) == 5
    assert cache.data_path(base) == cache.data_path(cache.key(tiny_backbone, "toy", "test", "original"))


def test_other_dataset_id_is_extracted_separately(tiny_backbone, data, cache_root):
    cache = FeatureCache(cache_root)
    extract(cache, tiny_backbone, data, dataset_id="a")
    extract(cache, tiny_backbone, data, dataset_id="b")
    extract(cache, tiny_backbone, data, dataset_id="a", split="train")
    assert cache.extracted_images == 3 * N
    assert len(list((cache_root / "features").glob("*.npy"))) == 3


WORKER = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import numpy as np, torch
    from torch.utils.data import TensorDataset
    from clap4cl.encoders.backbones import load_clip
    from clap4cl.features.cache import FeatureCache
    root, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=g), torch.zeros(24, dtype=torch.long))
    backbone = load_clip("tiny-vit")
    # start together: each announces itself and waits for the other
    open(os.path.join(root, me), "w").close()
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(root, other)) and time.time() < deadline:
        time.sleep(0.01)
    cache = FeatureCache(os.path.join(root, "cache"))
    out = cache.get_or_extract(backbone, data, dataset_id="toy", split="train",
                               views=("original", "flip"), batch_size=4, progress=False)
    print(json.dumps({"extracted": cache.extracted_images,
                      "sha": {v: hashlib.sha256(np.asarray(a).tobytes()).hexdigest()
                              for v, a in sorted(out.items())}}))
""")


def test_two_processes_extracting_the_same_entry(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), me, other],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for me, other in (("a", "b"), ("b", "a"))]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    # exactly one process encoded the images, the other reused its entry
    assert sorted(r["extracted"] for r in results) == [0, 24]
    assert results[0]["sha"] == results[1]["sha"]
    features = tmp_path / "cache" / "features"
    names = sorted(p.name for p in features.iterdir())
    assert len([n for n in names if n.endswith(".npy")]) == 2
    assert len([n for n in names if n.endswith(".json")]) == 2
    assert not [n for n in names if ".tmp" in n]
    # and the entry is valid for a third reader
    cache = FeatureCache(tmp_path / "cache")
    for view in TRAIN_VIEWS:
        key = cache.key(load_clip("tiny-vit"), "toy", "train", view)
        assert cache.load(key, 24) is not None


def test_reader_in_the_commit_gap_keeps_the_writers_entry(tiny_backbone, data, cache_root,
                                                          monkeypatch):
    """A reader that starts after the writer renamed the data into place but before the
    record is written must not delete the data: it waits for the lock and reuses the entry."""
    import threading
    import time

    from clap4cl.features import cache as cache_module

    writer, reader = FeatureCache(cache_root), FeatureCache(cache_root)
    results, real_replace = {}, os.replace

    def read():
        results["reader"] = extract(reader, tiny_backbone, data)

    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".npy") and "thread" not in results:
            results["gap_load"] = reader.load(writer.key(tiny_backbone, "toy", "test", "original"), N)
            results["thread"] = threading.Thread(target=read)
            results["thread"].start()
            time.sleep(0.5)  # the reader runs its unlocked check, then waits for the lock
            results["data_after_gap"] = os.path.exists(dst)

    monkeypatch.setattr(cache_module.os, "replace", replace)
    written = extract(writer, tiny_backbone, data)
    results["thread"].join(60)
    assert results["gap_load"] is None          # incomplete to the reader ...
    assert results["data_after_gap"]            # ... but not deleted by it
    assert reader.extracted_images == 0         # the reader reused the committed entry
    np.testing.assert_array_equal(results["reader"]["original"], written["original"])
    key = writer.key(tiny_backbone, "toy", "test", "original")
    assert FeatureCache(cache_root).load(key, N) is not None


def test_unlocked_reader_never_deletes_an_invalid_entry(tiny_backbone, data, cache_root):
    cache = FeatureCache(cache_root)
    extract(cache, tiny_backbone, data)
    key = cache.key(tiny_backbone, "toy", "test", "original")
    cache.meta_path(key).unlink()
    assert cache.load(key, N) is None and cache.data_path(key).exists()
    with pytest.warns(RuntimeWarning, match="no completion record"):
        assert cache.load(key, N, discard=True) is None
    assert not cache.data_path(key).exists()


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_killed_writers_are_removed_on_the_next_extraction(
        tiny_backbone, data, cache_root):
    from clap4cl.features import cache as cache_module

    cache = FeatureCache(cache_root)
    key = cache.key(tiny_backbone, "toy", "test", "original")
    other = cache.key(tiny_backbone, "other", "train", "flip")
    features = cache_root / "features"
    features.mkdir()
    dead, alive = dead_pid(), os.getpid()
    old = 2 * cache_module.ORPHAN_AGE
    stale = {  # name -> (content, seconds ago); all should go
        cache.data_path(key).with_suffix(f".tmp{alive}.npy").name: 0,   # this entry: any pid
        cache.meta_path(key).with_suffix(f".tmp{dead}").name: 0,
        cache.data_path(other).with_suffix(f".tmp{dead}.npy").name: old,  # dead and old
    }
    kept = {
        cache.data_path(other).with_suffix(f".tmp{alive}.npy").name: old,  # its writer lives
        cache.data_path(other).with_suffix(f".tmp{dead}.npy").name.replace(
            f".tmp{dead}", f".tmp{dead + 1000000}"): 0,                     # recent: maybe remote
        cache.data_path(key).name.replace(".npy", ".shard0of2.tmp1.npy"): 0,  # a rank's shard
    }
    now = time_now()
    for name, age in {**stale, **kept}.items():
        (features / name).write_bytes(b"\0" * 4096)
        os.utime(features / name, (now - age, now - age))
    extract(cache, tiny_backbone, data)
    names = {p.name for p in features.iterdir()}
    assert not names & set(stale)
    assert set(kept) <= names
    assert cache.load(key, N) is not None


def time_now():
    import time

    return time.time()


def _reference_features(backbone, dataset, views, batch_size):
    """The features a plain loop gives: the full per-image transform, batches of
    ``batch_size``, each view encoded on its own, fp16."""
    out = {v: [] for v in views}
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size,
                                                                      len(dataset)))])
        for view in views:
            batch = torch.flip(images, dims=[-1]) if view == "flip" else images
            out[view].append(backbone.encode_images(batch).numpy().astype(np.float16))
    return {v: np.concatenate(parts) for v, parts in out.items()}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batched_preprocessing_gives_the_per_image_pipelines_features(
        tiny_backbone, cache_root, num_workers, count_encodes):
    from scenarios.base import ArrayImageDataset

    rng = np.random.default_rng(3)
    # RGB images of a shape that needs resizing and cropping, grayscale ones, and a
    # batch size that leaves a short last batch
    datasets = {"rgb": ArrayImageDataset(rng.integers(0, 256, (23, 30, 41, 3), dtype=np.uint8),
                                         [0] * 23),
                "gray": ArrayImageDataset(rng.integers(0, 256, (9, 28, 28), dtype=np.uint8),
                                          [1] * 9)}
    cache = FeatureCache(cache_root)
    for name, images in datasets.items():
        dataset = images.with_transform(tiny_backbone.preprocess_test)
        expected = _reference_features(tiny_backbone, dataset, TRAIN_VIEWS, batch_size=8)
        calls = count_encodes(tiny_backbone)
        found = cache.get_or_extract(tiny_backbone, dataset, dataset_id=name, split="train",
                                     views=TRAIN_VIEWS, batch_size=8, num_workers=num_workers,
                                     progress=False)
        assert calls == [8, 8] * (len(dataset) // 8) + [len(dataset) % 8] * 2
        for view in TRAIN_VIEWS:
            assert found[view].dtype == np.float16
            np.testing.assert_array_equal(np.asarray(found[view]), expected[view])


def test_a_transform_without_the_tensor_steps_is_applied_per_image(tiny_backbone, cache_root):
    from scenarios.base import ArrayImageDataset
    from torchvision import transforms as T

    rng = np.random.default_rng(4)
    images = ArrayImageDataset(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), [0] * 10)
    # ends in Normalize but not after a ToTensor: nothing may be split off
    transform = T.Compose([T.PILToTensor(), T.ConvertImageDtype(torch.float32),
                           T.Normalize((0.5,) * 3, (0.25,) * 3)])
    dataset = images.with_transform(transform)
    expected = _reference_features(tiny_backbone, dataset, ("original",), batch_size=4)
    found = FeatureCache(cache_root).get_or_extract(tiny_backbone, dataset, dataset_id="pil",
                                                    split="test", batch_size=4, progress=False)
    np.testing.assert_array_equal(np.asarray(found["original"]), expected["original"])
