"""CIFAR-10 and CIFAR-100 through torchvision, in CIFAR's own "python version" format.

``root`` is the folder that holds ``cifar-10-batches-py`` (CIFAR-10) or
``cifar-100-python`` (CIFAR-100), as extracted from the official
``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``; by default
``$CLAP4CL_DATA`` or ``~/.cache/clap4cl/data``. ``download=True`` lets torchvision fetch
the archive there (needs internet).

torchvision verifies the official md5 of every file. ``check_md5=False`` accepts files
that differ from the official release (e.g. re-packed archives, or the small
CIFAR-format folders the tests write) and only checks that the files exist.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

from torchvision.datasets import CIFAR10, CIFAR100

from clap4cl.errors import DataNotFoundError

from scenarios.base import (ArrayImageDataset, DatasetSplits, clean_class_name, default_data_dir,
                   make_fingerprint)

# The 18 CIFAR prompt templates of CLIP (and of the CLAP4CLIP reference), in a fixed order.
CIFAR_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)


class _ExistenceCheckedMixin:
    """Replaces torchvision's md5 checks by "the file exists" (see ``check_md5``)."""

    def _folder_file(self, name: str) -> str:
        return os.path.join(self.root, self.base_folder, name)

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(self._folder_file(name))
                   for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = self._folder_file(self.meta["filename"])
        if not os.path.isfile(path):
            raise RuntimeError(f"Dataset metadata file {path} not found")
        with open(path, "rb") as fh:
            self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR10FilesOnly(_ExistenceCheckedMixin, CIFAR10):
    """torchvision's CIFAR10 without the md5 comparison."""


class CIFAR100FilesOnly(_ExistenceCheckedMixin, CIFAR100):
    """torchvision's CIFAR100 without the md5 comparison."""


def load_cifar10(root=None, *, download: bool = False, check_md5: bool = True) -> DatasetSplits:
    """CIFAR-10 (10 classes, 50 000 train / 10 000 test images of 32x32)."""
    return _load_cifar("cifar10", CIFAR10, CIFAR10FilesOnly, root, download, check_md5)


def load_cifar100(root=None, *, download: bool = False, check_md5: bool = True) -> DatasetSplits:
    """CIFAR-100 (100 fine classes, 50 000 train / 10 000 test images of 32x32)."""
    return _load_cifar("cifar100", CIFAR100, CIFAR100FilesOnly, root, download, check_md5)


def _load_cifar(name, official_class, files_only_class, root, download, check_md5) -> DatasetSplits:
    root = Path(root).expanduser() if root else default_data_dir()
    if download:
        _download(name, official_class, root)
    folder = root / official_class.base_folder
    if not folder.is_dir() or not any(folder.iterdir()):
        raise DataNotFoundError(
            f"{name} not found: expected folder {str(folder)!r} (the extracted "
            f"{official_class.filename}); pass dataset.download=true (Python: download=True) on "
            f"a machine with internet, or extract the archive under {str(root)!r}")
    dataset_class = official_class if check_md5 else files_only_class
    try:
        train = dataset_class(str(root), train=True)
        test = dataset_class(str(root), train=False)
    except (RuntimeError, OSError, KeyError, pickle.UnpicklingError, EOFError) as exc:
        hint = ("re-download it with dataset.download=true, or pass check_md5=false to accept "
                "files that differ from the official release") if check_md5 else \
            "re-extract the official archive or re-download it with dataset.download=true"
        raise DataNotFoundError(f"{name} files in {str(folder)!r} are incomplete or corrupted "
                                f"({type(exc).__name__}: {_first_line(exc)}): {hint}") from None
    return _splits_from_torchvision(name, train, test)


def _download(name, official_class, root: Path) -> None:
    try:
        official_class(str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataNotFoundError(
            f"downloading {name} into {str(root)!r} failed ({type(exc).__name__}: "
            f"{_first_line(exc)}): without internet, extract {official_class.filename} there "
            f"and use download=false") from None


def _splits_from_torchvision(name, train, test) -> DatasetSplits:
    train_set = ArrayImageDataset(train.data, train.targets)
    test_set = ArrayImageDataset(test.data, test.targets)
    class_names = [clean_class_name(c) for c in train.classes]
    fingerprint = make_fingerprint(name, train_set.content_digest(), test_set.content_digest())
    return DatasetSplits(name, train_set, test_set, class_names, CIFAR_TEMPLATES, fingerprint)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
