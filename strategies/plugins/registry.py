"""The config's ``plugins`` list -> Avalanche plugins (like ``build_from_config`` for methods)."""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Sequence, Union

from clap4cl.errors import ConfigError

from strategies.plugins.attribution import AttributionRegPlugin
from strategies.plugins.cml import CMLPlugin
from strategies.plugins.mad import MADPlugin
from strategies.plugins.mar import MARPlugin
from strategies.plugins.modality_dropout import ModalityDropoutPlugin

PLUGINS = {
    "modality_dropout": ModalityDropoutPlugin,
    "cml": CMLPlugin,
    "mar": MARPlugin,
    "mad": MADPlugin,
    "attribution": AttributionRegPlugin,
}


def build_plugins(specs: Sequence[Union[str, Dict[str, Any]]]) -> List:
    """Plugins from entries such as ``"cml"`` or ``{name: cml, weight: 1.0}``.

    ``modality_dropout`` is placed first: Avalanche calls plugins in list order and the
    regularisers read the mask it sets."""
    plugins = []
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = spec.pop("name", None)
        if name not in PLUGINS:
            raise ConfigError(f"unknown plugin {name!r}: choose from {', '.join(PLUGINS)}")
        cls = PLUGINS[name]
        allowed = set(inspect.signature(cls).parameters) - {"aux_head", "teacher"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"plugin {name} has no option {unknown[0]!r}: its options are "
                              f"{', '.join(sorted(allowed))}")
        try:
            plugins.append(cls(**spec))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"plugin {name}: {exc}") from exc
    plugins.sort(key=lambda p: not isinstance(p, ModalityDropoutPlugin))
    return plugins
