"""What a run reads: the backbone, the benchmark, class text and the external novel data."""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from clap4cl.encoders.prompts import class_text_features
from clap4cl.errors import UserError
from clap4cl.features.cache import FeatureCache
from clap4cl.paths import default_cache_dir
from clap4cl.runner.checks import check_writable_dir


SYNTHETIC_LOGIT_SCALE = 100.0


def feature_only(config) -> bool:
    from scenarios.registry import is_feature_dataset

    return is_feature_dataset(config["dataset"]["name"])


def check_device(config: Dict[str, Any]) -> None:
    """UserError unless torch can use ``backbone.device`` on this machine."""
    device = config["backbone"]["device"]
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"backbone.device = {device!r} is not a torch device: use cpu, cuda, "
                        f"cuda:<index> or mps") from exc
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: torch.backends.mps.is_available(),
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}
    if not available.get(parsed.type, lambda: False)():
        raise UserError(f"backbone.device = {device!r} but torch sees no {parsed.type} device on "
                        f"this machine: use backbone.device=cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"backbone.device = {device!r} but torch sees {torch.cuda.device_count()} "
                        f"CUDA device(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")


def cache_dir(config: Dict[str, Any]) -> Path:
    """The cache root of a config: ``cache.dir`` or the default (``$CLAP4CL_CACHE``)."""
    return Path(config["cache"]["dir"] or default_cache_dir())


def _cache_label(config) -> str:
    return "cache.dir" if config["cache"]["dir"] else "cache.dir (default: $CLAP4CL_CACHE or ~/.cache/clap4cl)"


def check_cache_dir(config: Dict[str, Any]) -> None:
    """UserError if the cache root cannot be a directory (a file, under /proc, below a file,
    or missing and not creatable); an existing read-only cache passes (it may hold every
    entry), :func:`cache_writes` names it if something must be written."""
    check_writable_dir(cache_dir(config), _cache_label(config), existing_may_be_read_only=True)


@contextlib.contextmanager
def cache_writes(config: Dict[str, Any]):
    """Turn a refused write into the cache (read-only directory or file system) into one
    line naming the cache."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        root = Path(cache_dir(config)).absolute()
        where = Path(exc.filename).absolute() if exc.filename else root
        if where != root and root not in where.parents:
            raise UserError(f"cannot write {str(where)!r} ({exc.strerror}): make it writable or "
                            f"choose another directory (dataset.root, --output)") from exc
        raise UserError(f"{_cache_label(config)} {str(root)!r} is read-only, but features or "
                        f"prompts must be written ({str(where)!r}: {exc.strerror}): make it "
                        f"writable, or set cache.dir to a writable directory") from exc


def load_backbone(config: Dict[str, Any]):
    """The frozen CLIP of the config, or None for feature-only streams (synthetic, two_modality)."""
    from clap4cl.encoders.backbones import load_clip

    if feature_only(config):
        return None
    bb = config["backbone"]
    return load_clip(bb["arch"], bb["pretrained"], precision=bb["precision"], device=bb["device"])


def build_benchmark(config: Dict[str, Any], backbone, cache: FeatureCache, progress: bool):
    """The feature-level class-incremental benchmark the config describes."""
    import scenarios

    ds = config["dataset"]
    with cache_writes(config):
        return scenarios.class_incremental(
            ds["name"], n_experiences=ds["n_experiences"], run=config["run"], root=ds["root"],
            class_order=ds["class_order"], first_experience_classes=ds["first_experience_classes"],
            level="features", backbone=backbone, cache=cache, download=ds["download"],
            progress=progress, batch_size=config["cache"]["batch_size"],
            num_workers=config["cache"]["num_workers"], on_bad_image=ds["on_bad_image"],
            cache_verify=config["cache"]["verify"], templates=ds["templates"], **ds["options"])


def stream_text_features(config, benchmark, backbone, cache: FeatureCache):
    """Class text statistics of every class of the stream, in label order (None for
    streams without class text, such as two_modality)."""
    info = benchmark.info
    if info.input_dims is not None:
        return None
    if info.text_features is not None:
        return info.text_features
    templates = config["dataset"]["templates"] or info.templates
    with cache_writes(config):
        return class_text_features(backbone, list(info.class_names), templates,
                                   cache_dir=cache.root)


def null_image_embedding(backbone, benchmark) -> Optional[torch.Tensor]:
    """The embedding that stands for "no image" when a modality subset removes it: a
    mid-grey image through the frozen encoder (data-independent, no class prior), or the
    synthetic stream's content-free gap direction."""
    if benchmark.info.null_image is not None:
        return benchmark.info.null_image
    if backbone is None:
        return None
    from PIL import Image

    grey = Image.new("RGB", (224, 224), (128, 128, 128))
    with torch.no_grad():
        return backbone.encode_images(backbone.preprocess_test(grey)[None])[0].float()


def check_novelty_dataset(config) -> None:
    """Fail before any extraction if ``eval.novelty_dataset`` cannot pair with the stream."""
    import scenarios

    name = config["eval"]["novelty_dataset"]
    if name is None:
        return
    novel_is_synthetic = scenarios.canonical_name(name) == "synthetic"
    if novel_is_synthetic != (scenarios.canonical_name(config["dataset"]["name"]) == "synthetic"):
        raise UserError(f"eval.novelty_dataset = {name!r} cannot be compared with "
                        f"dataset.name = {config['dataset']['name']!r}: synthetic features only "
                        f"pair with synthetic features, images only with images")


def load_external_ood(config, backbone, cache: FeatureCache, progress: bool):
    """The test split of ``eval.novelty_dataset`` at feature level, or None."""
    name = config["eval"]["novelty_dataset"]
    if name is None:
        return None
    import scenarios

    with cache_writes(config):
        external = scenarios.class_incremental(
            name, n_experiences=1, root=config["eval"]["novelty_root"], level="features",
            backbone=backbone, cache=cache, progress=progress,
            batch_size=config["cache"]["batch_size"], num_workers=config["cache"]["num_workers"],
            on_bad_image=config["dataset"]["on_bad_image"],
            cache_verify=config["cache"]["verify"])
    return external.test_stream[0].dataset.eval()
