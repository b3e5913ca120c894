"""What all sessions of the app share, in the engine so that the CLI or another front end can use it:
the run store, the job manager (with its run factory: every run gets a ``Recorder`` that persists
it, and can resume an interrupted one), the full-data reference measurements, core sharing.

On creation, runs that the index still lists as active belong to a process that ended: they are
marked interrupted (their saved images, curves and checkpoint stay).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from distill_core.config import RunConfig
from distill_core.data.datasets import Data
from distill_core.evaluation.protocol import Accuracy, evaluate_set
from distill_core.executor import ENV
from distill_core.paths import cache_dir
from distill_core.runs.manager import JobManager
from distill_core.runs.recorder import Recorder
from distill_core.runs.run import ACTIVE, Run, Snapshot, pick_device
from distill_core.runs.store import Store
from distill_core.runs.workers import Backend, RemoteRun, make_backend

# Full-training-set accuracies as published for ConvNet (DC/DM papers); shown only where this
# machine has not measured its own, and labelled as published.
PUBLISHED_FULL = {"mnist": 0.996, "fashion-mnist": 0.935, "cifar10": 0.848}
AUTO_FULL_MAX = 5000  # measure the full-data accuracy automatically only on datasets this small
FULL_EPOCHS = 30  # epochs of the full-data reference (one network): it sees the whole set every epoch


def default_concurrency() -> int:
    return int(os.environ.get("DISTILL_MAX_RUNS", "2"))


def default_workers() -> str:
    """Where runs execute (``workers.BACKENDS``): worker processes unless ``DISTILL_WORKERS`` says threads."""
    return os.environ.get("DISTILL_WORKERS", "processes")


class References:
    """Full-training-set accuracy per dataset and network, measured once in a background thread and
    kept in the store (so it survives restarts)."""

    def __init__(self, store: Store, auto: bool = True) -> None:
        self.store = store
        self.auto = auto  # measure small datasets without being asked
        self._lock = threading.Lock()
        self._busy: dict[str, str] = {}  # key -> "measuring" or an error message
        self._threads: list[threading.Thread] = []

    @staticmethod
    def key(cfg: RunConfig, data: Data, epochs: int | str = FULL_EPOCHS) -> str:
        net = cfg.net
        whitened = f":zca{cfg.zca_eps!r}" if cfg.zca else ""  # measured on the whitened images a whitening run sees
        return f"full:{data.name}:{data.x_train.shape[0]}:{net.name}-{net.width}-{net.depth}-{net.norm}:{cfg.strategy}:{epochs}{whitened}"

    def record_sweep(self, cfg: RunConfig, data: Data, acc: Accuracy, epochs: int) -> None:
        """A sweep's full-data measurement (``acc``: the protocol's networks, ``epochs`` each), which
        ``get`` then prefers to the quick one-network reference: the line every page draws."""
        self.store.set_reference(self.key(cfg, data, "sweep"), {"mean": acc.mean, "std": acc.std, "n": acc.n, "epochs": epochs})

    def get(self, cfg: RunConfig, data: Data) -> dict[str, Any] | None:
        """{"mean", "source"} (and "std" where several networks measured it) when known: a sweep's
        measurement, else one made here, else published; None otherwise."""
        swept = self.store.reference(self.key(cfg, data, "sweep"))
        if swept is not None:
            return {
                "mean": swept["mean"], "std": swept["std"],
                "source": f"measured by a sweep: {swept['n']} network{'s' if swept['n'] != 1 else ''}, {swept['epochs']} epochs "
                          f"on all {data.x_train.shape[0]} images",
            }
        found = self.store.reference(self.key(cfg, data))
        if found is not None:
            return {
                "mean": found["mean"],
                "source": f"measured here: 1 network, {FULL_EPOCHS} epochs on all {data.x_train.shape[0]} images",
            }
        if data.name in PUBLISHED_FULL:
            return {"mean": PUBLISHED_FULL[data.name], "source": "published (ConvNet, full training set)"}
        return None

    def state(self, cfg: RunConfig, data: Data) -> str | None:
        with self._lock:
            return self._busy.get(self.key(cfg, data))

    def request(self, cfg: RunConfig, data: Data, force: bool = False) -> None:
        """Start measuring unless known, running, or (without ``force``) the dataset is large."""
        key = self.key(cfg, data)
        if self.store.reference(key) is not None:
            return
        if not force and (not self.auto or data.x_train.shape[0] > AUTO_FULL_MAX):
            return
        with self._lock:
            if self._busy.get(key) == "measuring":
                return
            self._busy[key] = "measuring"
        t = threading.Thread(target=self._measure, args=(key, cfg, data), name="full-data-reference", daemon=True)
        self._threads.append(t)
        t.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for measurements under way (a process must not exit while torch works in a thread)."""
        for t in list(self._threads):
            t.join(timeout)

    def _measure(self, key: str, cfg: RunConfig, data: Data) -> None:
        try:
            d, _ = cfg.data_for(data.to(pick_device(cfg.device)), cache_dir())
            ecfg = replace(cfg.eval, epochs=FULL_EPOCHS, nets=1, syn_weights="uniform")  # real images: no coreset weights
            acc = evaluate_set(d.x_train[:], d.y_train, d, ecfg, cfg.net, cfg.strategy, torch.Generator().manual_seed(0))
            self.store.set_reference(key, {"mean": acc.mean, "epochs": FULL_EPOCHS})
            with self._lock:
                self._busy.pop(key, None)
        except Exception as e:  # noqa: BLE001 - shown in the page instead of the line
            with self._lock:
                self._busy[key] = f"could not measure the full-data accuracy: {e}"


