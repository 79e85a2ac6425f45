"""Every YAML config shipped in configs/ loads and validates against the defaults."""
from pathlib import Path

import pytest

from clap4cl.runner.config import default_config_path, load_config

CONFIGS = sorted(Path(default_config_path()).parent.glob("*.yaml"))


def test_configs_are_shipped():
    assert "default.yaml" in {p.name for p in CONFIGS} and len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    config = load_config(path)
    assert config["dataset"]["n_experiences"] >= 1
