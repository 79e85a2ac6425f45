"""A two-modality synthetic stream: one informative modality, one weak or pure noise.

User guide: docs/multimodal-plugins.md ("The two-modality stream"). Class means are drawn once per
seed; then, independently per sample,

    a = μ_a[y] + σ_a · N(0, I)                  informative
    b = N(0, I)                     (noise)     independent of y: the CML principle fails
    b = μ_b[y] + σ_b · N(0, I)      (weak)      informative, but much noisier

Items are the two modalities side by side, (d_a + d_b,) float32, which is what
``clap4cl.MultiEncoderClassifier(input_dims={"a": d, "b": d}, ...)`` splits.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from clap4cl.errors import UserError

from scenarios.base import make_fingerprint

B_MODES = ("noise", "weak")


@dataclass(frozen=True)
class TwoModalityFeatures:
    """Train/test arrays (N, 2d) with modality a in the first d columns, labels (N,)."""

    train_features: np.ndarray
    train_targets: np.ndarray
    test_features: np.ndarray
    test_targets: np.ndarray
    input_dims: Dict[str, int]
    class_names: Tuple[str, ...]
    fingerprint: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def make_two_modality(n_classes: int = 4, dim: int = 8, b_mode: str = "noise",
                      sigma_a: float = 0.8, sigma_b: float = 2.5, train_size: int = 2000,
                      test_size: int = 1000, seed: int = 0) -> TwoModalityFeatures:
    """Generate the stream's data; every array is a function of the arguments."""
    if b_mode not in B_MODES:
        raise UserError(f"b_mode must be one of {', '.join(B_MODES)}, got {b_mode!r}")
    if n_classes < 2 or dim < 1 or train_size < n_classes or test_size < n_classes:
        raise UserError("two_modality needs n_classes >= 2, dim >= 1 and at least one train and "
                        "test sample per class")
    rng = np.random.default_rng(seed)
    mu_a = rng.standard_normal((n_classes, dim))
    mu_b = rng.standard_normal((n_classes, dim))

    def split(n: int, split_rng: np.random.Generator):
        y = np.arange(n) % n_classes
        split_rng.shuffle(y)
        a = mu_a[y] + sigma_a * split_rng.standard_normal((n, dim))
        noise_b = split_rng.standard_normal((n, dim))
        b = noise_b if b_mode == "noise" else mu_b[y] + sigma_b * noise_b
        return np.concatenate([a, b], 1).astype(np.float32), y.astype(np.int64)

    train_x, train_y = split(train_size, np.random.default_rng([seed, 1]))
    test_x, test_y = split(test_size, np.random.default_rng([seed, 2]))
    params = dict(n_classes=n_classes, dim=dim, b_mode=b_mode, sigma_a=sigma_a,
                  sigma_b=sigma_b, train_size=train_size, test_size=test_size, seed=seed)
    return TwoModalityFeatures(train_x, train_y, test_x, test_y, {"a": dim, "b": dim},
                               tuple(f"class {c}" for c in range(n_classes)),
                               make_fingerprint("two_modality", params))


def load_two_modality(root=None, *, n_classes: int = 4, dim: int = 8, b_mode: str = "noise",
                      sigma_a: float = 0.8, sigma_b: float = 2.5, train_size: int = 2000,
                      test_size: int = 1000, seed: int = 0) -> TwoModalityFeatures:
    """Registry loader (``root`` is ignored: the data is generated)."""
    return make_two_modality(n_classes, dim, b_mode, sigma_a, sigma_b, train_size, test_size, seed)


def two_modality_views(split: str, **params) -> list:
    """The views of one split, regenerated (how checkpoints pickle this dataset)."""
    options = set(inspect.signature(make_two_modality).parameters)
    data = make_two_modality(**{k: v for k, v in params.items() if k in options})
    return [data.train_features if split == "train" else data.test_features]
