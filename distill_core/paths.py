"""Where the engine keeps reusable work on disk (one place, so the app, the CLI and runs agree)."""
from __future__ import annotations

from pathlib import Path


def cache_dir() -> Path:
    """Expert trajectories and downloaded data: ``~/.cache/distill_explorer``."""
    return Path.home() / ".cache" / "distill_explorer"
