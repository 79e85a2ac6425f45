"""What every image dataset family returns: a train split, a test split, class names and prompts.

Items of the image datasets are ``(image, original label)``; images are RGB PIL images
unless a transform (PIL -> tensor, e.g. a CLIP preprocessing) has been set with
:meth:`ImageDataset.with_transform`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from clap4cl.errors import BadImageError, DataNotFoundError


@dataclass
class DatasetSplits:
    """A dataset family's train and test splits with what CLIP needs to name the classes.

    Attributes:
        name: registry name, e.g. ``"cifar100"``.
        train, test: :class:`ImageDataset` s whose items are ``(image, original label)``
            and whose ``.targets`` is a list of ints.
        class_names: class names indexed by ORIGINAL label (underscores -> spaces).
        templates: prompt templates, format strings with one ``{}``, in a fixed order.
        fingerprint: identifies the data content (family, split rule, items); the
            feature cache keys on it.
    """

    name: str
    train: "ImageDataset"
    test: "ImageDataset"
    class_names: List[str]
    templates: Tuple[str, ...]
    fingerprint: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def with_transforms(self, train: Optional[Callable] = None,
                        test: Optional[Callable] = None) -> "DatasetSplits":
        """A copy whose train / test datasets apply the given transforms (None keeps PIL)."""
        return replace(self, train=self.train.with_transform(train),
                       test=self.test.with_transform(test))


class ImageDataset(Dataset):
    """Base of the image datasets: ``(image, original label)`` items and ``.targets``.

    Subclasses implement :meth:`load_image` (returning a PIL image); this class converts
    it to RGB and applies ``transform`` when one is set.
    """

    def __init__(self, targets: Sequence[int], transform: Optional[Callable] = None):
        self.targets: List[int] = [int(t) for t in targets]
        self.transform = transform

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def with_transform(self, transform: Optional[Callable]) -> "ImageDataset":
        """A shallow copy (sharing the image data) that applies ``transform`` to each image."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone


class ArrayImageDataset(ImageDataset):
    """Images held in memory as a uint8 array: (N, H, W) grayscale or (N, H, W, 3) RGB."""

    def __init__(self, images: np.ndarray, targets: Sequence[int],
                 transform: Optional[Callable] = None):
        super().__init__(targets, transform)
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N,H,W) or (N,H,W,3), got "
                             f"{images.dtype} {images.shape}")
        if len(images) != len(self.targets):
            raise ValueError(f"{len(images)} images for {len(self.targets)} targets")
        self.images = images

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def content_digest(self) -> str:
        """A hash of the pixels and labels."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(str(self.images.shape).encode())
        digest.update(np.ascontiguousarray(self.images).data)
        digest.update(np.asarray(self.targets, dtype=np.int64).tobytes())
        return digest.hexdigest()


class FileImageDataset(ImageDataset):
    """Images read from files on each access (any format PIL opens)."""

    def __init__(self, paths: Sequence, targets: Sequence[int],
                 transform: Optional[Callable] = None):
        super().__init__(targets, transform)
        self.paths = [str(p) for p in paths]
        if len(self.paths) != len(self.targets):
            raise ValueError(f"{len(self.paths)} files for {len(self.targets)} targets")

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image, or :class:`BadImageError` naming the file and why."""
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises: the file is bad
            raise BadImageError(path, bad_image_reason(path, exc)) from None

    def content_digest(self, root) -> str:
        """A hash of the file paths relative to ``root``, their sizes, modification times
        and the labels.

        File contents are not read (too slow for large folders; :meth:`bytes_digest` does);
        the root itself is left out, so moving a dataset with its modification times
        (``mv``, ``cp -p``, ``rsync -t``) keeps its fingerprint.
        """
        digest = hashlib.blake2b(digest_size=16)
        for path, target in zip(self.paths, self.targets):
            rel = os.path.relpath(path, root)
            stat = os.stat(path)
            digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\t{target}\n".encode())
        return digest.hexdigest()

    def bytes_digest(self) -> str:
        """A hash of every file's bytes and label, in item order (reads every file)."""
        digest = hashlib.blake2b(digest_size=16)
        for path, target in zip(self.paths, self.targets):
            item = hashlib.blake2b(digest_size=16)
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    item.update(block)
            digest.update(f"{item.hexdigest()}\t{target}\n".encode())
        return digest.hexdigest()


def bad_image_reason(path, exc: BaseException) -> str:
    """Why Pillow could not decode ``path`` (which raised ``exc``), in words, with what to do."""
    if isinstance(exc, Image.DecompressionBombError):
        return (f"{exc} Pillow refuses images this large (a decompression bomb); if the file is "
                f"trusted, raise the limit in Python before the run: "
                f"PIL.Image.MAX_IMAGE_PIXELS = <pixels> (None disables it)")
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            return "the file is empty (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return "it is not an image file Pillow can read"
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"it is truncated or corrupt ({type(exc).__name__}: {exc})"


def bad_image_settings() -> str:
    """What, besides a file's content, decides whether it is skipped as a bad image
    (the cache keys on it: raising the pixel limit re-extracts the skipped images)."""
    return f"max_image_pixels={Image.MAX_IMAGE_PIXELS}"


def make_fingerprint(name: str, *parts) -> str:
    """``"<name>-<hash of parts>"``: a stable identifier for cache keys."""
    payload = json.dumps([name, *parts], sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def require_root(root, dataset: str, expected: str) -> Path:
    """``root`` as a Path, or DataNotFoundError when it is unset, missing or empty.

    ``expected`` completes the message: what the folder should contain and where to get it.
    """
    if root is None or str(root) == "":
        raise DataNotFoundError(f"dataset {dataset!r} needs a data folder: set dataset.root "
                                f"(Python: root=...) to {expected}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"dataset {dataset!r}: folder {str(path)!r} does not exist; "
                                f"it should be {expected}")
    if not any(path.iterdir()):
        raise DataNotFoundError(f"dataset {dataset!r}: folder {str(path)!r} is empty; "
                                f"it should be {expected}")
    return path


def clean_class_name(name: str) -> str:
    """Underscores to spaces, surrounding whitespace removed."""
    return " ".join(name.replace("_", " ").split())
