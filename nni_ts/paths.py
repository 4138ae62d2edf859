"""Where nni-ts keeps its files: ``$NNI_TS_HOME`` (default ``~/.local/share/nni-ts``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["experiment_dir", "home"]


def home() -> Path:
    """The root of every experiment's files and of the store, from ``NNI_TS_HOME``."""
    env = os.environ.get("NNI_TS_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "nni-ts"


def experiment_dir(experiment_id: str) -> Path:
    """The directory of one experiment's files (trial directories live under ``trials/``)."""
    return home() / "experiments" / experiment_id
