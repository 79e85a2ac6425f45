"""Value checks of a resolved config that need no model, no data and no torch.

``runner.config.validate`` calls :func:`check_values` after the type checks, so every
range a run would otherwise only hit deep inside training (a seed numpy refuses, VGA
heads that do not divide the width, an empty replay memory, a template without ``{}``)
fails at start-up with one line naming the key, the value and what to do. Checks that
need the backbone width read the open_clip JSON configuration of the architecture; no
model is built. :func:`check_writable_dir` checks the run and cache directories before
anything is created.
"""
from __future__ import annotations

import json
import math
import os
import re
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from clap4cl.errors import ConfigError, UserError
from clap4cl.values import as_float

# numpy's RandomState / torch's manual_seed accept seeds in 0 .. 2**32 - 1; the class
# order is RandomState(1993 + run).
SEED_MAX = 2 ** 32 - 1
CLASS_ORDER_OFFSET = 1993
# Methods that train with a replay memory.
REPLAYING_METHODS = ("clap", "clap_deterministic", "clip_adapter", "coop", "clap_coop")
VGA_METHODS = ("clap", "clap_deterministic")
# Device types a run can use (an optional ":<index>" may follow).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_DEVICE = re.compile(rf"({'|'.join(DEVICE_TYPES)})(:\d+)?")
SYNTHETIC_DEFAULT_DIM = 64

def walk(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested config (list entries as ``key[i]``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def check_finite(config: Dict[str, Any]) -> None:
    """No NaN or infinity anywhere (typed keys, plugin options, dataset options)."""
    for key, value in walk(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} is not a finite number: give a finite value")


def check_values(config: Dict[str, Any]) -> None:
    """Every cheap range and consistency check of a type-checked config."""
    check_finite(config)
    _check_seeds(config)
    _check_device(config["backbone"]["device"])
    _check_fractions(config)
    _check_templates(config["dataset"]["templates"])
    _check_dataset_options(config["dataset"]["options"])
    _check_memory(config)
    _check_width(config)


def _check_seeds(config) -> None:
    seed = config["seed"]
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed = {seed} is out of range: numpy and torch take seeds from 0 to "
                          f"2**32 - 1 = {SEED_MAX}")
    limit = SEED_MAX - CLASS_ORDER_OFFSET
    if config["run"] > limit:
        raise ConfigError(f"run = {config['run']} is out of range: the class order is seeded with "
                          f"{CLASS_ORDER_OFFSET} + run, which must not exceed 2**32 - 1; use a run "
                          f"index up to {limit}")


def _check_device(device: str) -> None:
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"backbone.device = {device!r} is not a device: use cpu, cuda, cuda:<index> "
                          f"or mps")


def _check_fractions(config) -> None:
    dropout = config["clap"]["vga_dropout"]
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"clap.vga_dropout = {dropout} must be in [0, 1) (a dropout probability; "
                          f"1 would drop everything): the reference uses 0.1")
    for section, reference in (("clap", "0.3"), ("coop", "0")):
        warmup = config.get(section, {}).get("warmup_fraction")
        if warmup is not None and not 0.0 <= warmup <= 1.0:
            raise ConfigError(f"{section}.warmup_fraction = {warmup} must be in [0, 1] (the "
                              f"fraction of the main phase's steps spent warming up): the "
                              f"reference uses {reference}")


def _check_templates(templates) -> None:
    if templates is None:
        return
    if not templates:
        raise ConfigError("dataset.templates is an empty list: give templates such as "
                          "['a photo of a {}.'] or null for the dataset's own")
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise ConfigError(f"dataset.templates[{i}] = {template!r} is not a string: write each "
                              f"template as text with one {{}} for the class name")
        try:
            ok = template.count("{}") == 1 and template.format("x") is not None
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"dataset.templates[{i}] = {template!r} must hold exactly one {{}} "
                              f"(where the class name goes) and no other braces, e.g. "
                              f"'a photo of a {{}}.'")


def _check_dataset_options(options) -> None:
    if "test_fraction" in options:
        value = options["test_fraction"]
        number = as_float(value)
        if number is None or not 0.0 < number < 1.0:
            raise ConfigError(f"dataset.options.test_fraction = {value!r} must be a number strictly "
                              f"between 0 and 1 (the share of each class held out for testing), "
                              f"e.g. 0.2")
        options["test_fraction"] = number


