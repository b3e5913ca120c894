"""Views derived from a run's snapshot (figures, image strips, PNGs, the full-data reference), built
once per (run id, snapshot version) and shared by every viewer of the run in this server process.

A live run's redraw polls once a second in every browser session that shows it; without this, each
session rebuilt the same Plotly figures and re-encoded the same PNGs on every poll, and six viewers
kept a core busy that the runs needed. A ``Snapshot`` is immutable and its ``version`` grows with
every publish, so ``(run_id, version)`` names its content: what is built from it never goes stale.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

# a few kinds of view per run, the latest version of each; a workshop of 20 runs and their viewers
# fits, and an entry is small (PNG bytes of a few kB, figures of at most a few thousand points)
MAX_ENTRIES = 256


class ViewCache:
    """A thread-safe LRU that builds a missing value once, however many sessions ask at the same
    time (the others wait for that build instead of repeating it). ``builds`` counts the builds."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.builds = 0
        self._values: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()  # key -> (built at, value)
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, build: Callable[[], T], max_age: float | None = None) -> T:
        """The value under ``key``, built by ``build()`` when missing (or older than ``max_age`` s)."""
        hit = self._lookup(key, max_age)
        if hit is not None:
            return hit[0]
        with self._lock:
            pending = self._building.setdefault(key, threading.Lock())
        with pending:  # one build per key: viewers that arrive meanwhile wait here, then read it
            hit = self._lookup(key, max_age)
            if hit is not None:
                return hit[0]
            try:
                value = build()
                with self._lock:
                    self.builds += 1
                    self._values[key] = (time.monotonic(), value)
                    while len(self._values) > self.max_entries:
                        self._values.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return value

    def _lookup(self, key: Hashable, max_age: float | None) -> tuple[Any] | None:
        with self._lock:
            entry = self._values.get(key)
            if entry is None or (max_age is not None and time.monotonic() - entry[0] > max_age):
                return None
            self._values.move_to_end(key)
            return (entry[1],)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


VIEWS = ViewCache()  # the one cache of this server process, shared by every session
