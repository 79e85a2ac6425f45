"""CIFAR-10/100 loaders on small folders written here in CIFAR's own pickled format.

torchvision compares every file with the md5 of the official release; our files differ,
so the loading tests use ``check_md5=False`` (existence-only checks), and one test shows
that the default, checked path reports them as corrupted.
"""
import pickle

import numpy as np
import pytest

from clap4cl.errors import DataNotFoundError
from scenarios.datasets.cifar import CIFAR_TEMPLATES, load_cifar10, load_cifar100

CIFAR100_NAMES = [f"class_{i:02d}_name" for i in range(100)]


def _pixels(n, offset):
    """n images whose pixel values encode (image index, channel) for layout checks."""
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        for ch in range(3):
            data[i, ch] = (offset + 3 * i + ch) % 256
    data[:, 0, 0, 1] = 7  # one marked pixel: row 0, column 1 of the red channel
    return data.reshape(n, 3072)


def _dump(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def write_cifar10(root, per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{b}", {"data": _pixels(per_batch, 10 * b), "labels": labels,
                                           "batch_label": f"training batch {b} of 5"})
    _dump(folder / "test_batch", {"data": _pixels(n_test, 200), "labels": list(range(n_test))})
    _dump(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat",
                                                    "deer", "dog", "frog", "horse", "ship",
                                                    "truck"], "num_vis": 3072})
    return root


def write_cifar100(root, n_train=100, n_test=100):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _dump(folder / "train", {"data": _pixels(n_train, 0), "fine_labels":
                             [i % 100 for i in range(n_train)],
                             "coarse_labels": [0] * n_train})
    _dump(folder / "test", {"data": _pixels(n_test, 100), "fine_labels":
                            [(3 * i) % 100 for i in range(n_test)], "coarse_labels": [0] * n_test})
    _dump(folder / "meta", {"fine_label_names": CIFAR100_NAMES,
                            "coarse_label_names": ["all"]})
    return root


def test_cifar10_reads_cifar_format(tmp_path):
    splits = load_cifar10(write_cifar10(tmp_path), check_md5=False)
    assert (len(splits.train), len(splits.test)) == (20, 6)
    assert splits.class_names[:2] == ["airplane", "automobile"]
    assert splits.templates == CIFAR_TEMPLATES and len(CIFAR_TEMPLATES) == 18
    assert splits.templates[0] == "a photo of a {}."
    assert splits.templates[-1] == "a photo of the big {}."
    image, label = splits.train[0]
    assert image.mode == "RGB" and image.size == (32, 32)
    assert label == splits.train.targets[0] == 4  # batch 1, first image: (1 * 4 + 0) % 10
    pixels = np.asarray(image)
    assert pixels[0, 1, 0] == 7 and tuple(pixels[5, 5]) == (10, 11, 12)  # HWC, channel order kept
    assert splits.test.targets == list(range(6))


def test_cifar100_reads_fine_labels_and_cleans_names(tmp_path):
    splits = load_cifar100(write_cifar100(tmp_path), check_md5=False)
    assert (len(splits.train), len(splits.test)) == (100, 100)
    assert splits.class_names[3] == "class 03 name"
    assert splits.train.targets[:3] == [0, 1, 2]
    assert splits.name == "cifar100" and splits.fingerprint.startswith("cifar100-")


def test_fingerprint_follows_content(tmp_path):
    a = load_cifar10(write_cifar10(tmp_path / "a"), check_md5=False)
    b = load_cifar10(write_cifar10(tmp_path / "b"), check_md5=False)
    c = load_cifar10(write_cifar10(tmp_path / "c", per_batch=3), check_md5=False)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_md5_checked_path_reports_non_official_files(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(write_cifar10(tmp_path))
    message = str(info.value)
    assert "corrupted" in message and "check_md5" in message and "\n" not in message


@pytest.mark.parametrize("loader, folder", [(load_cifar10, "cifar-10-batches-py"),
                                            (load_cifar100, "cifar-100-python")])
def test_missing_data_says_how_to_get_it(tmp_path, loader, folder):
    with pytest.raises(DataNotFoundError) as info:
        loader(tmp_path / "nothing-here")
    message = str(info.value)
    assert folder in message and "download=true" in message and "\n" not in message


def test_empty_data_folder_is_missing_data(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataNotFoundError):
        load_cifar10(tmp_path, check_md5=False)


def test_class_without_test_images_is_a_user_error(tmp_path):
    import scenarios
    from clap4cl.errors import UserError

    root = write_cifar100(tmp_path, n_test=50)
    with pytest.raises(UserError, match="no test images"):
        scenarios.class_incremental("cifar100", n_experiences=10, root=root, check_md5=False)


def test_cifar100_benchmark_uses_the_reference_order(tmp_path):
    import scenarios

    bench = scenarios.class_incremental("cifar100", n_experiences=10, root=write_cifar100(tmp_path),
                                        check_md5=False)
    assert bench.class_order[:5] == [68, 56, 78, 8, 23]
    assert bench.class_names[0] == "class 68 name"
    assert len(bench.train_stream) == 10
    first = bench.train_stream[0].dataset
    assert sorted({int(y) for y in first.targets}) == list(range(10))


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def test_the_payload_runs_under_plain_pickle_so_the_refusal_test_can_fail(tmp_path):
    pickle.loads(pickle.dumps(_Payload(tmp_path / "marker")))
    assert (tmp_path / "marker").is_file()


@pytest.mark.parametrize("dataset, file_name", [
    ("cifar10", "data_batch_3"), ("cifar10", "batches.meta"), ("cifar100", "test"),
])
def test_a_planted_batch_file_is_refused_in_one_line_and_does_not_run(tmp_path, dataset, file_name):
    from clap4cl.errors import UserError

    marker = tmp_path / "marker"
    if dataset == "cifar10":
        root, folder, loader = write_cifar10(tmp_path / "data"), "cifar-10-batches-py", load_cifar10
    else:
        root, folder, loader = write_cifar100(tmp_path / "data"), "cifar-100-python", load_cifar100
    planted = root / folder / file_name
    _dump(planted, {"data": _Payload(marker), "labels": [0], "label_names": ["x"]})
    with pytest.raises(UserError) as caught:
        loader(root, check_md5=False)
    message = str(caught.value)
    assert "\n" not in message and str(planted) in message
    assert "is not a CIFAR batch file: it asks to load builtins.exec" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_of_every_pickle_protocol_read_the_same(tmp_path, protocol):
    from scenarios.datasets.cifar import load_cifar_batch

    entry = {"data": _pixels(3, 5), "labels": [1, 2, 3], "batch_label": "b"}
    with open(tmp_path / "batch", "wb") as fh:
        pickle.dump(entry, fh, protocol=protocol)
    loaded = load_cifar_batch(tmp_path / "batch")
    assert loaded["labels"] == [1, 2, 3] and loaded["batch_label"] == "b"
    assert loaded["data"].dtype == np.uint8 and np.array_equal(loaded["data"], entry["data"])


def test_torchvision_pickle_load_is_never_called(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    splits = load_cifar10(write_cifar10(tmp_path), check_md5=False)
    assert len(splits.train) == 20 and splits.class_names[0] == "airplane"
