"""Image files that cannot be decoded: skipped with their label (or one error), consistently
between the views, the splits and the feature cache; the fingerprint sees modification times."""
import io
import os
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import scenarios
from clap4cl.errors import BadImageError, UserError
from clap4cl.features.cache import FeatureCache
from scenarios.datasets.folders import load_image_folder
from scenarios.features import BadImageWarning, feature_dataset_id


def write_image(path, seed, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (12, 10, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def jpeg_bytes(seed):
    buffer = io.BytesIO()
    pixels = np.random.RandomState(seed).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png():
    """A 60 byte PNG header claiming 20000 x 10000 pixels (200 MP), over Pillow's limit."""
    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


def bit_flipped_jpeg(seed):
    data = bytearray(jpeg_bytes(seed))
    for i in range(200, 210):
        data[i] ^= 0xFF
    return bytes(data)


# file -> (bytes, reason text), written into the class folders next to good images
BAD_FILES = {
    "train/a/empty.png": (b"", "empty"),
    "train/a/notes.jpg": (b"just some text\n", "not an image"),
    "train/b/bomb.png": (bomb_png(), "MAX_IMAGE_PIXELS"),
    "train/b/flipped.jpg": (bit_flipped_jpeg(3), "corrupt"),
    "test/a/truncated.jpg": (jpeg_bytes(4)[:300], "truncated"),
}


def good_tree(root):
    for split, per_class in (("train", 3), ("test", 2)):
        for c, name in enumerate("ab"):
            for i in range(per_class):
                write_image(root / split / name / f"img_{i}.png", 100 * c + 10 * i + len(split))
    return root


def bad_tree(root):
    good_tree(root)
    for rel, (data, _) in BAD_FILES.items():
        (root / rel).write_bytes(data)
    return root


def stream(root, backbone, cache, **kwargs):
    return scenarios.class_incremental("image_folder", root=root, n_experiences=1,
                                       level="features", backbone=backbone, cache=cache,
                                       progress=False, **kwargs)


def raw_splits(root, backbone, cache, **kwargs):
    from scenarios.features import to_feature_splits

    return to_feature_splits(load_image_folder(root), backbone, cache, progress=False, **kwargs)


def test_bad_images_are_skipped_with_their_labels_and_one_warning_each(tmp_path, tiny_backbone):
    root = bad_tree(tmp_path / "bad")
    cache = FeatureCache(tmp_path / "cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test = raw_splits(root, tiny_backbone, cache)
    messages = [str(w.message) for w in caught if issubclass(w.category, BadImageWarning)]
    assert len(messages) == len(BAD_FILES)
    for rel, (_, reason) in BAD_FILES.items():
        (line,) = [m for m in messages if str(root / rel) in m]
        assert reason in line and "\n" not in line
    assert set(train.skipped) | set(test.skipped) == {str(root / rel) for rel in BAD_FILES}
    # the same rows, labels and features as the folder without the bad files
    clean_train, clean_test = raw_splits(good_tree(tmp_path / "clean"), tiny_backbone,
                                         FeatureCache(tmp_path / "cache2"))
    assert train.targets == clean_train.targets == [0, 0, 0, 1, 1, 1]
    assert test.targets == clean_test.targets == [0, 0, 1, 1]
    for got, want in zip(train.views + test.views, clean_train.views + clean_test.views):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   atol=2e-3)
    # warm cache: nothing encoded, the same rows dropped, the warnings repeated
    warm_cache = FeatureCache(tmp_path / "cache")
    with pytest.warns(BadImageWarning) as again:
        warm_train, warm_test = raw_splits(root, tiny_backbone, warm_cache)
    assert warm_cache.extracted_images == 0 and len(again) == len(BAD_FILES)
    assert warm_train.targets == train.targets and warm_test.targets == test.targets
    np.testing.assert_array_equal(warm_train.views[1], train.views[1])


def test_benchmark_counts_skipped_images_and_fingerprint_reflects_them(tmp_path, tiny_backbone):
    root = bad_tree(tmp_path / "bad")
    with pytest.warns(BadImageWarning):
        bench = stream(root, tiny_backbone, FeatureCache(tmp_path / "cache"))
    assert len(bench.info.skipped_images) == len(BAD_FILES)
    assert len(bench.train_stream[0].dataset) == 6 and len(bench.test_stream[0].dataset) == 4
    splits = load_image_folder(root)
    assert bench.info.fingerprint != splits.fingerprint
    clean = stream(good_tree(tmp_path / "clean"), tiny_backbone, FeatureCache(tmp_path / "c2"))
    assert clean.info.skipped_images == () and clean.info.fingerprint == load_image_folder(
        tmp_path / "clean").fingerprint


@pytest.mark.parametrize("warm", [False, True])
def test_on_bad_image_error_names_the_file(tmp_path, tiny_backbone, warm):
    root = good_tree(tmp_path / "data")
    (root / "test/b/zero.png").write_bytes(b"")
    cache = FeatureCache(tmp_path / "cache")
    if warm:
        with pytest.warns(BadImageWarning):
            raw_splits(root, tiny_backbone, cache)
    with pytest.raises(BadImageError) as error:
        raw_splits(root, tiny_backbone, FeatureCache(tmp_path / "cache"), on_bad_image="error")
    message = str(error.value)
    assert str(root / "test/b/zero.png") in message and "empty" in message and "\n" not in message
    assert isinstance(error.value, UserError)
    if not warm:  # nothing half-written stays behind
        assert not [p for p in (tmp_path / "cache" / "features").iterdir()
                    if ".tmp" in p.name or p.suffix == ".npy" and "test" in p.name]


def test_a_class_without_decodable_images_is_an_error(tmp_path, tiny_backbone):
    root = good_tree(tmp_path / "data")
    for path in (root / "test" / "b").iterdir():
        path.write_bytes(b"broken")
    with pytest.warns(BadImageWarning), pytest.raises(UserError, match="no test images"):
        stream(root, tiny_backbone, FeatureCache(tmp_path / "cache"))


def test_raising_the_pixel_limit_changes_the_cache_key(tmp_path, monkeypatch):
    splits = load_image_folder(good_tree(tmp_path / "data"))
    before = feature_dataset_id(splits)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10 ** 9)
    assert feature_dataset_id(splits) != before


def test_bomb_reason_says_how_to_raise_the_limit(tmp_path):
    path = tmp_path / "data" / "a" / "bomb.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(bomb_png())
    write_image(tmp_path / "data" / "a" / "ok.png", 0)
    dataset = scenarios.FileImageDataset([path], [0])
    assert Image.MAX_IMAGE_PIXELS is not None
    with pytest.raises(BadImageError, match=r"PIL\.Image\.MAX_IMAGE_PIXELS"):
        dataset[0]


def test_non_utf8_classnames_file_is_one_line_error(tmp_path):
    root = good_tree(tmp_path / "data")
    (root / "classnames.txt").write_bytes("a caf\xe9\nb th\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="classnames.txt is not UTF-8") as error:
        load_image_folder(root)
    assert "\n" not in str(error.value)
    (root / "classnames.txt").write_bytes("a café\nb thé\n".encode("utf-8-sig"))
    assert load_image_folder(root).class_names == ["café", "thé"]


# ---- stale features: the fingerprint follows the files ---------------------------------------
def replace_same_size(path, seed):
    """Write another image of exactly ``path``'s size into it (an uncompressed BMP)."""
    size = os.path.getsize(path)
    write_image(path.with_suffix(".new.bmp"), seed, "BMP")
    os.replace(path.with_suffix(".new.bmp"), path)
    assert os.path.getsize(path) == size


def test_replacing_an_image_by_one_of_the_same_size_reextracts(tmp_path, tiny_backbone):
    root = tmp_path / "data"
    for split, n in (("train", 2), ("test", 1)):
        for c in "ab":
            for i in range(n):
                write_image(root / split / c / f"img_{i}.bmp", ord(c) * 10 + i, "BMP")
    cache = FeatureCache(tmp_path / "cache")
    first, _ = raw_splits(root, tiny_backbone, cache)
    target = root / "train" / "a" / "img_0.bmp"
    stat = os.stat(target)
    replace_same_size(target, 999)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again, _ = raw_splits(root, tiny_backbone, cache)
    assert cache.extracted_images > len(first)  # the changed folder was encoded again
    assert not np.array_equal(np.asarray(again.views[0][0]), np.asarray(first.views[0][0]))
    np.testing.assert_array_equal(again.views[0][1:], first.views[0][1:])


def test_verify_content_sees_a_change_that_keeps_size_and_mtime(tmp_path, tiny_backbone):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for c in "ab":
            write_image(root / split / c / "img.bmp", ord(c) + len(split), "BMP")
    cache = FeatureCache(tmp_path / "cache")
    first, _ = raw_splits(root, tiny_backbone, cache)
    raw_splits(root, tiny_backbone, cache, verify="content")
    target = root / "train" / "b" / "img.bmp"
    stat = os.stat(target)
    replace_same_size(target, 7)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    stale, _ = raw_splits(root, tiny_backbone, FeatureCache(tmp_path / "cache"))
    np.testing.assert_array_equal(stale.views[0], first.views[0])  # mtime cannot tell
    checked, _ = raw_splits(root, tiny_backbone, FeatureCache(tmp_path / "cache"), verify="content")
    assert not np.array_equal(np.asarray(checked.views[0][1]), np.asarray(first.views[0][1]))
    np.testing.assert_array_equal(checked.views[0][0], first.views[0][0])


def test_moving_a_folder_with_its_times_keeps_the_fingerprint(tmp_path):
    root = good_tree(tmp_path / "data")
    before = load_image_folder(root).fingerprint
    shutil.copytree(root, tmp_path / "moved")  # copy2: times kept
    assert load_image_folder(tmp_path / "moved").fingerprint == before


def test_worker_processes_skip_the_same_images(tmp_path, tiny_backbone):
    from scenarios.features import to_feature_splits

    root = bad_tree(tmp_path / "bad")
    with pytest.warns(BadImageWarning):
        single, _ = raw_splits(root, tiny_backbone, FeatureCache(tmp_path / "c1"))
    with pytest.warns(BadImageWarning):
        workers, _ = to_feature_splits(load_image_folder(root), tiny_backbone,
                                       FeatureCache(tmp_path / "c2"), progress=False,
                                       num_workers=2, batch_size=2)
    assert workers.skipped == single.skipped and workers.targets == single.targets
    np.testing.assert_allclose(np.asarray(workers.views[0], np.float32),
                               np.asarray(single.views[0], np.float32), atol=2e-3)
