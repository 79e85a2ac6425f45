"""Image datasets stored as folders of class folders: any image folder and ImageNet-100,
and the folder helpers that ImageNet-R (``scenarios.datasets.imagenet_r``) also uses.

Deterministic split of a folder without train/test subfolders (``image_folder`` and
``imagenet_r``): per class, files are sorted by their path relative to the class folder,
permuted with ``numpy.random.RandomState([split_seed, crc32(class folder name)])``, and
the last ``round(test_fraction * n)`` of the permutation (at least 1 when the class has
two or more images) form the test set. Adding or removing a class therefore never
changes the split of another class.

Class names: a ``classnames.txt`` under the root wins (either ``<folder> <name>`` per
line, or one name per line in sorted folder order); else ImageNet wnid folders
(``n01443537``) get open_clip's ImageNet class names, through the 1000 sorted wnids that
timm (an open_clip dependency) ships; else the folder name with underscores as spaces.
"""
from __future__ import annotations

import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from clap4cl.errors import DataNotFoundError, UserError

from scenarios.base import DatasetSplits, FileImageDataset, clean_class_name, make_fingerprint, require_root

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm"})
WNID_PATTERN = re.compile(r"^n\d{8}$")
CLASS_NAMES_FILE = "classnames.txt"

GENERIC_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
)


def imagenet_templates() -> Tuple[str, ...]:
    """open_clip's 80 OpenAI ImageNet templates as format strings (they are callables there)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") if callable(t) else str(t) for t in OPENAI_IMAGENET_TEMPLATES)


@lru_cache(maxsize=1)
def imagenet_wnid_to_name() -> Dict[str, str]:
    """ImageNet-1k wnid -> open_clip class name, or {} when the wnid list is unavailable offline.

    ImageNet's class index is the position of the wnid in the sorted list of the 1000
    wnids; open_clip's ``IMAGENET_CLASSNAMES`` is in that index order.
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        wnids = [info.index_to_label_name(i) for i in range(info.num_classes())]
    except Exception:  # timm missing or changed: fall back to folder names
        return {}
    if len(wnids) != len(IMAGENET_CLASSNAMES) or wnids != sorted(wnids):
        return {}
    return dict(zip(wnids, IMAGENET_CLASSNAMES))


