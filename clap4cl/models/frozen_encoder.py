"""A frozen image encoder held beside a model, outside its module tree.

The CLIP image encoder is frozen and large: it must never be in a model's
``state_dict()`` (checkpoints would carry the backbone) nor in ``parameters()`` (an
optimizer would see it). :class:`FrozenImageEncoderMixin` keeps it as a plain attribute
and makes device moves follow the model: after ``model.to(device)``, ``.cuda()`` or
``.cpu()`` the encoder sits on the device of the model's ``class_features`` buffer. Dtype
conversions (``model.half()``, ``model.to(torch.float64)``) do not reach it: it keeps the
precision it was loaded with, which its ``identity`` (the feature cache key) names; it
casts images to that precision itself and returns float32 features.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class FrozenImageEncoderMixin:
    """Mixin for ``nn.Module`` models whose inputs may be images (B, 3, H, W) or features (B, D).

    The model must have a ``class_features`` buffer (its device is the model's device).
    """

    def set_image_encoder(self, encoder: Optional[nn.Module]) -> None:
        object.__setattr__(self, "image_encoder", encoder)   # not a submodule

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, D) of images (B, 3, H, W) through the frozen encoder; features as given."""
        if x.dim() != 4:
            return x
        if self.image_encoder is None:
            raise ValueError("image inputs need an image_encoder; pass features (B, D) otherwise")
        with torch.no_grad():
            return self.image_encoder.encode_images(x)

    def _apply(self, fn, *args, **kwargs):
        # nn.Module.to / cuda / cpu / half all end here: move the encoder to the new device.
        module = super()._apply(fn, *args, **kwargs)
        if self.image_encoder is not None:
            self.image_encoder.to(self.class_features.device)
        return module
