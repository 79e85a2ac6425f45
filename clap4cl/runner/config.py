"""Experiment configuration: YAML files merged over documented defaults.

``clap4cl/runner/defaults.yaml`` lists every key with its default and a comment. A user
config and ``--set key=value`` overrides are merged on top; unknown keys, wrong types
and invalid choices raise :class:`~clap4cl.errors.ConfigError` with one line.

One file: merging, ``--set`` and the type checks all walk the same defaults tree; value
checks that need no tree live in ``runner.checks``.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

from clap4cl.encoders.choices import PRECISIONS
from clap4cl.errors import ConfigError
from clap4cl.evaluation.choices import METRIC_PAIRS
from clap4cl.models.choices import CONTEXTS, FILLS, FUSIONS, LANGUAGE_INIT_CLASSES, TEXT_PASSES
from clap4cl.runner.assemble import EVAL_CONTEXTS, METHODS
from clap4cl.runner.checks import check_values
from clap4cl.values import as_float
from clap4cl.runner.threads import validate_setting
from scenarios.choices import BAD_IMAGE_POLICIES, CACHE_VERIFY
from scenarios.registry import available_datasets, normalise_name
from strategies.choices import MEMORY_POLICIES, SELECTORS
from strategies.plugins.registry import (PLUGINS, build_plugins, check_plugin_names,
                                         normalise_options)

# Keys with their own check (not the default's type): "auto" or a positive integer.
OWN_CHECK = ("threads",)

# Types of keys whose default is null.
NULLABLE = {
    "seed": (int,),
    "backbone.pretrained": (str,),
    "dataset.root": (str,),
    "dataset.class_order": (list,),
    "dataset.first_experience_classes": (int,),
    "dataset.templates": (list,),
    "cache.dir": (str,),
    "eval.novelty_dataset": (str,),
    "eval.novelty_root": (str,),
    "eval.mc_samples": (int,),
    "coop.n_ctx": (int,),
    "coop.vga_heads": (int,),
}

# Every key with a fixed set of values, read from the registry next to what it selects
# (each is torch-free, so validating a config stays cheap); docs/choices.md says what the
# values mean. ``dataset.name`` is compared after normalise_name (``imagenet-r`` works).
CHOICES = {
    "method": METHODS,
    "backbone.precision": PRECISIONS,
    "dataset.name": tuple(available_datasets()),
    "dataset.on_bad_image": BAD_IMAGE_POLICIES,
    "cache.verify": CACHE_VERIFY,
    "eval.novelty_dataset": tuple(available_datasets()),  # or null
    "eval.context": EVAL_CONTEXTS,
    "eval.reliability_pairs": METRIC_PAIRS,
    "clap.train_context": CONTEXTS,
    "clap.language_init_classes": LANGUAGE_INIT_CLASSES,
    "multi_encoder.fusion": FUSIONS,
    "multi_encoder.fill": FILLS,
    "memory.policy": MEMORY_POLICIES,
    "memory.selector": tuple(SELECTORS),
    "coop.text_pass": TEXT_PASSES,
}
NORMALISED = {"dataset.name": normalise_name, "eval.novelty_dataset": normalise_name}
# The names allowed in each entry of a list-valued key.
LIST_CHOICES = {"plugins": tuple(PLUGINS)}

POSITIVE = ("dataset.n_experiences", "cache.batch_size", "eval.batch_size",
            "clap.batch_size", "clap.mc_samples", "clap.vga_heads", "clap.vga_ffn_dim",
            "clip_adapter.batch_size", "clip_adapter.reduction", "multi_encoder.hidden",
            "multi_encoder.fused_hidden", "multi_encoder.batch_size", "multi_encoder.lr",
            "coop.batch_size", "coop.init_std")
NON_NEGATIVE = ("run", "cache.num_workers", "clap.epochs", "clap.finetune_epochs",
                "clap.lr", "clap.beta", "clap.kl_weight", "clap.finetune_lr_factor",
                "clap.warmup_fraction", "clap.min_lr_factor", "clap.vga_dropout",
                "clip_adapter.epochs", "clip_adapter.lr", "clip_adapter.ratio",
                "memory.size", "memory.per_class", "multi_encoder.epochs", "coop.text_batch",
                "coop.epochs", "coop.finetune_epochs", "coop.lr", "coop.finetune_lr_factor",
                "coop.warmup_fraction", "coop.min_lr_factor")


def free_form_keys(reference: Optional[Dict[str, Any]] = None, prefix: str = "") -> set:
    """Dotted keys whose default is an empty mapping (``dataset.options``): maps of the
    user's own keys, merged key by key and reachable with dotted ``--set`` keys."""
    reference = defaults() if reference is None else reference
    keys = set()
    for key, value in reference.items():
        if isinstance(value, dict):
            keys |= free_form_keys(value, f"{prefix}{key}.") if value else {f"{prefix}{key}"}
    return keys


