"""ImageNet-R (200 classes, 30 000 renditions) from its extracted archive, with the
reference's split lists when present, else the folder rule of ``scenarios.datasets.folders``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from clap4cl.errors import DataNotFoundError

from scenarios.base import DatasetSplits, require_root
from scenarios.datasets.folders import (WNID_PATTERN, class_folder_names, file_splits,
                                        image_files, imagenet_templates, load_single_folder,
                                        load_split_dirs, train_test_dirs)

IMAGENET_R_LISTS = ("imagenetr_train.txt", "imagenetr_test.txt")
IMAGENET_R_LAYOUT = ("the extracted imagenet-r.tar (200 wnid folders such as n01443537/, from "
                     "https://github.com/hendrycks/imagenet-r), optionally with the split lists "
                     "imagenetr_train.txt / imagenetr_test.txt")


def load_imagenet_r(root=None, *, test_fraction: float = 0.2, split_seed: int = 0) -> DatasetSplits:
    """ImageNet-R (200 classes, 30 000 renditions), CLIP's 80 ImageNet templates.

    Split, in order of preference: the reference's lists ``imagenetr_train.txt`` /
    ``imagenetr_test.txt`` (in ``root`` or ``root/imagenet_split``), matched by
    ``wnid/filename`` wherever the file lies under ``root`` (the lists' own paths follow
    the reference's folder layout, which the extracted archive does not share);
    ``root/train`` and ``root/test``; else the deterministic 80/20 rule on ``root/<wnid>/``.
    """
    root = require_root(root, "imagenet_r", IMAGENET_R_LAYOUT)
    if (root / "imagenet-r").is_dir() and not _imagenet_r_lists(root):
        root = root / "imagenet-r"  # the parent of the extracted archive was given
    lists = _imagenet_r_lists(root)
    if lists:
        return _load_imagenet_r_from_lists(root, *lists)
    split_dirs = train_test_dirs(root, ("test",))
    if split_dirs:
        return load_split_dirs("imagenet_r", root, *split_dirs, imagenet_templates())
    return load_single_folder("imagenet_r", root, imagenet_templates(), test_fraction, split_seed)


def _imagenet_r_lists(root: Path) -> Optional[Tuple[Path, Path]]:
    for folder in (root, root / "imagenet_split"):
        train, test = (folder / n for n in IMAGENET_R_LISTS)
        if train.is_file() and test.is_file():
            return train, test
    return None


def _list_keys(path: Path) -> List[str]:
    """``wnid/filename`` of every entry of a split list (``train/n01443537/art_1.jpg 0``)."""
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            parts = line.split()[0].replace("\\", "/").split("/")
            keys.append("/".join(parts[-2:]))
    return keys


def _index_by_wnid_and_name(root: Path) -> Dict[str, Path]:
    """``wnid/filename`` -> path for images in ``root/<wnid>/`` or ``root/<split>/<wnid>/``."""
    index = {}
    split_dirs = [d for d in root.iterdir() if d.is_dir() and not WNID_PATTERN.match(d.name)]
    for base in (root, *split_dirs):
        for wnid in class_folder_names(base):
            if WNID_PATTERN.match(wnid):
                for path in image_files(base / wnid):
                    index.setdefault(f"{wnid}/{path.name}", path)
    return index


def _load_imagenet_r_from_lists(root: Path, train_list: Path, test_list: Path) -> DatasetSplits:
    train_keys, test_keys = _list_keys(train_list), _list_keys(test_list)
    classes = sorted({k.split("/")[0] for k in train_keys + test_keys})
    label_of = {wnid: i for i, wnid in enumerate(classes)}
    index = _index_by_wnid_and_name(root)
    missing = [k for k in train_keys + test_keys if k not in index]
    if missing:
        raise DataNotFoundError(
            f"imagenet_r: {len(missing)} of {len(train_keys) + len(test_keys)} images listed in "
            f"{train_list.name}/{test_list.name} are not under {str(root)!r} (e.g. {missing[0]}): "
            f"extract the complete imagenet-r.tar there, or remove the lists to split the "
            f"folders deterministically")
    return file_splits(
        "imagenet_r", root, classes,
        [index[k] for k in train_keys], [label_of[k.split("/")[0]] for k in train_keys],
        [index[k] for k in test_keys], [label_of[k.split("/")[0]] for k in test_keys],
        imagenet_templates(), "lists")
