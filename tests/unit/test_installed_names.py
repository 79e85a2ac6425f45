"""The top-level packages scenarios, strategies and configs: one module object per file."""
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import pytest

import clap4cl

ROOT = Path(clap4cl.__file__).resolve().parents[1]
NAMES = ("scenarios", "strategies", "configs")


@pytest.mark.parametrize("name", NAMES)
def test_the_name_is_this_distributions_package(name):
    module = importlib.import_module(name)
    assert module is sys.modules[name] is importlib.import_module(name)
    assert Path(module.__file__).resolve() == ROOT / name / "__init__.py"
    assert importlib.util.find_spec(f"clap4cl.{name}") is None     # no second import path


def test_every_module_file_is_loaded_once():
    for name in NAMES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            importlib.import_module(info.name)
    by_file = {}
    for module_name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and any(Path(path).resolve().is_relative_to(ROOT / top)
                        for top in NAMES + ("clap4cl",)):
            by_file.setdefault(Path(path).resolve(), []).append(module_name)
    twice = {str(p.relative_to(ROOT)): names for p, names in by_file.items() if len(names) > 1}
    assert twice == {}
    import strategies
    assert strategies.CLAP is importlib.import_module("strategies.clap").CLAP