def defaults() -> Dict[str, Any]:
    """The default configuration (a fresh copy)."""
    text = resources.files("clap4cl.runner").joinpath("defaults.yaml").read_text()
    return yaml.safe_load(text)


def default_config_path() -> Path:
    """``configs/default.yaml``: the offline embedded run of ``clap4cl run``."""
    return Path(str(resources.files("configs").joinpath("default.yaml")))


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    config = defaults()
    if path is not None:
        merge(config, read_yaml(path), where=str(path))
    for item in overrides:
        key, value = parse_override(item)
        set_key(config, key, value)
    validate(config)
    return config


def read_yaml(path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found: give an existing YAML file "
                          f"(or omit --config for the default run)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                          f"at offset {exc.start}): give a YAML text file") from exc
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror or exc}): "
                          f"check its permissions") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def parse_override(item: str):
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value: write e.g. --set dataset.n_experiences=5")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def merge(base: Dict[str, Any], update: Dict[str, Any], where: str = "config", prefix: str = "",
          free: bool = False) -> None:
    """Merge ``update`` into ``base`` in place, rejecting keys ``base`` does not have
    (except inside free-form maps such as ``dataset.options``, merged key by key)."""
    for key, value in update.items():
        full = f"{prefix}{key}"
        if free:
            if isinstance(base.get(key), dict) and isinstance(value, dict):
                merge(base[key], value, where, prefix=f"{full}.", free=True)
            else:
                base[key] = value
            continue
        if key not in base:
            raise ConfigError(_unknown_key_message(full, base, prefix))
        if full in FREE_FORM and isinstance(base[key], dict) and isinstance(value, dict):
            merge(base[key], value, where, prefix=f"{full}.", free=True)
        elif isinstance(base[key], dict) and base[key] and isinstance(value, dict):
            merge(base[key], value, where, prefix=f"{full}.")
        else:
            base[key] = value


def set_key(config: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested config, rejecting unknown keys; a mapping value merges
    into the section it names, and keys below a free-form map (``dataset.options.dim``)
    are created as needed."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"config key {dotted!r} has an empty part: write e.g. "
                          f"--set dataset.n_experiences=5")
    node = config
    free = False
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        here = ".".join(parts[:depth + 1])
        last = depth == len(parts) - 1
        if not isinstance(node, dict):
            raise ConfigError(f"unknown config key {dotted!r}: {prefix!r} is a single value "
                              f"({node!r}), not a section; set it with --set {prefix}=VALUE")
        if not free and part not in node:
            raise ConfigError(_unknown_key_message(dotted, node, f"{prefix}." if prefix else ""))
        free = free or here in FREE_FORM
        if last:
            if isinstance(node.get(part), dict) and isinstance(value, dict) and (free or node[part]):
                merge(node[part], value, prefix=f"{dotted}.", free=free)  # merge, keep siblings
            else:
                node[part] = value
        else:
            if free and part not in node:
                node[part] = {}
            node = node[part]


def _unknown_key_message(full: str, node: Dict[str, Any], prefix: str) -> str:
    if not node:
        return (f"unknown config key {full!r}: {prefix.rstrip('.')!r} takes no keys; "
                f"see clap4cl/runner/defaults.yaml for every key")
    valid = ", ".join(f"{prefix}{k}" for k in node)
    return f"unknown config key {full!r}: valid keys here are {valid}"


