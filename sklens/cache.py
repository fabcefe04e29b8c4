"""Where sklens keeps what it builds or converts once: ``$SKLENS_HOME`` or the user cache dir."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def home() -> Path:
    """The cache root: ``$SKLENS_HOME`` if set, else the platform's user cache directory."""
    root = os.environ.get("SKLENS_HOME") or user_cache_dir("sklens")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
