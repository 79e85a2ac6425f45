"""scikit-learn's bundled handwritten digits: real images, fully offline, no root needed.

1797 grayscale 8x8 images of the digits 0-9 (values 0..16). Pixels are scaled to
0..255 and returned as 8x8 RGB PIL images; the CLIP preprocessing resizes them.

Split: stratified by class with ``sklearn.model_selection.train_test_split``,
``test_size=0.25`` and ``random_state=0`` (1347 train / 450 test images). The split
arguments are loader options, so another split is one keyword away.
"""
from __future__ import annotations

import numpy as np

from scenarios.base import ArrayImageDataset, DatasetSplits, make_fingerprint

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

DIGIT_TEMPLATES = (
    'a photo of the number: "{}".',
    "a photo of the digit {}.",
    "a handwritten digit {}.",
    "a low resolution image of the number {}.",
    "a blurry black and white picture of the digit {}.",
)


def digits_images() -> tuple:
    """All 1797 digits as (uint8 images (N, 8, 8) in 0..255, int labels (N,))."""
    from sklearn import datasets as sklearn_datasets

    bunch = sklearn_datasets.load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def load_digits(root=None, *, test_size: float = 0.25, split_seed: int = 0) -> DatasetSplits:
    """The digits dataset as train/test splits (``root`` is ignored: the data is bundled).

    Args:
        test_size: fraction of each class held out for testing.
        split_seed: ``random_state`` of the stratified split.
    """
    from sklearn.model_selection import train_test_split

    images, labels = digits_images()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_size,
                                           random_state=split_seed, stratify=labels)
    train = ArrayImageDataset(images[train_idx], labels[train_idx].tolist())
    test = ArrayImageDataset(images[test_idx], labels[test_idx].tolist())
    fingerprint = make_fingerprint("digits", train.content_digest(), test.content_digest())
    return DatasetSplits("digits", train, test, list(DIGIT_NAMES), DIGIT_TEMPLATES, fingerprint)
