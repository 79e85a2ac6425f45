"""Default locations on disk."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$CLAP4CL_CACHE`` or ``~/.cache/clap4cl``."""
    return Path(os.environ.get("CLAP4CL_CACHE", Path.home() / ".cache" / "clap4cl"))


def default_data_dir() -> Path:
    """Default home of downloadable datasets: ``$CLAP4CL_DATA`` or ``~/.cache/clap4cl/data``."""
    env = os.environ.get("CLAP4CL_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clap4cl" / "data"
