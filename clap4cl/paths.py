"""Default locations on disk."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$CLAP4CL_CACHE`` or ``~/.cache/clap4cl``."""
    return Path(os.environ.get("CLAP4CL_CACHE", Path.home() / ".cache" / "clap4cl"))
