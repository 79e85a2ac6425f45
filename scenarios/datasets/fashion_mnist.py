"""Fashion-MNIST: 70 000 grayscale 28x28 clothing images in 10 named classes.

Reads the four idx files (gzipped or not) of the official release:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, either directly under ``root`` or in torchvision's layout
``root/FashionMNIST/raw/``. Without a root it uses the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) when installed, else
``$CLAP4CL_DATA`` / ``~/.cache/clap4cl/data``, where ``download=True`` lets torchvision
fetch the files (needs internet). The official train/test split is kept.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np

from clap4cl.errors import DataNotFoundError
from clap4cl.paths import default_data_dir

from scenarios.base import ArrayImageDataset, DatasetSplits, make_fingerprint

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_NAMES = ["t-shirt or top", "trouser", "pullover", "dress", "coat", "sandal",
                       "shirt", "sneaker", "bag", "ankle boot"]

FASHION_MNIST_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a {}, a type of clothing.",
    "a grayscale product photo of a {}.",
)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path) -> np.ndarray:
    """An unsigned-byte idx file (optionally gzipped) as a uint8 array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if values.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {values.size} values, its header says {dims}")
    return values.reshape(dims)


def load_fashion_mnist(root=None, *, download: bool = False) -> DatasetSplits:
    """Fashion-MNIST's official split (60 000 train / 10 000 test)."""
    root = _resolve_root(root)
    if download:
        _download(root)
    files = {key: _find_idx(root, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, v in files.items() if v is None]
    if missing:
        raise DataNotFoundError(
            f"fashion_mnist not found in {str(root)!r} (missing {', '.join(missing)}): run "
            f"'apt-get install dataset-fashion-mnist' (files go to {DEBIAN_FASHION_MNIST_DIR}), "
            f"or set dataset.root to a folder with the idx files, or pass dataset.download=true")
    try:
        arrays = {key: read_idx(path) for key, path in files.items()}
    except (OSError, ValueError, EOFError) as exc:
        raise DataNotFoundError(f"fashion_mnist files in {str(root)!r} are corrupted ({exc}): "
                                f"reinstall dataset-fashion-mnist or re-download them") from None
    train = ArrayImageDataset(arrays["train_images"], arrays["train_labels"].tolist())
    test = ArrayImageDataset(arrays["test_images"], arrays["test_labels"].tolist())
    fingerprint = make_fingerprint("fashion_mnist", train.content_digest(), test.content_digest())
    return DatasetSplits("fashion_mnist", train, test, list(FASHION_MNIST_NAMES),
                         FASHION_MNIST_TEMPLATES, fingerprint)


def _resolve_root(root) -> Path:
    if root:
        return Path(root).expanduser()
    if DEBIAN_FASHION_MNIST_DIR.is_dir():
        return DEBIAN_FASHION_MNIST_DIR
    return default_data_dir()


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _download(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataNotFoundError(
            f"downloading fashion_mnist into {str(root)!r} failed ({type(exc).__name__}): "
            f"without internet, run 'apt-get install dataset-fashion-mnist' and use "
            f"download=false") from None
