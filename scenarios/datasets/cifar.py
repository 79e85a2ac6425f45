"""CIFAR-10 and CIFAR-100 through torchvision, in CIFAR's own "python version" format.

``root`` is the folder that holds ``cifar-10-batches-py`` (CIFAR-10) or
``cifar-100-python`` (CIFAR-100), as extracted from the official
``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``; by default
``$CLAP4CL_DATA`` or ``~/.cache/clap4cl/data``. ``download=True`` lets torchvision fetch
the archive there (needs internet).

torchvision verifies the official md5 of every file. ``check_md5=False`` accepts files
that differ from the official release (e.g. re-packed archives, or the small
CIFAR-format folders the tests write) and only checks that the files exist.

Either way the batch files are pickles, and a pickle can name any function to call. They
are read by :func:`load_cifar_batch`, whose unpickler reconstructs NumPy arrays and
nothing else (plus the lists, dicts, strings and numbers that pickles build without
naming anything): a file that asks for anything more is refused with a one-line error and
nothing in it runs.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset
from torchvision.datasets.utils import check_integrity

from clap4cl.errors import DataNotFoundError, UserError
from clap4cl.paths import default_data_dir

from scenarios.base import ArrayImageDataset, DatasetSplits, clean_class_name, make_fingerprint

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


def _numpy_array_constructors():
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    return {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy.core.numeric", "_frombuffer"): _frombuffer,
            ("numpy._core.numeric", "_frombuffer"): _frombuffer,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_bytes}


def _latin1_bytes(text, encoding="latin1"):
    """How Python 3 writes bytes in protocol-2 pickles: ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("unexpected _codecs.encode arguments")
    return text.encode("latin1")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, lists, dicts, tuples, strings, bytes and numbers only."""

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")   # the official files are Python 2 pickles
        self.path = path
        self.allowed = _numpy_array_constructors()

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise UserError(f"{str(self.path)!r} is not a CIFAR batch file: it asks to load "
                            f"{module}.{name}, which CIFAR files never contain; it was not loaded "
                            f"(use the files of the official archive)")
        return found


def load_cifar_batch(path) -> dict:
    """The dict of one CIFAR "python version" file, without running anything in it."""
    with open(path, "rb") as fh:
        entry = _ArraysOnlyUnpickler(fh, path).load()
    if not isinstance(entry, dict):
        raise pickle.UnpicklingError(f"{os.path.basename(path)} holds a {type(entry).__name__}, "
                                     f"not a dict")
    return entry


class _SafeBatchesMixin:
    """torchvision's CIFAR dataset with its files read by :func:`load_cifar_batch`
    instead of ``pickle.load`` (same arrays, targets and class names)."""

    def __init__(self, root, train: bool = True, download: bool = False) -> None:
        VisionDataset.__init__(self, root)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        data, targets = [], []
        for file_name, _ in (self.train_list if train else self.test_list):
            entry = load_cifar_batch(self._folder_file(file_name))
            data.append(entry["data"])
            targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC
        self.targets = targets
        self._load_meta()

    def _folder_file(self, name: str) -> str:
        return os.path.join(self.root, self.base_folder, name)

    def _meta_intact(self, path: str) -> bool:
        return check_integrity(path, self.meta["md5"])

    def _load_meta(self) -> None:
        path = self._folder_file(self.meta["filename"])
        if not self._meta_intact(path):
            raise RuntimeError(f"Dataset metadata file {path} not found or corrupted")
        self.classes = load_cifar_batch(path)[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _ExistenceCheckedMixin:
    """Replaces torchvision's md5 checks by "the file exists" (see ``check_md5``)."""

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(self._folder_file(name))
                   for name, _ in self.train_list + self.test_list)

    def _meta_intact(self, path: str) -> bool:
        return os.path.isfile(path)


class SafeCIFAR10(_SafeBatchesMixin, CIFAR10):
    """torchvision's CIFAR10 (md5-checked) read without arbitrary unpickling."""


class SafeCIFAR100(_SafeBatchesMixin, CIFAR100):
    """torchvision's CIFAR100 (md5-checked) read without arbitrary unpickling."""


class CIFAR10FilesOnly(_ExistenceCheckedMixin, SafeCIFAR10):
    """CIFAR10 without the md5 comparison."""


class CIFAR100FilesOnly(_ExistenceCheckedMixin, SafeCIFAR100):
    """CIFAR100 without the md5 comparison."""


def load_cifar10(root=None, *, download: bool = False, check_md5: bool = True) -> DatasetSplits:
    """CIFAR-10 (10 classes, 50 000 train / 10 000 test images of 32x32)."""
    return _load_cifar("cifar10", SafeCIFAR10, CIFAR10FilesOnly, root, download, check_md5)


def load_cifar100(root=None, *, download: bool = False, check_md5: bool = True) -> DatasetSplits:
    """CIFAR-100 (100 fine classes, 50 000 train / 10 000 test images of 32x32)."""
    return _load_cifar("cifar100", SafeCIFAR100, CIFAR100FilesOnly, root, download, check_md5)


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
    except UserError:
        raise
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
