"""When a run is written to the store: the ``on_snapshot`` hook of a ``Run``.

The run calls it on every publish, with its current synthetic set when the worker publishes (None
from a control call such as pause, which then writes the status only). It writes at most every
``every_seconds``, and always when the status changes, a new accuracy point arrives and at the end;
a frame of images and a checkpoint go with each write, the final synthetic set with the last. The
history of small extras (IADD's weight per layer) is kept here, since a snapshot carries only the
latest value.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import torch

from distill_core.runs.run import Snapshot
from distill_core.runs.store import Store
from distill_core.synthetic import Synthetic

SMALL_EXTRA = 512  # extras with at most this many values are kept over time (layer weights, windows)
CHECKPOINTED = ("running", "paused", "done", "stopped", "failed")


def small_extras(extras: dict[str, torch.Tensor]) -> dict[str, list[float] | float]:
    """Extras small enough to keep at every save (per-layer weights, a window, a start epoch)."""
    out: dict[str, list[float] | float] = {}
    for k, v in extras.items():
        if isinstance(v, torch.Tensor) and 0 < v.numel() <= SMALL_EXTRA and not v.is_complex():
            vals = v.detach().float().cpu()
            out[k] = vals.item() if vals.dim() == 0 else vals.flatten().tolist()
    return out


class Recorder:
    """Persists one run as it goes (see the module docstring)."""

    def __init__(self, store: Store, every_seconds: float = 3.0) -> None:
        self.store = store
        self.every_seconds = every_seconds
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._last_status = ""
        self._last_acc = -1
        self._last_frame_it = -1
        self._history: list[dict[str, Any]] = []
        self._last_extras_it = -1
        self._config: dict[str, Any] | None = None  # the configuration last written to config.json
        self._warned = False

    def __call__(self, snap: Snapshot, syn: Synthetic | None) -> None:
        with self._lock:
            try:
                self._record(snap, syn)
            except Exception as e:  # noqa: BLE001 - a full disk must not kill the run; say it once
                if not self._warned:
                    self._warned = True
                    print(f"run {snap.run_id}: could not save to {self.store.root}: {e}")

    def _record(self, snap: Snapshot, syn: Synthetic | None) -> None:
        if snap.config is not self._config:  # a new dict only when the run resolves its configuration
            self.store.save_config(snap.run_id, snap.config)
            self._config = snap.config
        if snap.extras and snap.iteration != self._last_extras_it:
            small = small_extras(snap.extras)
            if small:
                self._history.append({"iteration": snap.iteration, **small})
                self._last_extras_it = snap.iteration
        now = time.monotonic()
        changed = snap.status != self._last_status or len(snap.accuracy) != self._last_acc
        if not changed and not snap.done and now - self._last_write < self.every_seconds:
            return
        # the files first, the state and the index row last: a crash in between leaves a run that is
        # still listed as active (so it becomes interrupted and resumable), never a "done" run without
        # its final synthetic set
        if syn is not None:
            if snap.images is not None and snap.iteration != self._last_frame_it and snap.status != "preparing":
                self.store.save_frame(snap)
                self._last_frame_it = snap.iteration
            if snap.status in CHECKPOINTED:
                self.store.save_checkpoint(snap.run_id, syn, snap.iteration)
                if snap.done and snap.final is not None:
                    self.store.save_final(snap, syn)
        self.store.save(snap, tensors=syn is not None, extras_history=self._history)
        self._last_write, self._last_status, self._last_acc = now, snap.status, len(snap.accuracy)
