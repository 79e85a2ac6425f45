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
    for spec in specs:
        name = plugin_name(spec)
        if name not in PLUGINS:
            raise ConfigError(f"plugins: unknown plugin {name!r}: choose from {', '.join(PLUGINS)}")


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
