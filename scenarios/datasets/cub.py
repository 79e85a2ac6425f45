"""CUB-200-2011 with its official train/test split, read from the extracted archive."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Sequence

from clap4cl.errors import DataNotFoundError

from scenarios.base import DatasetSplits, FileImageDataset, clean_class_name, make_fingerprint, require_root

CUB_TEMPLATES = ("a photo of a {}, a type of bird.",)
CUB_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")
CUB_LAYOUT = ("the extracted CUB_200_2011.tgz (from "
              "https://www.vision.caltech.edu/datasets/cub_200_2011/) holding images.txt, "
              "train_test_split.txt, image_class_labels.txt, classes.txt and images/")


def cub_class_name(raw: str) -> str:
    """``'001.Black_footed_Albatross'`` -> ``'Black footed Albatross'``."""
    return clean_class_name(re.sub(r"^\d+\.", "", raw.strip()))


def load_cub200(root=None) -> DatasetSplits:
    """CUB-200-2011 with its official train/test split; the single bird template."""
    root = require_root(root, "cub200", CUB_LAYOUT)
    folder = root if (root / "images.txt").is_file() else root / "CUB_200_2011"
    missing = [f for f in CUB_FILES if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(f"cub200: {', '.join(missing)} not found in {str(folder)!r}; "
                                f"set dataset.root to {CUB_LAYOUT}")
    tables = {f: _read_id_table(folder / f) for f in CUB_FILES}
    class_ids = sorted(tables["classes.txt"], key=int)
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    class_names = [cub_class_name(tables["classes.txt"][cid]) for cid in class_ids]
    try:
        splits = _cub_split_lists(folder, tables, label_of)
    except (KeyError, ValueError) as exc:
        raise DataNotFoundError(f"cub200: the metadata files in {str(folder)!r} do not agree "
                                f"(no entry for id {exc}): re-extract CUB_200_2011.tgz") from None
    _require_files(splits[True][0] + splits[False][0], folder)
    train = FileImageDataset(*splits[True])
    test = FileImageDataset(*splits[False])
    fingerprint = make_fingerprint("cub200", train.content_digest(folder),
                                   test.content_digest(folder))
    return DatasetSplits("cub200", train, test, class_names, CUB_TEMPLATES, fingerprint)


def _cub_split_lists(folder: Path, tables, label_of):
    """{is_train: (paths, labels)} in image-id order."""
    splits = {True: ([], []), False: ([], [])}
    for image_id, rel in sorted(tables["images.txt"].items(), key=lambda kv: int(kv[0])):
        is_train = tables["train_test_split.txt"][image_id].strip() == "1"
        splits[is_train][0].append(folder / "images" / rel.strip())
        splits[is_train][1].append(label_of[tables["image_class_labels.txt"][image_id].strip()])
    return splits


def _read_id_table(path: Path) -> Dict[str, str]:
    """``<id> <value>`` lines as a dict."""
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            table[parts[0]] = parts[1]
    return table


def _require_files(paths: Sequence[Path], folder: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"cub200: {len(missing)} of {len(paths)} images listed in "
                                f"images.txt are missing under {str(folder / 'images')!r} "
                                f"(e.g. {missing[0].name}): re-extract CUB_200_2011.tgz")
