"""Lazy package attributes (PEP 562): ``import clap4cl`` must not load torch or Avalanche.

A package ``__init__`` lists ``{public name: defining module}``; the module is imported
the first time the name is read, so ``clap4cl --help`` and a one-line config error stay fast.
Registries of choices (plugins, selectors, datasets) name their implementations the same
way, as ``"module:attribute"`` strings that :func:`resolve` imports on use.
"""
from __future__ import annotations

import importlib
from typing import Dict, List


def lazy_exports(package: str, exports: Dict[str, str]) -> tuple:
    """``(__getattr__, __dir__)`` for ``package`` resolving ``exports`` on first access."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            try:  # a submodule not imported yet, e.g. ``clap4cl.distributed``
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        globals_of(package)[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(globals_of(package)) | set(exports))

    return __getattr__, __dir__


def globals_of(package: str) -> dict:
    import sys
    return vars(sys.modules[package])


def resolve(target: str):
    """The object a registry entry ``"package.module:attribute"`` names, imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
