"""Where traitlens keeps what it builds or converts once (stdlib only, so build helpers can
run before the project's heavy dependencies are installed)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$TRAITLENS_CACHE``, default ``~/.cache/traitlens``."""
    return Path(os.environ.get("TRAITLENS_CACHE", Path.home() / ".cache" / "traitlens"))
