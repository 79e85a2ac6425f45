"""Bundled digits, Fashion-MNIST idx files and the registry."""
import gzip

import numpy as np
import pytest

from clap4cl.errors import DataNotFoundError, UserError
from scenarios.datasets.digits import DIGIT_NAMES, load_digits
from scenarios.datasets.fashion_mnist import (DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_NAMES,
                                     load_fashion_mnist, read_idx)
from scenarios.registry import DATASETS, available_datasets, get_dataset_splits


def test_digits_split_is_stratified_and_deterministic():
    a, b = load_digits(), load_digits()
    assert (len(a.train), len(a.test)) == (1347, 450)
    assert a.train.targets == b.train.targets and a.fingerprint == b.fingerprint
    totals = np.bincount(a.train.targets) + np.bincount(a.test.targets)
    assert np.abs(np.bincount(a.test.targets) - 0.25 * totals).max() <= 1  # stratified
    assert a.class_names == DIGIT_NAMES and a.class_names[3] == "three"
    assert all("{}" in t for t in a.templates) and isinstance(a.templates, tuple)
    image, label = a.train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and 0 <= label <= 9
    assert a.train.images.max() == 255 and a.train.images.dtype == np.uint8
    assert load_digits(test_size=0.5).fingerprint != a.fingerprint


def test_with_transform_is_a_shallow_copy():
    splits = load_digits()
    shifted = splits.train.with_transform(lambda img: np.asarray(img).shape)
    assert shifted[0][0] == (8, 8, 3)
    assert splits.train.transform is None and shifted.images is splits.train.images
    both = splits.with_transforms(train=str, test=None)
    assert isinstance(both.train[0][0], str) and both.test.transform is None


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_gzipped_idx_files(tmp_path):
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.randint(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    splits = load_fashion_mnist(tmp_path)
    assert (len(splits.train), len(splits.test)) == (20, 10)
    assert splits.class_names == FASHION_MNIST_NAMES and splits.class_names[9] == "ankle boot"
    image, label = splits.test[3]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 3
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist() == list(range(10))


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    splits = load_fashion_mnist()
    assert (len(splits.train), len(splits.test)) == (60000, 10000)
    assert sorted(set(splits.test.targets)) == list(range(10))


def test_registry_lists_every_family():
    assert set(DATASETS) | {"synthetic", "two_modality"} == set(available_datasets())
    assert {"digits", "cifar10", "cifar100", "fashion_mnist", "image_folder", "imagenet_r",
            "imagenet100", "cub200", "synthetic", "two_modality"} == set(available_datasets())


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(UserError) as info:
        get_dataset_splits("cifar1000")
    message = str(info.value)
    assert "cifar1000" in message and "cifar100," in message and "digits" in message
    assert "\n" not in message


def test_names_accept_dashes_and_case():
    assert get_dataset_splits("Digits").name == "digits"


def test_unknown_loader_option_is_a_user_error():
    with pytest.raises(UserError, match="test_size"):
        get_dataset_splits("digits", test_fraction=0.3)


def test_download_is_refused_where_impossible(tmp_path):
    assert get_dataset_splits("digits", download=False).name == "digits"
    with pytest.raises(UserError, match="cannot be downloaded"):
        get_dataset_splits("image_folder", tmp_path, download=True)
