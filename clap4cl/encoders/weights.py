"""Where a backbone's weights come from: an open_clip tag, a checkpoint file, the package's
own weights or none, and the identity (content hash) each gives the feature cache.

An open_clip tag that is not cached locally is probed once with a short timeout, so an
offline machine fails in seconds with one line instead of minutes of hub retries.
"""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import open_clip
import torch

from clap4cl.errors import UserError

_SHA_CACHE: dict = {}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


# Weights shipped with the package, by (architecture, tag): an fp16 state dict of part of
# the model, loaded over the seeded random initialisation (the rest stays random).
# ``digits``: the image tower trained without labels on the digits training images, the
# text tower untrained; see scripts/train_digits_clip.py for what it is and is not.
PACKAGED_WEIGHTS = {("tiny-vit", "digits"): Path(__file__).with_name("weights") / "tiny-vit-digits.pt"}


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.endswith(_CHECKPOINT_SUFFIXES)


def resolve_weights(arch: str, pretrained: Optional[str]):
    """Return (weights identity, value to pass to open_clip)."""
    if pretrained is None:
        return "random", None
    packaged = PACKAGED_WEIGHTS.get((arch, pretrained))
    if packaged is not None:
        return f"package:{pretrained}:{file_sha256(packaged)}", None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"file:{file_sha256(path)}", str(path)
    if _looks_like_path(pretrained):
        raise UserError(f"checkpoint file {pretrained!r} does not exist: give the path of a saved "
                        f"open_clip state dict, an open_clip tag, or null for random weights")
    tags = open_clip.list_pretrained_tags_by_model(arch) + [
        tag for (name, tag) in PACKAGED_WEIGHTS if name == arch]
    if pretrained not in tags:
        valid = ", ".join(tags) if tags else "none (use a checkpoint path or null)"
        raise UserError(f"unknown pretrained tag {pretrained!r} for {arch}: valid tags are {valid}")
    return f"tag:{pretrained}", pretrained


# Seconds to wait for the weights' host before treating the machine as offline.
PROBE_SECONDS = 3.0


def ensure_tag_available(arch: str, tag: str, cache_dir: Optional[str] = None) -> None:
    """Make loading the open_clip tag ``tag`` fail in seconds with one line when it cannot
    succeed: weights in the local cache load as they are (the Hugging Face hub is put
    offline when its host does not answer, instead of retrying for a minute); weights
    not cached need their host, probed once with a short timeout."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    source, host, cached = _tag_source(cfg, cache_dir)
    hub_offline = _hub_offline()
    reachable = (not hub_offline or source != "hf") and _host_reachable(host)
    if cached:
        if source == "hf" and not reachable:
            _set_hub_offline()
        return
    if not reachable:
        why = "the Hugging Face hub is offline (HF_HUB_OFFLINE)" if source == "hf" and hub_offline \
            else f"{host} cannot be reached"
        raise UserError(f"backbone.pretrained = {tag!r}: the {arch} weights are not in the local "
                        f"cache and {why}: connect to the internet once to download them, or give "
                        f"a local checkpoint path")


def _tag_source(cfg, cache_dir):
    """("hf" or "url", host, whether the file is already cached) of a pretrained config,
    following open_clip's choice (the hub first when it has the weights)."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache
        from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

        model_id, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        names = [*_get_safe_alternatives(filename), filename]
        cached = any(isinstance(try_to_load_from_cache(model_id, name, cache_dir=cache_dir), str)
                     for name in names)
        return "hf", urlparse(constants.ENDPOINT).hostname, cached
    url = cfg.get("url", "")
    target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    return "url", urlparse(url).hostname, target.is_file()


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _set_hub_offline() -> None:
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def _host_reachable(host: Optional[str]) -> bool:
    if not host:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the download try
    try:
        socket.create_connection((host, 443), timeout=PROBE_SECONDS).close()
        return True
    except OSError:
        return False


def load_partial_state(model, path: Path) -> None:
    """Load a packaged fp16 state dict over part of ``model``; every key must exist."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise UserError(f"packaged weights {path.name} do not fit this model: unknown keys {unknown[:3]}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content (memoised by path, size and modification time)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]
