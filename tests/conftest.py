"""Shared fixtures: one random-weight tiny backbone and one default ``clap4cl run`` per
session, and a fresh cache root."""
from pathlib import Path

import pytest

from clap4cl.encoders.backbones import load_clip


@pytest.fixture(scope="session")
def tiny_backbone():
    """``tiny-vit`` with seeded random weights (offline, D=64, 32 px images).

    Shared by the whole session: tests that patch its methods use ``monkeypatch``.
    """
    return load_clip("tiny-vit")


@pytest.fixture
def cache_root(tmp_path):
    """An empty directory for feature / prompt caches."""
    root = tmp_path / "cache"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def default_cli_run(tmp_path_factory):
    """``clap4cl run --quiet`` with every default (digits, CLAP, the packaged tiny-vit),
    run once per session in this process from a fresh directory: (exit code, that
    directory), with the run in ``run/`` and its cache in ``cache/``. Read-only for
    the tests that share it."""
    from clap4cl.cli import main

    root = tmp_path_factory.mktemp("default_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("CLAP4CL_CACHE", str(root / "cache"))
        code = main(["run", "--quiet", "--output", str(root / "run")])
    return code, root


INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items):
    """Tests under tests/integration/ (whole runs, subprocesses) are marked ``slow``."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
