"""The job manager shared by all app sessions: at most so many runs at once, the rest queued in order,
each in a thread of its own (``workers`` hands them to worker processes or Ray actors instead)."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

from distill_core.config import RunConfig
from distill_core.runs.run import ACTIVE, Run


class JobManager:
    """Runs shared by all sessions: at most ``max_concurrent`` at once, the rest queued in order."""

    def __init__(self, max_concurrent: int = 2, run_factory: Callable[..., Run] = Run) -> None:
        self.max_concurrent = max_concurrent
        self.run_factory = run_factory
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._owners: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._running: set[str] = set()
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False

    def submit(self, cfg: RunConfig, owner: str = "", **run_kwargs: Any) -> Run:
        run = self.run_factory(cfg, **run_kwargs)
        with self._lock:
            self._runs[run.id] = run
            self._owners[run.id] = owner
            self._queue.append(run.id)
        self._dispatch()
        return run

    def close(self, timeout: float = 5.0) -> None:
        """The process is going away: start nothing more, interrupt the runs under way and wait up to
        ``timeout`` s in all for their threads (torch work left in a thread at exit aborts the process)."""
        with self._lock:
            self._closed = True
            running = [(self._runs[i], self._threads[i]) for i in self._running]
        for run, _ in running:
            run.interrupt()
        deadline = time.monotonic() + timeout
        for _, thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _dispatch(self) -> None:
        with self._lock:
            while not self._closed and self._queue and len(self._running) < self.max_concurrent:
                run_id = self._queue.popleft()
                run = self._runs[run_id]
                if run.cancel_if_stopped():
                    continue
                self._running.add(run_id)
                self._threads[run_id] = threading.Thread(target=self._work, args=(run,), name=f"run-{run_id}", daemon=True)
                self._threads[run_id].start()

    def _work(self, run: Run) -> None:
        try:
            run.execute()
        finally:
            with self._lock:
                self._running.discard(run.id)
                self._threads.pop(run.id, None)
            self._dispatch()

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next to start; None when not queued."""
        with self._lock:
            return self._queue.index(run_id) + 1 if run_id in self._queue else None

    def get(self, run_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(run_id)

    def runs(self, owner: str | None = None) -> list[Run]:
        with self._lock:
            return [r for i, r in self._runs.items() if owner is None or self._owners[i] == owner]

    def owner(self, run_id: str) -> str | None:
        with self._lock:
            return self._owners.get(run_id)

    def stop(self, run_id: str) -> None:
        run = self.get(run_id)
        if run is not None:
            run.stop()
        self._dispatch()

    def active(self) -> list[Run]:
        return [r for r in self.runs() if r.snapshot().status in ACTIVE]
