"""A frozen image encoder held beside a model, outside its module tree.

The CLIP image encoder is frozen and large: it must never be in a model's
``state_dict()`` (checkpoints would carry the backbone) nor in ``parameters()`` (an
optimizer would see it). :class:`FrozenImageEncoderMixin` keeps it as a plain attribute
and makes device moves follow the model: after ``model.to(device)``, ``.cuda()`` or
``.cpu()`` the encoder sits on the device of the model's ``class_features`` buffer, and
``copy.deepcopy(model)`` (LwF's and GDumb's model copies) shares the encoder instead of
copying it: it never trains, so every copy can use the same one. Dtype
conversions (``model.half()``, ``model.to(torch.float64)``) do not reach it: it keeps the
precision it was loaded with, which its ``identity`` (the feature cache key) names; it
casts images to that precision itself and returns float32 features.
"""
from __future__ import annotations

import copy
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

    def __deepcopy__(self, memo):
        # Copy everything as deepcopy would, except the frozen encoder: pre-seeding the memo
        # with it makes every reference to it in the copy point at the same object.
        encoder = self.__dict__.get("image_encoder")
        if encoder is not None:
            memo[id(encoder)] = encoder
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new