# ---- generic folder helpers ---------------------------------------------------------------
def class_folder_names(folder: Path) -> List[str]:
    """Sorted names of the non-hidden subfolders of ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> List[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path."""
    found = [p for p in folder.rglob("*")
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def scan_class_folders(folder: Path, classes: Sequence[str]) -> Tuple[List[Path], List[int]]:
    """Paths and labels of the images in ``folder/<class>/``; label = index in ``classes``."""
    paths, targets = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if class_dir.is_dir():
            files = image_files(class_dir)
            paths += files
            targets += [label] * len(files)
    return paths, targets


def split_class_files(files: Sequence[Path], class_name: str, test_fraction: float,
                      split_seed: int) -> Tuple[List[Path], List[Path]]:
    """One class's (train files, test files) under the module's deterministic rule."""
    files = list(files)
    n = len(files)
    n_test = 0 if n < 2 else min(n - 1, max(1, int(round(test_fraction * n))))
    rng = np.random.RandomState([int(split_seed), zlib.crc32(class_name.encode())])
    order = rng.permutation(n)
    return ([files[i] for i in order[:n - n_test]], [files[i] for i in order[n - n_test:]])


def split_single_folder(root: Path, classes: Sequence[str], test_fraction: float,
                        split_seed: int):
    """(train paths, train labels, test paths, test labels) of ``root/<class>/`` folders."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    train_paths, train_targets, test_paths, test_targets = [], [], [], []
    for label, name in enumerate(classes):
        train, test = split_class_files(image_files(root / name), name, test_fraction, split_seed)
        train_paths += train
        train_targets += [label] * len(train)
        test_paths += test
        test_targets += [label] * len(test)
    return train_paths, train_targets, test_paths, test_targets


def resolve_class_names(root: Path, folders: Sequence[str]) -> List[str]:
    """Names of the class ``folders`` (see the module docstring for the rules)."""
    listed = _read_class_names_file(root, folders)
    if listed is not None:
        return listed
    wnid_names = imagenet_wnid_to_name() if any(WNID_PATTERN.match(f) for f in folders) else {}
    return [wnid_names.get(f) or clean_class_name(f) for f in folders]


def _read_class_names_file(root: Path, folders: Sequence[str]) -> Optional[List[str]]:
    path = root / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                        f"offset {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keyed = dict(ln.split(None, 1) for ln in lines if len(ln.split(None, 1)) == 2)
    if all(f in keyed for f in folders):
        return [clean_class_name(keyed[f]) for f in folders]
    if len(lines) == len(folders):
        return [clean_class_name(ln) for ln in lines]
    raise UserError(f"{path} has {len(lines)} names for {len(folders)} class folders: write "
                    f"one '<folder> <name>' line per class, or one name per line in sorted "
                    f"folder order")


def file_splits(name, root, classes, train_paths, train_targets, test_paths, test_targets,
                 templates, *fingerprint_parts) -> DatasetSplits:
    """The splits of lists of image files; the fingerprint hashes the files and
    ``fingerprint_parts`` (the split rule)."""
    if not train_paths or not test_paths:
        which = "train" if not train_paths else "test"
        raise DataNotFoundError(f"dataset {name!r}: no {which} images found under {str(root)!r} "
                                f"(image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    train = FileImageDataset(train_paths, train_targets)
    test = FileImageDataset(test_paths, test_targets)
    fingerprint = make_fingerprint(name, train.content_digest(root), test.content_digest(root),
                                   *fingerprint_parts)
    return DatasetSplits(name, train, test, resolve_class_names(root, classes), templates,
                         fingerprint)


def train_test_dirs(root: Path, test_names=("test", "val")) -> Optional[Tuple[Path, Path]]:
    """``(root/train, root/<first of test_names>)`` when both exist, else None."""
    train = root / "train"
    for test_name in test_names:
        if train.is_dir() and (root / test_name).is_dir():
            return train, root / test_name
    return None


def _classes_of_split_dirs(name: str, train_dir: Path, test_dir: Path) -> List[str]:
    classes = class_folder_names(train_dir)
    extra = sorted(set(class_folder_names(test_dir)) - set(classes))
    if extra:
        raise DataNotFoundError(f"dataset {name!r}: {str(test_dir)!r} has classes missing from "
                                f"{str(train_dir)!r} ({', '.join(extra[:5])}): every test class "
                                f"needs training images")
    return classes


def load_split_dirs(name, root, train_dir, test_dir, templates) -> DatasetSplits:
    """Splits given as ``train_dir/<class>/`` and ``test_dir/<class>/``."""
    classes = _classes_of_split_dirs(name, train_dir, test_dir)
    train_paths, train_targets = scan_class_folders(train_dir, classes)
    test_paths, test_targets = scan_class_folders(test_dir, classes)
    return file_splits(name, root, classes, train_paths, train_targets, test_paths,
                        test_targets, templates, "split-dirs")


def load_single_folder(name, root, templates, test_fraction, split_seed) -> DatasetSplits:
    """``root/<class>/`` folders split with the module's deterministic rule."""
    classes = class_folder_names(root)
    if not classes:
        raise DataNotFoundError(f"dataset {name!r}: {str(root)!r} has no class folders "
                                f"(expected <root>/<class>/<image files>)")
    parts = split_single_folder(root, classes, test_fraction, split_seed)
    return file_splits(name, root, classes, *parts, templates,
                        "single-folder", test_fraction, split_seed)


# ---- image_folder ---------------------------------------------------------------------------
IMAGE_FOLDER_LAYOUT = ("a folder with train/ and test/ (or val/) subfolders of class folders, "
                       "or a folder of class folders (split 80/20 deterministically)")


def load_image_folder(root=None, *, test_fraction: float = 0.2, split_seed: int = 0,
                      templates: Optional[Sequence[str]] = None) -> DatasetSplits:
    """Any image-classification folder tree.

    ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``) are used as given;
    otherwise ``root/<class>/*`` is split with the module's deterministic rule.
    ``templates`` replaces the generic prompt templates.
    """
    root = require_root(root, "image_folder", IMAGE_FOLDER_LAYOUT)
    templates = tuple(templates) if templates else GENERIC_TEMPLATES
    split_dirs = train_test_dirs(root)
    if split_dirs:
        return load_split_dirs("image_folder", root, *split_dirs, templates)
    return load_single_folder("image_folder", root, templates, test_fraction, split_seed)


# ---- ImageNet-100 ---------------------------------------------------------------------------
IMAGENET100_LAYOUT = ("a folder with train/ and val/ subfolders of 100 ImageNet wnid folders "
                      "(the ImageNet-100 subset built from the ILSVRC-2012 images, which must be "
                      "obtained from image-net.org)")


def load_imagenet100(root=None) -> DatasetSplits:
    """ImageNet-100: ``root/train/<wnid>/*`` and ``root/val/<wnid>/*``, ImageNet templates."""
    root = require_root(root, "imagenet100", IMAGENET100_LAYOUT)
    split_dirs = train_test_dirs(root, ("val", "test"))
    if not split_dirs:
        raise DataNotFoundError(f"imagenet100: {str(root)!r} has no train/ and val/ subfolders; "
                                f"it should be {IMAGENET100_LAYOUT}")
    return load_split_dirs("imagenet100", root, *split_dirs, imagenet_templates())