def validate(config: Dict[str, Any]) -> None:
    """Check types, choices and ranges of every key against the defaults."""
    _check_types(config, defaults(), "")
    bad_threads = validate_setting(config["threads"])
    if bad_threads:
        raise ConfigError(bad_threads)
    for key, options in CHOICES.items():
        value = get(config, key)
        if value is None and key in NULLABLE:
            continue
        if key in NORMALISED:
            value = NORMALISED[key](value)
        if value not in options:
            raise ConfigError(f"{key} = {get(config, key)!r} is not valid: choose one of "
                              f"{', '.join(options)}")
    for key in POSITIVE:
        if get(config, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {get(config, key)}")
    if config["eval"]["mc_samples"] is not None and config["eval"]["mc_samples"] <= 0:
        raise ConfigError(f"eval.mc_samples must be positive or null (the model's clap.mc_samples), "
                          f"got {config['eval']['mc_samples']}")
    for key in NON_NEGATIVE:
        if get(config, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {get(config, key)}")
    if not isinstance(config["plugins"], list) or not all(
            isinstance(p, (dict, str)) for p in config["plugins"]):
        raise ConfigError("plugins must be a list such as [{name: cml, weight: 1.0}]")
    check_plugin_names(config["plugins"])
    _check_method_data(config)
    _check_prompt_learning(config)
    check_values(config)
    config["plugins"] = normalise_options(config["plugins"])
    build_plugins(config["plugins"])  # plugin options fail before any work


def _check_method_data(config) -> None:
    multimodal_data = normalise_name(config["dataset"]["name"]) == "two_modality"
    if multimodal_data != (config["method"] == "multi_encoder"):
        raise ConfigError(f"method {config['method']!r} cannot run on dataset "
                          f"{config['dataset']['name']!r}: the two_modality stream goes with "
                          f"method multi_encoder, CLIP methods with image or synthetic data")


def _check_prompt_learning(config) -> None:
    """Learned prompts need a CLIP text encoder: image datasets, not feature-only streams."""
    if config["method"] not in ("coop", "clap_coop"):
        return
    if normalise_name(config["dataset"]["name"]) == "synthetic":
        raise ConfigError(f"method {config['method']!r} learns prompts through the CLIP text "
                          f"encoder: use an image dataset (e.g. digits), not synthetic features")
    for key in ("coop.n_ctx", "coop.vga_heads"):
        value = get(config, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive or null, got {value}")


def _check_types(config, reference, prefix) -> None:
    for key, default in reference.items():
        full = f"{prefix}{key}"
        value = config[key]
        if isinstance(default, dict) and default:
            if not isinstance(value, dict):
                keys = ", ".join(f"{full}.{k}" for k in default)
                raise ConfigError(f"{full} must be a mapping of its keys ({keys}), "
                                  f"got {type(value).__name__} {value!r}")
            _check_types(value, default, f"{full}.")
            continue
        if (value is None and default is None) or full in OWN_CHECK:
            continue
        allowed = NULLABLE.get(full) if default is None else (type(default),)
        if allowed is None:
            continue
        number = as_float(value) if float in allowed else None
        if number is not None:
            config[key] = number  # ints, and 1e-3 that YAML 1.1 reads as a string
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            names = " or ".join(t.__name__ for t in allowed)
            nullable = " or null" if full in NULLABLE else ""
            raise ConfigError(f"{full} must be {names}{nullable}, got {type(value).__name__} {value!r}")


_REQUIRED = object()


def get(config: Dict[str, Any], dotted: str, default: Any = _REQUIRED) -> Any:
    """The value at a dotted key; ``default`` (if given) when the key is not there."""
    node = config
    for part in dotted.split("."):
        if default is not _REQUIRED and (not isinstance(node, dict) or part not in node):
            return default
        node = node[part]
    return node


FREE_FORM = free_form_keys()


def dump(config: Dict[str, Any]) -> str:
    """YAML text of a resolved config (key order preserved)."""
    return yaml.safe_dump(copy.deepcopy(config), sort_keys=False)
