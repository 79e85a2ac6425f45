"""The config's ``plugins`` list -> Avalanche plugins (like ``build_from_config`` for methods).

``PLUGINS`` maps each name to the ``"module:class"`` implementing it; the classes are
imported only when a plugin is built, so reading the names (config validation, the CLI
help) stays cheap.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Sequence, Union

from clap4cl._lazy import resolve
from clap4cl.errors import ConfigError
from clap4cl.values import as_float

PLUGINS = {
    "modality_dropout": "strategies.plugins.modality_dropout:ModalityDropoutPlugin",
    "cml": "strategies.plugins.cml:CMLPlugin",
    "mar": "strategies.plugins.mar:MARPlugin",
    "mad": "strategies.plugins.mad:MADPlugin",
    "attribution": "strategies.plugins.attribution:AttributionRegPlugin",
}


def plugin_name(spec: Union[str, Dict[str, Any]]):
    """The name of a ``plugins:`` entry (``"cml"`` or ``{name: cml, ...}``), or None."""
    return spec if isinstance(spec, str) else dict(spec).get("name")


def check_plugin_names(specs: Sequence[Union[str, Dict[str, Any]]]) -> None:
    """ConfigError naming the first entry whose name is not in ``PLUGINS`` (no imports)."""
    for i, spec in enumerate(specs):
        name = plugin_name(spec)
        if name is None:
            raise ConfigError(f"plugins[{i}] = {spec!r} has no name: write e.g. "
                              f"{{name: cml, weight: 1.0}} with name one of {', '.join(PLUGINS)}")
        if not isinstance(name, str) or name not in PLUGINS:
            raise ConfigError(f"plugins: unknown plugin {name!r}: choose from {', '.join(PLUGINS)}")


def normalise_options(specs: Sequence[Union[str, Dict[str, Any]]]) -> List:
    """``specs`` with each option whose default is a number or a bool checked against
    that type: a ConfigError names the plugin, the option and the value (instead of a
    TypeError deep in training); float spellings YAML 1.1 reads as strings (``1e-3``) and
    integers become floats for float options."""
    out = []
    for spec in specs:
        if isinstance(spec, str):
            out.append(spec)
            continue
        spec = dict(spec)
        name = spec["name"]
        defaults = {key: p.default for key, p in inspect.signature(resolve(PLUGINS[name])).parameters.items()}
        for key, value in spec.items():
            default = defaults.get(key, inspect.Parameter.empty)
            if key == "name" or default is None or default is inspect.Parameter.empty:
                continue
            kind = type(default)
            number = as_float(value) if kind is float else None
            if number is not None:
                spec[key] = number
                continue
            if kind in (float, int, bool) and type(value) is not kind:
                raise ConfigError(f"plugin {name} option {key} must be {kind.__name__}, got "
                                  f"{type(value).__name__} {value!r}: e.g. {{name: {name}, "
                                  f"{key}: {default!r}}}")
        out.append(spec)
    return out


def build_plugins(specs: Sequence[Union[str, Dict[str, Any]]]) -> List:
    """Plugins from entries such as ``"cml"`` or ``{name: cml, weight: 1.0}``.

    ``modality_dropout`` is placed first: Avalanche calls plugins in list order and the
    regularisers read the mask it sets."""
    check_plugin_names(specs)
    entries = [{"name": spec} if isinstance(spec, str) else dict(spec) for spec in specs]
    entries.sort(key=lambda entry: entry["name"] != "modality_dropout")  # stable: others keep order
    plugins = []
    for spec in entries:
        name = spec.pop("name")
        cls = resolve(PLUGINS[name])
        allowed = set(inspect.signature(cls).parameters) - {"aux_head", "teacher"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"plugin {name} has no option {unknown[0]!r}: its options are "
                              f"{', '.join(sorted(allowed))}")
        try:
            plugins.append(cls(**spec))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"plugin {name}: {exc}") from exc
    return plugins
