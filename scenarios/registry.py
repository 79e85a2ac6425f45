"""Dataset registry: names -> loaders.

``DATASETS`` holds the image datasets (loaders return a :class:`DatasetSplits`);
``FEATURE_DATASETS`` the feature-level ones without images (``synthetic``). Each name maps
to the ``"module:function"`` of its loader, imported when the dataset is loaded, so the
names are cheap to read (config validation, the CLI help). Names are case-insensitive
and ``-`` may be written for ``_`` (``imagenet-r``, ``fashion-mnist``).
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable, Dict, List

from clap4cl._lazy import resolve
from clap4cl.errors import UserError

if TYPE_CHECKING:
    from scenarios.base import DatasetSplits
    from scenarios.datasets.synthetic import SyntheticFeatures

DATASETS: Dict[str, str] = {
    "digits": "scenarios.datasets.digits:load_digits",
    "cifar10": "scenarios.datasets.cifar:load_cifar10",
    "cifar100": "scenarios.datasets.cifar:load_cifar100",
    "fashion_mnist": "scenarios.datasets.fashion_mnist:load_fashion_mnist",
    "image_folder": "scenarios.datasets.folders:load_image_folder",
    "imagenet_r": "scenarios.datasets.imagenet_r:load_imagenet_r",
    "imagenet100": "scenarios.datasets.folders:load_imagenet100",
    "cub200": "scenarios.datasets.cub:load_cub200",
}

FEATURE_DATASETS: Dict[str, str] = {
    "synthetic": "scenarios.datasets.synthetic:load_synthetic",
    "two_modality": "scenarios.datasets.two_modality:load_two_modality",
}

# Datasets that read no files (``root`` is ignored).
NO_DATA_FILES = frozenset({"digits", "synthetic", "two_modality"})


def available_datasets() -> List[str]:
    """All registered dataset names, sorted."""
    return sorted({**DATASETS, **FEATURE_DATASETS})


def normalise_name(name) -> str:
    """``name`` as a registry key would be spelled (lower case, ``_`` for ``-``)."""
    return str(name).strip().lower().replace("-", "_")


def canonical_name(name) -> str:
    """The registry key of ``name``, or UserError listing the valid names."""
    key = normalise_name(name)
    if key not in DATASETS and key not in FEATURE_DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of "
                        f"{', '.join(available_datasets())}")
    return key


def is_feature_dataset(name) -> bool:
    """True for datasets that exist only as features (no images, no backbone needed)."""
    return canonical_name(name) in FEATURE_DATASETS


def get_dataset_splits(name, root=None, **kwargs) -> DatasetSplits:
    """Load an image dataset's train/test splits; ``kwargs`` are the loader's options."""
    key = canonical_name(name)
    if key in FEATURE_DATASETS:
        raise UserError(f"dataset {key!r} has features but no images: use "
                        f"scenarios.class_incremental({key!r}, ...) or get_feature_dataset")
    return _call_loader(key, resolve(DATASETS[key]), root, kwargs)


def get_feature_dataset(name, root=None, **kwargs) -> SyntheticFeatures:
    """Generate a feature-level dataset (``synthetic``); ``kwargs`` are its parameters."""
    key = canonical_name(name)
    if key not in FEATURE_DATASETS:
        raise UserError(f"dataset {key!r} is an image dataset: use get_dataset_splits")
    return _call_loader(key, resolve(FEATURE_DATASETS[key]), root, kwargs)


def loader_options(loader: Callable) -> List[str]:
    """Keyword options a loader accepts besides ``root``.

    A loader that forwards ``**kwargs`` lists them in an ``options`` attribute.
    """
    if hasattr(loader, "options"):
        return list(loader.options)
    params = inspect.signature(loader).parameters.values()
    return [p.name for p in params if p.name != "root" and p.kind is p.KEYWORD_ONLY]


def _call_loader(key: str, loader: Callable, root, kwargs: dict):
    kwargs = _drop_unsupported_download(key, loader, dict(kwargs))
    unknown = sorted(set(kwargs) - set(loader_options(loader)))
    if unknown:
        valid = loader_options(loader)
        raise UserError(f"dataset {key!r} has no option {', '.join(map(repr, unknown))}: "
                        f"valid options are {', '.join(valid) if valid else '(none)'}")
    return loader(root, **kwargs)


def _drop_unsupported_download(key: str, loader: Callable, kwargs: dict) -> dict:
    """Remove ``download`` for loaders that cannot download; refuse ``download=True`` there."""
    if "download" in kwargs and "download" not in loader_options(loader):
        if kwargs.pop("download"):
            where = ("it is generated or bundled, nothing to fetch" if key in NO_DATA_FILES
                     else "point dataset.root at a local copy")
            raise UserError(f"dataset {key!r} cannot be downloaded by clap4cl: set download to "
                            f"false ({where})")
    return kwargs
