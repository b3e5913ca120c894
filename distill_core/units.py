"""Numbers as people read them: durations and sizes."""
from __future__ import annotations


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def mb(x: float) -> str:
    """A size in MB."""
    return f"{x:.0f} MB" if x >= 10 else f"{x:.1f} MB"
