"""Settings files shared by every configurable command (study, concepts, fingerprint).

One precedence everywhere: defaults < profile < YAML file < command-line flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlens.errors import DataError


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The ``setting: value`` mapping in a YAML file, or one DataError naming the problem."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise DataError(f"config file {path} not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise DataError(f"config file {path} must hold a mapping of setting: value")
    return {str(key): value for key, value in loaded.items()}
