"""Prompt templates and the per-class text statistics CLAP needs.

Each class's prompts are encoded once per backbone and template set: results are kept
in memory for the process and, when a directory is given, on disk, so a stream (and a
rerun of it) never re-encodes a class it has already seen.
"""
from __future__ import annotations

import hashlib
import os
import json
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from clap4cl.encoders.text_features import ClassTextFeatures

Template = Union[str, Callable[[str], str]]

_MEMORY: Dict[Tuple[str, str, str], torch.Tensor] = {}


def render(template: Template, class_name: str) -> str:
    """Fill a template: a format string with ``{}`` or a callable (open_clip style)."""
    return template(class_name) if callable(template) else template.format(class_name)


def templates_id(templates: Sequence[Template]) -> str:
    """A stable identifier of a template set (independent of how it is written)."""
    rendered = [render(t, "{}") for t in templates]
    return hashlib.sha256(json.dumps(rendered).encode()).hexdigest()[:16]


def class_text_features(backbone, class_names: Sequence[str], templates: Sequence[Template],
                        cache_dir: Optional[Union[str, Path]] = None) -> ClassTextFeatures:
    """Text statistics (per-template embeddings, mean, normalised mean, variance) per class.

    Args:
        backbone: a :class:`~clap4cl.encoders.backbones.FrozenCLIP` (``encode_texts`` and ``identity``).
        class_names: the classes, in the order the rows should have.
        templates: prompt templates (format strings with ``{}`` or callables).
        cache_dir: optional directory where encoded prompts persist across processes.
    """
    if not templates:
        raise ValueError("at least one prompt template is needed")
    tid = templates_id(templates)
    disk = _DiskTextCache(cache_dir, backbone.identity, tid) if cache_dir else None
    missing = [n for n in dict.fromkeys(class_names)
               if (backbone.identity, tid, n) not in _MEMORY]
    if disk is not None:
        for name, emb in disk.load(missing).items():
            _MEMORY[(backbone.identity, tid, name)] = emb
        missing = [n for n in missing if (backbone.identity, tid, n) not in _MEMORY]
    if missing:
        prompts = [render(t, name) for name in missing for t in templates]
        encoded = backbone.encode_texts(prompts).reshape(len(missing), len(templates), -1)
        for name, emb in zip(missing, encoded):
            _MEMORY[(backbone.identity, tid, name)] = emb.cpu()
        if disk is not None:
            disk.save({n: _MEMORY[(backbone.identity, tid, n)] for n in missing})
    stacked = torch.stack([_MEMORY[(backbone.identity, tid, n)] for n in class_names])
    return ClassTextFeatures.from_per_template(stacked, class_names)


def clear_memory_cache() -> None:
    """Forget the in-process prompt embeddings (tests use this)."""
    _MEMORY.clear()


class _DiskTextCache:
    """One small ``.pt`` file of per-class prompt embeddings per backbone and template set."""

    def __init__(self, root, identity: str, tid: str):
        key = hashlib.sha256(f"{identity}|{tid}".encode()).hexdigest()[:24]
        self.path = Path(root) / "text" / f"{key}.pt"

    def load(self, names) -> Dict[str, torch.Tensor]:
        stored = self.load_all()
        return {n: stored[n] for n in names if n in stored}

    def save(self, new: Dict[str, torch.Tensor]) -> None:
        stored = self.load_all()
        stored.update(new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save(stored, tmp)
        tmp.replace(self.path)

    def load_all(self) -> Dict[str, torch.Tensor]:
        if not self.path.is_file():
            return {}
        try:
            return dict(torch.load(self.path, map_location="cpu", weights_only=True))
        except Exception:  # a damaged file is simply recomputed
            return {}