def _check_memory(config) -> None:
    method, memory = config["method"], config["memory"]
    if method not in REPLAYING_METHODS:
        return
    key = "memory.size" if memory["policy"] == "fixed_total" else "memory.per_class"
    if memory[key.split(".")[1]] == 0:
        raise ConfigError(f"{key} = 0 leaves method {method} no exemplars to replay (policy "
                          f"{memory['policy']}): give a positive budget (defaults: memory.size "
                          f"2000, memory.per_class 20), or use method zeroshot for no training")


def _check_width(config) -> None:
    method = config["method"]
    uses_vga = method in VGA_METHODS and config["clap"]["vga"]
    key = "coop.vga_heads" if method == "clap_coop" else "clap.vga_heads"
    heads = config["coop"].get("vga_heads") if method == "clap_coop" else config["clap"]["vga_heads"]
    if method == "clap_coop" and config["clap"]["vga"] and heads is not None:
        uses_vga = True  # null: D / 64 heads, always a divisor
    if not uses_vga and method != "clip_adapter":
        return
    width, source = embedding_width(config)
    if width is None:
        return  # an unknown architecture: load_clip names it
    if uses_vga and width % heads:
        divisors = [d for d in range(1, min(width, 16) + 1) if width % d == 0]
        raise ConfigError(f"{key} = {heads} does not divide the embedding width {width} "
                          f"of {source}: use one of {', '.join(map(str, divisors))}")
    reduction = config["clip_adapter"]["reduction"]
    if method == "clip_adapter" and reduction > width:
        raise ConfigError(f"clip_adapter.reduction = {reduction} is larger than the embedding width "
                          f"{width} of {source} (the bottleneck would have no units): use at most "
                          f"{width}, e.g. 4")


def embedding_width(config) -> Tuple[Optional[int], str]:
    """(width D of the features the heads see, what it comes from), without building a
    model: the synthetic stream's ``dim`` option, or ``embed_dim`` of the architecture's
    open_clip JSON configuration (None if the architecture is unknown)."""
    from scenarios.registry import canonical_name, is_feature_dataset

    name = config["dataset"]["name"]
    if is_feature_dataset(name):
        if canonical_name(name) != "synthetic":
            return None, name
        dim = config["dataset"]["options"].get("dim", SYNTHETIC_DEFAULT_DIM)
        return (dim if isinstance(dim, int) else None), "the synthetic stream (dataset.options.dim)"
    arch = config["backbone"]["arch"]
    path = model_config_path(arch)
    if path is None:
        return None, arch
    try:
        width = json.loads(path.read_text())["embed_dim"]
    except (OSError, ValueError, KeyError):
        return None, arch
    return int(width), f"backbone.arch {arch}"


def model_config_path(arch: str) -> Optional[Path]:
    """The open_clip JSON configuration of ``arch`` (the package's tiny ones first), found
    without importing open_clip (which imports torch)."""
    own = Path(str(resources.files("clap4cl.encoders").joinpath("model_configs", f"{arch}.json")))
    if own.is_file():
        return own
    spec = find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "model_configs" / f"{arch}.json"
        if path.is_file():
            return path
    return None


# Kernel file systems: writes there fail or change the system, never hold a run.
SYSTEM_TREES = (Path("/proc"), Path("/sys"))


def check_writable_dir(path: Path, what: str, *, existing_may_be_read_only: bool = False) -> None:
    """UserError unless ``path`` is (or can be created as) a writable directory: not a
    file, not below a file, not in a kernel file system (/proc, /sys). Nothing is
    created. With ``existing_may_be_read_only`` an existing read-only directory passes (a
    complete feature cache is only read)."""
    resolved = Path(os.path.abspath(Path(path).expanduser()))
    for tree in SYSTEM_TREES:
        if resolved == tree or tree in resolved.parents:
            raise UserError(f"{what} {str(path)!r} is under {tree}, a kernel file system that "
                            f"cannot hold it: choose a directory elsewhere")
    if resolved.exists():
        if not resolved.is_dir():
            raise UserError(f"{what} {str(path)!r} is a file, not a directory: choose a directory "
                            f"(it is created if missing)")
        if not existing_may_be_read_only and not os.access(resolved, os.W_OK | os.X_OK):
            raise UserError(f"{what} {str(path)!r} is not writable: fix its permissions or choose "
                            f"another directory")
        return
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what} {str(path)!r} cannot be created: {str(ancestor)!r} is a file, not "
                        f"a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(path)!r} cannot be created: {str(ancestor)!r} is not "
                        f"writable; fix its permissions or choose another directory")
