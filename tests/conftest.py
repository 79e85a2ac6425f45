"""Shared fixtures: one random-weight tiny backbone per session and a fresh cache root."""
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


INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items):
    """Tests under tests/integration/ (whole runs, subprocesses) are marked ``slow``."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
