"""Frozen open_clip backbones.

``load_clip`` builds any open_clip architecture with a pretrained tag (downloaded by
open_clip when online), a local checkpoint file, or no weights (random initialisation,
seeded so that two loads give the same model). The package registers a few tiny
architectures (``tiny-vit``, ``tiny-rn``, ``small-vit``) that run in seconds on a CPU
for offline use and tests.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import open_clip
import torch
from torch import nn
from torchvision import transforms as T

from clap4cl.errors import UserError
from clap4cl.encoders.choices import PRECISIONS
from clap4cl.encoders.weights import (PACKAGED_WEIGHTS, ensure_tag_available, load_partial_state,
                                     resolve_weights)

TINY_CONFIG_DIR = Path(__file__).with_name("model_configs")
TINY_ARCHITECTURES = tuple(sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json")))


def register_tiny_architectures() -> None:
    """Make the package's tiny configurations known to open_clip (idempotent)."""
    if not all(name in open_clip.list_models() for name in TINY_ARCHITECTURES):
        open_clip.add_model_config(TINY_CONFIG_DIR)


register_tiny_architectures()


class FrozenCLIP(nn.Module):
    """A frozen open_clip model in eval mode with the pieces continual learning needs.

    Attributes:
        arch: open_clip architecture name.
        pretrained: the weights it was loaded with (tag, file path, or None).
        identity: a string that changes whenever the encoders' function changes
            (architecture, weights, precision); the feature cache keys on it.
        embed_dim: joint embedding dimension D.
        logit_scale: exp(logit_scale) of the model (100 for OpenAI CLIP).
        preprocess_test: PIL image -> tensor (resize, centre crop, normalise).
        preprocess_train: ``preprocess_test`` plus a random horizontal flip, as in the
            reference implementation.
        image_size: side of the square input image.
    """

    def __init__(self, model: nn.Module, *, arch: str, pretrained: Optional[str],
                 weights_id: str, precision: str, preprocess_test: T.Compose):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.arch = arch
        self.pretrained = pretrained
        self.precision = precision
        self.identity = f"{arch}|{weights_id}|{precision}"
        self.preprocess_test = preprocess_test
        self.preprocess_train = _with_horizontal_flip(preprocess_test)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.embed_dim = int(model.text_projection.shape[1]) if _has_text_projection(model) \
            else int(model.visual.output_dim)
        self.logit_scale = float(model.logit_scale.detach().exp().item())
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def train(self, mode: bool = True):
        # Frozen backbone: always stays in eval mode (no dropout, fixed norms).
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the image encoder's weights (inputs are cast to it)."""
        first_layer = next(m for m in self.model.visual.modules()
                           if isinstance(m, (nn.Conv2d, nn.Linear)))
        return first_layer.weight.dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) float32 L2-normalised features."""
        x = images.to(device=self.device, dtype=self.dtype)
        feats = self.model.encode_image(x).float()
        return nn.functional.normalize(feats, dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """A list of strings -> (N, D) float32 L2-normalised text features."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens).float())
        return nn.functional.normalize(torch.cat(out), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_images(images)


def load_clip(arch: str, pretrained: Optional[str] = None, *, precision: str = "fp32",
              device: str = "cpu", cache_dir: Optional[str] = None, seed: int = 0) -> FrozenCLIP:
    """Load a frozen open_clip model.

    Args:
        arch: any open_clip architecture (``open_clip.list_models()``) or one of the
            package's tiny ones (``tiny-vit``, ``tiny-rn``, ``small-vit``).
        pretrained: an open_clip pretrained tag such as ``"openai"`` (downloaded by
            open_clip when online), a path to a local checkpoint file, a tag of weights
            shipped with the package (``"digits"`` for ``tiny-vit``), or None for
            random weights.
        precision: ``fp32``, ``fp16`` or ``bf16`` for the encoders; features are
            always returned in float32.
        device: torch device for the encoders.
        cache_dir: where open_clip stores downloaded weights.
        seed: seed of the random initialisation when ``pretrained`` is None, and of
            the parts a packaged partial state dict leaves untouched.
    """
    register_tiny_architectures()
    _check_arch(arch)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    weights_id, source = resolve_weights(arch, pretrained)
    packaged = PACKAGED_WEIGHTS.get((arch, pretrained))
    if pretrained is None or packaged is not None:
        random_id = f"random:seed{seed}:open_clip{open_clip.__version__}:torch{torch.__version__}"
        weights_id = random_id if packaged is None else f"{weights_id}+{random_id}"
    if weights_id.startswith("tag:"):
        ensure_tag_available(arch, pretrained, cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _create_model(arch, source, precision, device, cache_dir)
    if packaged is not None:
        load_partial_state(model, packaged)
    preprocess_test = _test_transform(model)
    return FrozenCLIP(model, arch=arch, pretrained=pretrained, weights_id=weights_id,
                      precision=precision, preprocess_test=preprocess_test)


def _check_arch(arch: str) -> None:
    known = open_clip.list_models()
    if arch not in known:
        tiny = ", ".join(TINY_ARCHITECTURES)
        raise UserError(f"unknown architecture {arch!r}: use an open_clip name such as ViT-B-16 "
                        f"or ViT-B-32, or an offline tiny one ({tiny}); "
                        f"all {len(known)} names: python -c 'import open_clip; print(open_clip.list_models())'")


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "Model initialized randomly" warning: random weights are asked for.

    open_clip logs through the root logger (``logging.warning``), so there is no logger of
    its own to quieten; this filter is attached to the root logger only while the model
    is created and lets every other record through. The root logger's level is untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "initialized randomly" in record.getMessage()
                    and f"{os.sep}open_clip{os.sep}" in record.pathname)


def _create_model(arch, source, precision, device, cache_dir):
    notice = _RandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    is_file = source is not None and Path(source).is_file()
    try:
        with warnings.catch_warnings():
            if is_file:  # torch.load's notes on a file that is no checkpoint: the error says it
                warnings.simplefilter("ignore")
            return open_clip.create_model(arch, pretrained=source, precision=precision,
                                          device=device, cache_dir=cache_dir)
    except Exception as exc:
        if is_file:
            raise UserError(f"backbone.pretrained {source!r} is not an open_clip checkpoint of {arch} "
                            f"({type(exc).__name__}): give a state dict saved from this "
                            f"architecture, an open_clip tag, or null for random weights") from exc
        if source is not None and isinstance(exc, (RuntimeError, OSError, ValueError)):
            raise UserError(f"could not download {arch} weights {source!r} ({type(exc).__name__}): "
                            f"connect to the internet once, or pass a local checkpoint path") from exc
        raise
    finally:
        root.removeFilter(notice)


def _test_transform(model):
    """open_clip's evaluation preprocessing of ``model`` (resize, centre crop, normalise)."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    return open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                     interpolation=cfg["interpolation"],
                                     resize_mode=cfg["resize_mode"])


def _with_horizontal_flip(test: T.Compose) -> T.Compose:
    """The test pipeline with a random horizontal flip just before tensor conversion.

    The flip comes after the deterministic resize and centre crop, as in the reference,
    so flipping the final tensor is exactly the same augmentation (the feature cache
    relies on this).
    """
    steps = list(test.transforms)
    to_tensor = next(i for i, s in enumerate(steps) if "ToTensor" in type(s).__name__)
    return T.Compose(steps[:to_tensor] + [T.RandomHorizontalFlip()] + steps[to_tensor:])


def _has_text_projection(model) -> bool:
    proj = getattr(model, "text_projection", None)
    return isinstance(proj, (torch.Tensor, nn.Parameter)) and proj.dim() == 2
