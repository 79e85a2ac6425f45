"""Datasets, class orders and class-incremental Avalanche benchmarks.

Main entry point: :func:`class_incremental`. Dataset loaders live in ``DATASETS``
(:mod:`scenarios.registry`); the seeded class orders in :mod:`scenarios.class_order`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

from clap4cl._lazy import lazy_exports
from clap4cl.errors import UserError

from scenarios.class_order import classes_per_experience, default_class_order, validate_class_order
from scenarios.registry import (DATASETS, FEATURE_DATASETS, available_datasets, canonical_name,
                                get_dataset_splits, get_feature_dataset)
from scenarios.info import StreamInfo

if TYPE_CHECKING:
    from scenarios.base import DatasetSplits

# Imported on first use (PEP 562), so reading the dataset names loads no torch.
__getattr__, __dir__ = lazy_exports(__name__, {
    "ArrayImageDataset": "scenarios.base",
    "DatasetSplits": "scenarios.base",
    "FileImageDataset": "scenarios.base",
    "ImageDataset": "scenarios.base",
    "SyntheticFeatures": "scenarios.datasets.synthetic",
    "make_synthetic": "scenarios.datasets.synthetic",
})

LEVELS = ("image", "features")

__all__ = ["ArrayImageDataset", "DATASETS", "DatasetSplits", "FEATURE_DATASETS",
           "FileImageDataset", "ImageDataset", "LEVELS", "StreamInfo", "SyntheticFeatures",
           "available_datasets", "class_incremental", "classes_per_experience",
           "default_class_order", "get_dataset_splits", "get_feature_dataset", "make_synthetic",
           "resolve_class_order", "validate_class_order"]


def resolve_class_order(n_classes: int, run: int = 0,
                        class_order: Optional[Sequence[int]] = None) -> List[int]:
    """``class_order`` validated, or the seeded order ``RandomState(1993 + run)``."""
    if class_order is None:
        return default_class_order(n_classes, run)
    return validate_class_order(class_order, n_classes)


def class_incremental(name: str, *, n_experiences: int, run: int = 0, root=None,
                      class_order: Optional[Sequence[int]] = None,
                      first_experience_classes: Optional[int] = None, level: str = "image",
                      backbone=None, cache=None, train_transform: Optional[Callable] = None,
                      eval_transform: Optional[Callable] = None, progress: bool = True,
                      batch_size: int = 128, num_workers: int = 0, on_bad_image: str = "skip",
                      cache_verify: str = "mtime", templates: Optional[Sequence] = None,
                      **dataset_kwargs):
    """A class-incremental Avalanche benchmark (``nc_benchmark``, no task labels).

    Labels are remapped so that label i is original class ``class_order[i]``.

    Args:
        name: a registered dataset (``scenarios.available_datasets()``).
        n_experiences: number of experiences.
        run: selects the seeded class order ``RandomState(1993 + run).permutation(n)``.
        root: data folder (see each loader); None = the dataset's default.
        class_order: explicit permutation of the original class ids (overrides ``run``).
        first_experience_classes: classes of the first experience; the rest are split
            equally. None = equal increments.
        level: ``"image"`` (items are preprocessed images) or ``"features"`` (items are
            frozen CLIP features from ``scenarios.features.to_feature_splits``, which
            needs ``backbone`` and uses ``cache``). ``synthetic`` is always features.
        backbone: a :class:`clap4cl.FrozenCLIP`; at image level its
            ``preprocess_train`` / ``preprocess_test`` are the default transforms. Given
            a backbone, the benchmark carries the class text features of its classes
            (``benchmark.text_features``, computed with
            ``clap4cl.class_text_features(backbone, class_names, templates)``).
        cache: a :class:`clap4cl.FeatureCache` for ``level="features"`` (None = the
            default cache directory).
        train_transform, eval_transform: image-level transforms (override the backbone's;
            with neither, items are PIL images).
        progress, batch_size, num_workers: feature extraction settings.
        on_bad_image: ``"skip"`` drops image files that cannot be decoded from their
            split with their label (one warning each; the count is
            ``info.skipped_images``), ``"error"`` stops with an error naming the file
            (features level).
        cache_verify: ``"mtime"`` or ``"content"`` (also hash every image file's bytes
            into the cache key); see :func:`scenarios.features.to_feature_splits`.
        templates: prompt templates of the class text features (None: the dataset's).
        **dataset_kwargs: options of the dataset loader (e.g. ``download=True`` for
            CIFAR, ``n_classes=20`` for synthetic).

    Returns:
        An Avalanche ``NCScenario`` whose ``info`` attribute is a :class:`StreamInfo`
        (dataset name, class order, class names, templates, classes per experience, level,
        fingerprint, the class text features (the stream's own, or computed from the
        backbone), modality widths or null image).
        The same fields are also readable as attributes of the benchmark itself
        (``benchmark.class_names``, ...), as lists, for scripts written before ``info``.
    """
    key = canonical_name(name)
    if key == "two_modality":
        return _two_modality_benchmark(n_experiences, run, root, class_order,
                                       first_experience_classes, dataset_kwargs)
    if key in FEATURE_DATASETS:
        return _synthetic_benchmark(key, n_experiences, run, root, class_order,
                                    first_experience_classes, dataset_kwargs)
    if level not in LEVELS:
        raise UserError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if level == "features" and backbone is None:
        raise UserError("level='features' needs a backbone: pass backbone=clap4cl.load_clip(...)")
    splits = get_dataset_splits(key, root, **dataset_kwargs)
    order, sizes = _plan_stream(splits.n_classes, n_experiences, run, class_order,
                                first_experience_classes, splits.train.targets,
                                splits.test.targets)
    if level == "features" and cache is None:
        from clap4cl.features.cache import FeatureCache
        from clap4cl.paths import default_cache_dir

        cache = FeatureCache(default_cache_dir())
    skipped, fingerprint = (), splits.fingerprint
    if level == "image":
        train, test = _image_level(splits, backbone, train_transform, eval_transform)
    else:
        train, test = _feature_level(splits, backbone, cache, progress, batch_size, num_workers,
                                     on_bad_image, cache_verify)
        skipped = tuple(train.skipped) + tuple(test.skipped)
        if skipped:
            from scenarios.base import make_fingerprint

            _plan_stream(splits.n_classes, n_experiences, run, class_order,
                         first_experience_classes, train.targets, test.targets)
            fingerprint = make_fingerprint(key, splits.fingerprint, "skipped", sorted(skipped))
    benchmark = _nc_benchmark(train, test, order, sizes, features=level == "features")
    class_names = [splits.class_names[c] for c in order]
    templates = tuple(templates) if templates else tuple(splits.templates)
    text = _text_features(backbone, class_names, templates, cache)
    return _annotate(benchmark, key, order, sizes, class_names, templates, text, level,
                     fingerprint, skipped_images=skipped)


def _text_features(backbone, class_names, templates, cache):
    """The class text statistics in label order, given a backbone and templates (else None)."""
    if backbone is None or not templates:
        return None
    from clap4cl.encoders.prompts import class_text_features

    return class_text_features(backbone, class_names, templates,
                               cache_dir=None if cache is None else cache.root)


def _plan_stream(n_classes, n_experiences, run, class_order, first_experience_classes,
                 train_targets, test_targets):
    """(class order, classes per experience), validated before any expensive work."""
    order = resolve_class_order(n_classes, run, class_order)
    sizes = classes_per_experience(n_classes, n_experiences, first_experience_classes)
    for split, targets in (("training", train_targets), ("test", test_targets)):
        absent = sorted(set(range(n_classes)) - {int(t) for t in targets})
        if absent:
            raise UserError(f"classes {absent[:10]} have no {split} images: a class-incremental "
                            f"stream needs every class in both splits")
    return order, sizes


def _image_level(splits: DatasetSplits, backbone, train_transform, eval_transform):
    if train_transform is None and backbone is not None:
        train_transform = backbone.preprocess_train
    if eval_transform is None and backbone is not None:
        eval_transform = backbone.preprocess_test
    return splits.train.with_transform(train_transform), splits.test.with_transform(eval_transform)


def _feature_level(splits: DatasetSplits, backbone, cache, progress, batch_size, num_workers,
                   on_bad_image="skip", cache_verify="mtime"):
    from scenarios.features import to_feature_splits

    return to_feature_splits(splits, backbone, cache, batch_size=batch_size,
                             num_workers=num_workers, progress=progress,
                             on_bad_image=on_bad_image, verify=cache_verify)


def _synthetic_benchmark(key, n_experiences, run, root, class_order, first_experience_classes,
                         dataset_kwargs):
    import torch

    from scenarios.features import FeatureDataset
    from scenarios.datasets.synthetic import synthetic_views

    data = get_feature_dataset(key, root, **dataset_kwargs)
    order, sizes = _plan_stream(data.n_classes, n_experiences, run, class_order,
                                first_experience_classes, data.train_targets.tolist(),
                                data.test_targets.tolist())
    train = FeatureDataset([data.train_features, data.train_features_flip],
                           data.train_targets.tolist(),
                           source=(synthetic_views, {"split": "train", **dataset_kwargs}))
    test = FeatureDataset([data.test_features], data.test_targets.tolist(),
                          source=(synthetic_views, {"split": "test", **dataset_kwargs}))
    benchmark = _nc_benchmark(train, test, order, sizes, features=True)
    text = data.text_features.select(order)
    return _annotate(benchmark, key, order, sizes, list(text.class_names), (), text,
                     "features", data.fingerprint, null_image=torch.from_numpy(data.null_image))


def _two_modality_benchmark(n_experiences, run, root, class_order, first_experience_classes,
                            dataset_kwargs):
    from scenarios.features import FeatureDataset
    from scenarios.datasets.two_modality import two_modality_views

    data = get_feature_dataset("two_modality", root, **dataset_kwargs)
    order, sizes = _plan_stream(data.n_classes, n_experiences, run, class_order,
                                first_experience_classes, data.train_targets.tolist(),
                                data.test_targets.tolist())
    train = FeatureDataset([data.train_features], data.train_targets.tolist(),
                           source=(two_modality_views, {"split": "train", **dataset_kwargs}))
    test = FeatureDataset([data.test_features], data.test_targets.tolist(),
                          source=(two_modality_views, {"split": "test", **dataset_kwargs}))
    benchmark = _nc_benchmark(train, test, order, sizes, features=True)
    return _annotate(benchmark, "two_modality", order, sizes,
                     [data.class_names[c] for c in order], (), None, "features", data.fingerprint,
                     input_dims=dict(data.input_dims))


def _nc_benchmark(train, test, order: List[int], sizes: List[int], features: bool = False):
    from avalanche.benchmarks import nc_benchmark

    from scenarios.features import first_view, random_view

    per_exp = {0: sizes[0]} if len(set(sizes)) > 1 else None
    transforms = dict(train_transform=random_view, eval_transform=first_view) if features else {}
    return nc_benchmark(train, test, n_experiences=len(sizes), task_labels=False,
                        fixed_class_order=order, class_ids_from_zero_from_first_exp=True,
                        per_exp_classes=per_exp, **transforms)


def _annotate(benchmark, name, order, sizes, class_names, templates, text_features, level,
              fingerprint, input_dims=None, null_image=None, skipped_images=()):
    """Attach the stream's :class:`StreamInfo` as ``benchmark.info`` (and its fields as
    plain attributes, for scripts that read ``benchmark.class_names``)."""
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    info = StreamInfo(
        dataset_name=name, class_order=tuple(int(c) for c in order),
        class_names=tuple(class_names), templates=tuple(templates),
        classes_per_experience=tuple(tuple(range(s, s + n)) for s, n in zip(starts, sizes)),
        level=level, fingerprint=fingerprint, text_features=text_features,
        input_dims=input_dims, null_image=null_image, skipped_images=tuple(skipped_images))
    benchmark.info = info
    benchmark.dataset_name = info.dataset_name
    benchmark.class_order = list(info.class_order)
    benchmark.class_names = list(info.class_names)
    benchmark.templates = info.templates
    benchmark.text_features = info.text_features
    benchmark.classes_per_experience = [list(c) for c in info.classes_per_experience]
    benchmark.level = info.level
    benchmark.fingerprint = info.fingerprint
    if input_dims is not None:
        benchmark.input_dims = dict(input_dims)
    if null_image is not None:
        benchmark.null_image = null_image
    return benchmark