@dataclass
class Services:
    store: Store
    manager: JobManager
    references: References
    interrupted: list[str] = field(default_factory=list)
    backend: Backend | None = None  # where runs execute; None: threads of this process

    def submit(self, cfg: RunConfig, owner: str, label: str = "", resume_from: str | None = None) -> Run | RemoteRun:
        return self.manager.submit(cfg, owner=owner, store_owner=owner, label=label, resume_from=resume_from)

    def shutdown(self, timeout: float = 5.0) -> None:
        """The app process is going away (SIGTERM, Ctrl-C): the runs under way end between two steps
        and are saved as interrupted, the queued ones are marked so; a restart offers to resume them."""
        self.manager.close(timeout)
        self.references.join(timeout)
        if self.backend is not None:
            self.backend.close()
        self.store.mark_interrupted()

    def snapshot(self, run_id: str) -> Snapshot | None:
        """A live run's latest snapshot, or the saved one of a past run."""
        run = self.manager.get(run_id)
        if run is not None:
            return run.snapshot()
        return self.store.load_snapshot(run_id)

    def issue_session(self) -> str:
        """A new session secret (128 bits from the OS's cryptographic source). Only its hash is kept,
        in the store, so a reload of the same address keeps control, also after a restart."""
        sid = secrets.token_urlsafe(16)
        self.store.set_reference(_session_key(sid), {"issued": time.time()})
        return sid

    def knows_session(self, sid: object) -> bool:
        """True for a secret this app issued; a made-up id from a URL controls nothing."""
        return isinstance(sid, str) and 16 <= len(sid) <= 64 and self.store.reference(_session_key(sid)) is not None

    def live(self, run_id: str) -> Run | RemoteRun | None:
        run = self.manager.get(run_id)
        return run if run is not None and run.snapshot().status in ACTIVE else None


def share_cores(max_concurrent: int) -> int:
    """On CPU, give each concurrent run its share of the cores: with several runs (and the full-data
    reference) in one process, torch's intra-op threads would otherwise oversubscribe the cores and
    every run slows down (measured on 2 cores: a default run took 36 s with 2 threads, 24 s with 1).
    Returns that share: also the threads of each worker process."""
    share = max(1, (os.cpu_count() or 1) // max_concurrent)
    if not torch.cuda.is_available():
        torch.set_num_threads(share)
    return share


def make_services(root: str | None = None, max_concurrent: int | None = None, auto_reference: bool | None = None,
                  workers: str | None = None, ray_address: str | None = None) -> Services:
    """The app's services. Runs execute in ``workers`` (``default_workers()``: a pool of worker
    processes, or "threads" of this process), or as Ray actors where ``ray_address`` (default
    ``$DISTILL_RAY_ADDRESS``) names a cluster: then as many at once as it has CPUs for."""
    ray_address = ray_address if ray_address is not None else os.environ.get(ENV) or None
    max_concurrent = max_concurrent or default_concurrency()
    backend = make_backend(workers or default_workers(), max_concurrent, share_cores(max_concurrent), ray_address)
    if backend is not None:  # a pool has as many slots as asked; a Ray cluster as it has CPUs for
        max_concurrent = backend.slots
    store = Store(root)
    interrupted = store.mark_interrupted()

    def run_factory(cfg: RunConfig, store_owner: str = "", label: str = "", resume_from: str | None = None, **kw: Any) -> Run | RemoteRun:
        if resume_from is not None:
            rec = store.get(resume_from)
            if rec is None or rec.status != "interrupted":
                raise ValueError(f"run {resume_from} is not an interrupted run (it is {rec.status if rec else 'unknown'}); it cannot be resumed")
            if rec.owner != store_owner:
                raise ValueError(f"run {resume_from} was started by another session; only that session can resume it")
        resume = None if resume_from is None else store.resume_point(resume_from)
        if backend is None:
            run = Run(cfg, on_snapshot=Recorder(store), resume=resume, **kw)
        else:
            run = RemoteRun(cfg, backend, store, resume=resume, **kw)
        store.add(run.snapshot(), owner=store_owner, label=label)
        if resume_from is not None:
            store.mark_resumed(resume_from, run.id)
        return run

    manager = JobManager(max_concurrent, run_factory=run_factory)
    if auto_reference is None:
        auto_reference = os.environ.get("DISTILL_AUTO_REFERENCE", "1") != "0"
    return Services(store, manager, References(store, auto_reference), interrupted, backend)


def _session_key(sid: str) -> str:
    return "session:" + hashlib.sha256(sid.encode()).hexdigest()
