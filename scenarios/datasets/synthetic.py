"""Synthetic CLIP-like features: measurable continual-learning behaviour in seconds, no images.

Generative model (all vectors in R^dim; "unit noise" means a gaussian vector of expected
norm 1, i.e. N(0, I/dim)):

- text side: class prototypes p_c are random unit vectors; the embedding of template l
  is e_{c,l} = normalize(p_c + template_noise * unit noise), so the template ensemble
  has a non-zero variance, as CLAP's language-aware prior expects;
- image side: every class has an image centre
  mu_c = p_c + misalignment * (p_{c'} - p_c) + class_offset * u_c + modality_gap * g,
  where c' is the class's "confuser" (the next class in a random cycle over the
  classes), u_c a random unit direction and g a unit vector orthogonal to all
  prototypes (the modality gap shared by all images);
- an image feature is normalize(mu_c + noise * unit noise); its second train view
  (the role of the horizontal flip) adds ``view_noise`` more unit noise before the
  normalisation.

The gap does not change which text prototype is closest, but the pull towards the
confuser does: zero-shot classification (cosine to t_c) is clearly imperfect (55-70 %
with the defaults, depending on the seed), while the class centres stay well separated,
so a trained linear head reaches about 97 %. Everything is a function of ``seed``; the
text side, the image centres, the train samples and the test samples use independent
streams, so e.g. changing ``test_per_class`` never changes the training data.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from clap4cl.errors import UserError
from clap4cl.encoders.text_features import ClassTextFeatures

from scenarios.base import make_fingerprint


@dataclass(frozen=True)
class SyntheticFeatures:
    """A synthetic feature-level dataset.

    Attributes:
        train_features: (N, D) float32 L2-normalised image features.
        train_features_flip: (N, D) the second view of the same training images.
        train_targets: (N,) int64 class ids.
        test_features: (M, D) float32 L2-normalised.
        test_targets: (M,) int64.
        text_features: per-template text embeddings of the classes (class id order).
        class_names: ``("class 0", "class 1", ...)``.
        fingerprint: identifies the generating parameters.
        null_image: the image-side embedding without class content (the unit gap
            direction g), the analogue of a grey image for removing the image modality.
    """

    train_features: np.ndarray
    train_features_flip: np.ndarray
    train_targets: np.ndarray
    test_features: np.ndarray
    test_targets: np.ndarray
    text_features: ClassTextFeatures
    class_names: Tuple[str, ...]
    fingerprint: str
    null_image: Optional[np.ndarray] = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return int(self.train_features.shape[1])


def make_synthetic(n_classes: int = 10, dim: int = 64, n_templates: int = 8,
                   train_per_class: int = 100, test_per_class: int = 50,
                   modality_gap: float = 1.0, misalignment: float = 0.45,
                   class_offset: float = 0.3, noise: float = 1.3, template_noise: float = 0.3,
                   view_noise: float = 0.1, seed: int = 0) -> SyntheticFeatures:
    """Generate the synthetic dataset described in the module docstring.

    Args:
        n_classes: number of classes C.
        dim: feature dimension D.
        n_templates: prompt templates L per class.
        train_per_class, test_per_class: images per class in each split.
        modality_gap: norm of the shared image-side offset orthogonal to the text prototypes.
        misalignment: in [0, 1); how far each image centre is pulled from its own
            prototype towards its confuser's prototype (0.5 would make them tie).
        class_offset: norm of a random per-class image-side offset.
        noise: norm of the per-image gaussian noise.
        template_noise: norm of the per-template noise on the text side.
        view_noise: norm of the extra noise of the second training view.
        seed: everything is deterministic given the seed.
    """
    params = dict(n_classes=n_classes, dim=dim, n_templates=n_templates,
                  train_per_class=train_per_class, test_per_class=test_per_class,
                  modality_gap=modality_gap, misalignment=misalignment, class_offset=class_offset,
                  noise=noise, template_noise=template_noise, view_noise=view_noise, seed=seed)
    _validate(params)
    text_rng, centre_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4))
    prototypes = _unit(text_rng.standard_normal((n_classes, dim)))
    per_template = _unit(prototypes[:, None, :] + template_noise * _unit_noise(
        text_rng, (n_classes, n_templates, dim)))
    centres, gap = _image_centres(prototypes, centre_rng, modality_gap, misalignment, class_offset)
    train_raw, train_targets = _sample(centres, train_per_class, noise, train_rng)
    test_features, test_targets = _sample(centres, test_per_class, noise, test_rng, unit=True)
    train_flip = _add_unit_noise_and_normalise(train_raw, view_noise, train_rng)
    names = tuple(f"class {c}" for c in range(n_classes))
    return SyntheticFeatures(
        train_features=_unit(train_raw), train_features_flip=train_flip,
        train_targets=train_targets, test_features=test_features, test_targets=test_targets,
        text_features=ClassTextFeatures.from_per_template(torch.from_numpy(per_template), names),
        class_names=names, fingerprint=make_fingerprint("synthetic", params),
        null_image=gap.astype(np.float32))


@functools.lru_cache(maxsize=1)
def _generated(items: tuple) -> SyntheticFeatures:
    return make_synthetic(**dict(items))


def synthetic_views(split: str, **params) -> list:
    """The feature views of a split (``train``: original and second view; ``test``),
    regenerated from the parameters; one generation serves both splits."""
    options = set(inspect.signature(make_synthetic).parameters)
    data = _generated(tuple(sorted((k, v) for k, v in params.items() if k in options)))
    if split == "train":
        return [data.train_features, data.train_features_flip]
    return [data.test_features]


def load_synthetic(root=None, **params) -> SyntheticFeatures:
    """Registry entry: :func:`make_synthetic` (``root`` is ignored, nothing is read)."""
    return make_synthetic(**params)


load_synthetic.options = tuple(inspect.signature(make_synthetic).parameters)


def _validate(params: dict) -> None:
    for key in ("n_classes", "n_templates", "train_per_class", "test_per_class"):
        if not _is_int(params[key]) or params[key] < 1:
            raise UserError(f"synthetic: {key} must be a positive integer, got {params[key]!r}")
    if not _is_int(params["dim"]) or params["dim"] < 2:
        raise UserError(f"synthetic: dim must be an integer >= 2, got {params['dim']!r}")
    if not _is_int(params["seed"]) or params["seed"] < 0:
        raise UserError(f"synthetic: seed must be a non-negative integer, got {params['seed']!r}")
    for key in ("modality_gap", "class_offset", "noise", "template_noise", "view_noise"):
        if not isinstance(params[key], (int, float)) or params[key] < 0:
            raise UserError(f"synthetic: {key} must be a number >= 0, got {params[key]!r}")
    if not isinstance(params["misalignment"], (int, float)) or not 0 <= params["misalignment"] < 1:
        raise UserError(f"synthetic: misalignment must be in [0, 1), "
                        f"got {params['misalignment']!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (computed in float64 chunks), as float32."""
    x = np.asarray(x)
    if x.ndim == 2 and len(x) > CHUNK_ROWS:
        out = np.empty(x.shape, dtype=np.float32)
        for start in range(0, len(x), CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = _unit(x[start:start + CHUNK_ROWS])
        return out
    x = x.astype(np.float64, copy=False)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _unit_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Gaussian vectors with expected squared norm 1 along the last axis."""
    return rng.standard_normal(shape) / np.sqrt(shape[-1])


def _gap_direction(prototypes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A unit vector orthogonal to the prototypes' span (random if they span everything)."""
    direction = rng.standard_normal(prototypes.shape[1])
    basis, _ = np.linalg.qr(prototypes.T.astype(np.float64))
    residual = direction - basis @ (basis.T @ direction)
    if np.linalg.norm(residual) > 1e-6 * np.linalg.norm(direction):
        direction = residual
    return direction / np.linalg.norm(direction)


def _confusers(n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """confuser[c]: the class after c in a random cycle (c itself when there is one class)."""
    cycle = rng.permutation(n_classes)
    confuser = np.empty(n_classes, dtype=np.int64)
    confuser[cycle] = np.roll(cycle, -1)
    return confuser


def _image_centres(prototypes, rng, modality_gap, misalignment, class_offset) -> np.ndarray:
    n_classes, dim = prototypes.shape
    protos = prototypes.astype(np.float64)
    gap = _gap_direction(protos, rng)
    pulled = protos + misalignment * (protos[_confusers(n_classes, rng)] - protos)
    offsets = class_offset * _unit(rng.standard_normal((n_classes, dim))).astype(np.float64)
    return pulled + offsets + modality_gap * gap[None, :], gap


# Rows generated per chunk: the float64 temporaries of a full-size stream (50 000 x 512)
# would otherwise cost several hundred MB each. Generator draws are sequential, so chunks
# give exactly the numbers of one big draw.
CHUNK_ROWS = 4096


def _sample(centres: np.ndarray, per_class: int, noise: float, rng: np.random.Generator,
            unit: bool = False):
    """(centre + noise · unit noise, targets): raw float64 rows, or float32 unit rows."""
    targets = np.repeat(np.arange(len(centres), dtype=np.int64), per_class)
    out = np.empty((len(targets), centres.shape[1]), dtype=np.float32 if unit else np.float64)
    for start in range(0, len(targets), CHUNK_ROWS):
        rows = targets[start:start + CHUNK_ROWS]
        raw = centres[rows] + noise * _unit_noise(rng, (len(rows), centres.shape[1]))
        out[start:start + len(rows)] = _unit(raw) if unit else raw
    return out, targets


def _add_unit_noise_and_normalise(raw: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """_unit(raw + scale · unit noise), float32, chunk by chunk."""
    out = np.empty(raw.shape, dtype=np.float32)
    for start in range(0, len(raw), CHUNK_ROWS):
        chunk = raw[start:start + CHUNK_ROWS]
        out[start:start + len(chunk)] = _unit(chunk + scale * _unit_noise(rng, chunk.shape))
    return out
