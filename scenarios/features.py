"""Feature-level datasets: frozen CLIP features instead of images.

Training on cached features picks one of the train views (original, flipped) uniformly
at random per sample and access (the ``train`` transform group), which is exactly the
reference's RandomHorizontalFlip on a deterministic resize + centre crop (docs/clap4clip.md R17);
evaluation uses the original view.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class FeatureDataset(Dataset):
    """Precomputed image features with one or more views per sample.

    Args:
        views: sequence of (N, D) arrays or tensors (may be fp16 memory maps); view 0 is
            the original image, the others augmented views (the horizontal flip).
        targets: N integer labels.

        source: optional ``(function, kwargs)`` that regenerates ``views``; such a dataset
            is pickled as that recipe instead of its arrays (generated data, e.g. synthetic).

    Items are ``(float32 tensor (V, D) of all views, int label)``. The view is chosen by
    the benchmark's transforms, so Avalanche's transform groups apply as for images:
    ``random_view`` in the ``train`` group, ``first_view`` in the ``eval`` group
    (``dataset.eval()`` always gives the original view).
    """

    def __init__(self, views: Sequence, targets, source=None):
        if not views:
            raise ValueError("FeatureDataset needs at least one view")
        n = len(views[0])
        if any(len(v) != n for v in views):
            raise ValueError("all views must have the same number of samples")
        if len(targets) != n:
            raise ValueError(f"{len(targets)} targets for {n} samples")
        self.views = list(views)
        self.targets = [int(t) for t in targets]
        self.source = source
        self.skipped: dict = {}  # file -> reason of each image dropped as undecodable

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        rows = np.stack([np.asarray(v[index], dtype=np.float32) for v in self.views])
        return torch.from_numpy(rows), self.targets[index]

    @property
    def dim(self) -> int:
        return int(self.views[0].shape[1])

    def __getstate__(self):
        # Checkpoints stay small: generated data is pickled as its recipe, memory-mapped
        # cache files by path.
        state = self.__dict__.copy()
        if self.source is not None:
            state["views"] = None
        else:
            state["views"] = [_MappedNpy(v.filename) if isinstance(v, np.memmap) and v.filename
                              else v for v in self.views]
        return state

    def __setstate__(self, state):
        if state["views"] is None:
            function, kwargs = state["source"]
            state["views"] = function(**kwargs)
        else:
            state["views"] = [np.load(v.path, mmap_mode="r") if isinstance(v, _MappedNpy) else v
                              for v in state["views"]]
        self.__dict__.update(state)


class _MappedNpy:
    """A reference to an ``.npy`` file opened memory-mapped."""

    def __init__(self, path):
        self.path = str(path)


def random_view(views: torch.Tensor) -> torch.Tensor:
    """Train transform: one of the views uniformly at random (torch's global RNG)."""
    if len(views) == 1:
        return views[0]
    return views[int(torch.randint(len(views), ()).item())]


def first_view(views: torch.Tensor) -> torch.Tensor:
    """Eval transform: the original view."""
    return views[0]


def to_feature_splits(splits, backbone, cache, *, batch_size: int = 128,
                      num_workers: int = 0, progress: bool = True,
                      on_bad_image: str = "skip", verify: str = "mtime"):
    """Encode (or load from ``cache``) a dataset's images and wrap them as feature datasets.

    The train split is encoded in two views (original and horizontally flipped), the
    test split in one. Returns ``(train FeatureDataset, test FeatureDataset)``.

    An image file that cannot be decoded is dropped from its split together with its
    label (one warning per file, also when its entry comes from the cache); the datasets'
    ``skipped`` maps each dropped file to the reason. ``on_bad_image="error"`` raises
    :class:`clap4cl.errors.BadImageError` instead. ``verify="content"`` keys the cache of
    an image folder also on a hash of every file's bytes (the default: path, size,
    modification time and label).
    """
    from clap4cl.errors import UserError
    from clap4cl.features.cache import TEST_VIEWS, TRAIN_VIEWS

    from scenarios.choices import BAD_IMAGE_POLICIES, CACHE_VERIFY

    for name, value, allowed in (("on_bad_image", on_bad_image, BAD_IMAGE_POLICIES),
                                 ("verify", verify, CACHE_VERIFY)):
        if value not in allowed:
            raise UserError(f"{name} = {value!r} is not valid: choose one of {', '.join(allowed)}")
    dataset_id = feature_dataset_id(splits, verify)

    def encode(dataset, split, views):
        found = cache.get_or_extract(
            backbone, dataset.with_transform(backbone.preprocess_test),
            dataset_id=dataset_id, split=split, views=views,
            batch_size=batch_size, num_workers=num_workers, progress=progress,
            on_bad_image=on_bad_image)
        skipped = {}
        for view in views:
            skipped.update(cache.skipped(cache.key(backbone, dataset_id, split, view)))
        return drop_rows([found[v] for v in views], dataset.targets, skipped, on_bad_image)

    train = encode(splits.train, "train", TRAIN_VIEWS)
    test = encode(splits.test, "test", TEST_VIEWS)
    return train, test


def feature_dataset_id(splits, verify: str = "mtime") -> str:
    """The cache's dataset id of ``splits``: its fingerprint, for image files also what
    decides which files are skipped, and with ``verify="content"`` their bytes."""
    from scenarios.base import FileImageDataset, bad_image_settings, make_fingerprint

    if not isinstance(splits.train, FileImageDataset):
        return splits.fingerprint
    parts = [bad_image_settings()]
    if verify == "content":
        parts += [splits.train.bytes_digest(), splits.test.bytes_digest()]
    return make_fingerprint(splits.name, splits.fingerprint, *parts)


def drop_rows(views, targets, skipped, on_bad_image: str = "skip") -> "FeatureDataset":
    """A FeatureDataset of ``views`` and ``targets`` without the rows in ``skipped``
    ({row: (file, reason)}), warning once per file (``on_bad_image="error"``: raising)."""
    import warnings

    from clap4cl.errors import BadImageError

    for row in sorted(skipped):
        path, reason = skipped[row]
        if on_bad_image == "error":
            raise BadImageError(path, reason)
        warnings.warn(f"skipped image {path!r}: {reason}", BadImageWarning, stacklevel=3)
    if skipped:
        keep = np.setdiff1d(np.arange(len(targets)), np.fromiter(skipped, dtype=np.int64))
        views = [np.asarray(v)[keep] for v in views]
        targets = [targets[i] for i in keep]
    dataset = FeatureDataset(views, targets)
    dataset.skipped = {path: reason for path, reason in (skipped[r] for r in sorted(skipped))}
    return dataset


class BadImageWarning(UserWarning):
    """An image file was skipped because it cannot be decoded."""
