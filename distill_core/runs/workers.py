"""Where the app's runs execute: threads of this process, worker processes, or Ray actors.

The web server must do only web work: a run in one of its threads takes the interpreter from every
page (measured: six watched runs, 0 finished in 15 min). So by default each run executes in a
**worker process** of a small pool (one per concurrent run, started once, each with its share of the
cores); with ``DISTILL_RAY_ADDRESS`` set, each run is a **Ray actor** on that cluster. Both hand the
job manager a ``RemoteRun``: the same controls as a ``Run`` (pause, step, stop, interrupt), whose
snapshot follows the one in the worker.

What travels: the worker runs a real ``Run`` whose ``Recorder`` writes the store itself (the runs
directory must be reachable from the worker: on one machine it is), and sends each snapshot as the
fields that changed since the last one sent (the images after each publish, the new metrics rows,
not the growing history). Commands go the other way. A worker that dies takes only its run, which
is recorded as failed with what it had saved; the pool starts a new worker. If the server dies, a
process worker sees its pipe close and interrupts its run (saved, resumable) before it exits.
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from distill_core.config import RunConfig
from distill_core.executor import ENV
from distill_core.runs.recorder import Recorder
from distill_core.runs.run import Resume, Run, Snapshot
from distill_core.runs.store import Store

BACKENDS = ("processes", "threads")  # DISTILL_WORKERS; DISTILL_RAY_ADDRESS picks Ray over either
Changes = dict[str, Any]


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to build the run (picklable)."""

    cfg: RunConfig
    run_id: str
    store_root: Path
    resume: Resume | None = None
    cache_dir: Path | None = None
    log_every: int = 10
    publish_seconds: float = 0.5


# ---- snapshots as changes ------------------------------------------------------------------------
class ChangeTracker:
    """A snapshot as the fields that changed since the last one (``Run`` publishes with ``replace``,
    so an unchanged field is the same object); the metrics as the rows added since."""

    def __init__(self) -> None:
        self.last: Snapshot | None = None

    def __call__(self, snap: Snapshot) -> Changes:
        last, self.last = self.last, snap
        if last is None:
            return {f.name: getattr(snap, f.name) for f in fields(snap)}
        changes = {f.name: getattr(snap, f.name) for f in fields(snap) if getattr(snap, f.name) is not getattr(last, f.name)}
        old, new = last.metrics, snap.metrics
        if "metrics" in changes and len(new) >= len(old) and (not old or new[len(old) - 1] is old[-1]):
            del changes["metrics"]
            changes["metrics+"] = new[len(old):]
        return changes


def merge(a: Changes, b: Changes) -> Changes:
    """``a`` then ``b`` as one set of changes (a Ray actor keeps what its driver has not polled yet)."""
    out = {**a, **{k: v for k, v in b.items() if k != "metrics+"}}
    if "metrics+" in b:
        if "metrics" in out:
            out["metrics"] = tuple(out["metrics"]) + tuple(b["metrics+"])
        else:
            out["metrics+"] = tuple(a.get("metrics+", ())) + tuple(b["metrics+"])
    elif "metrics" in b:
        out.pop("metrics+", None)
    return out


def apply(snap: Snapshot, changes: Changes) -> Snapshot:
    tail = changes.get("metrics+")
    plain = {k: v for k, v in changes.items() if k != "metrics+"}
    if tail is not None:
        plain["metrics"] = snap.metrics + tuple(tail)
    return replace(snap, **plain)


# ---- the worker side (a process of the pool, or a Ray actor) -------------------------------------
def put(conn: Connection, message: tuple[Any, ...]) -> None:
    """Plain pickle, tensors by value: ``Connection.send`` would pass torch tensors as shared memory
    handed over by a multiprocessing server that only a child of this process may reach."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def get(conn: Connection) -> tuple[Any, ...]:
    return pickle.loads(conn.recv_bytes())


def build_run(spec: RunSpec, send: Callable[[Changes], None]) -> Run:
    """The run a worker executes: its recorder writes the store, then its changes go to the server."""
    recorder, track = Recorder(Store(spec.store_root)), ChangeTracker()

    def publish(snap: Snapshot, syn: Any) -> None:
        recorder(snap, syn)
        send(track(snap))

    return Run(spec.cfg, run_id=spec.run_id, cache_dir=spec.cache_dir,
               log_every=spec.log_every, publish_seconds=spec.publish_seconds, on_snapshot=publish, resume=spec.resume)


def command(run: Run, name: str) -> None:
    {"stop": run.stop, "pause": run.pause, "resume": run.resume, "step": run.step_once, "interrupt": run.interrupt}[name]()


def set_threads(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def warm() -> None:
    """What every first run would otherwise wait for: scikit-learn's imports, the embedded dataset
    (kept by ``data.load``'s cache) and torch's first optimizer, which imports torch._dynamo (4 s on
    one core, before a run's first images), a few seconds once per worker."""
    import torch

    from distill_core import data

    try:
        data.load("digits")
        import sklearn.cluster  # noqa: F401 - the k-means initializers' import

        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    except Exception:  # noqa: BLE001 - only a head start: a run that needs them reports its own error
        pass


def serve(conn: Any, threads: int) -> None:
    """A pool worker's life: runs one run at a time, as the server sends them, until told to exit or
    until the server goes away (its pipe closes): then the run under way is interrupted, saved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server decides
    set_threads(threads)
    send_lock = threading.Lock()
    runs: queue.Queue[Run | None] = queue.Queue()
    current: list[Run] = []

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                put(conn, message)
            except (BrokenPipeError, EOFError, OSError):
                pass  # the server is gone; the listener interrupts the run

    def listen() -> None:
        while True:
            try:
                message = get(conn)
            except (EOFError, OSError):  # the server went away: save the run under way as interrupted
                if current:
                    command(current[-1], "interrupt")
                runs.put(None)
                return
            if message[0] == "run":  # built here, so that a command sent right after finds it
                current.append(build_run(message[1], lambda changes: send(("snap", changes))))
                runs.put(current[-1])
            elif message[0] == "exit":
                runs.put(None)
                return
            elif current:
                command(current[-1], message[0])

    threading.Thread(target=listen, name="commands", daemon=True).start()
    warm()
    while (run := runs.get()) is not None:
        run.execute()
        current.clear()
        send(("end",))


class RemoteRun:
    """A run executing elsewhere, as the job manager and the pages see it: ``snapshot()`` follows the
    worker's, the controls are sent to it (those given before it reached a worker, when it gets one)."""

    def __init__(self, cfg: RunConfig, backend: Backend, store: Store, run_id: str | None = None,
                 resume: Resume | None = None, cache_dir: Path | None = None, log_every: int = 10,
                 publish_seconds: float = 0.5) -> None:
        self.cfg = cfg
        self.id = run_id or uuid.uuid4().hex[:10]
        self.backend = backend
        self.spec = RunSpec(cfg, self.id, store.root, resume, cache_dir, log_every, publish_seconds)
        self._snapshot = Snapshot(self.id, cfg.to_dict())
        self._lock = threading.Lock()
        self._record = Recorder(store)  # what only this side knows: a stop while queued, a worker that died
        self._send: Callable[[str], None] | None = None
        self._pending: list[str] = []
        self._stopped = False
        self._paused = False

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    # ---- controls ------------------------------------------------------------------------------
    def _command(self, name: str) -> None:
        with self._lock:
            send = self._send
            if send is None:
                self._pending.append(name)
        if send is not None:
            send(name)

    def stop(self) -> None:
        self._stopped = True
        self._command("stop")

    def interrupt(self) -> None:
        self._stopped = True
        self._command("interrupt")

    def pause(self) -> None:
        self._paused = True
        self._command("pause")

    def resume(self) -> None:
        self._paused = False
        self._command("resume")

    def step_once(self) -> None:
        self._command("step")

    @property
    def paused(self) -> bool:
        return self._paused

    def cancel_if_stopped(self) -> bool:
        """Stopped while queued: recorded as such, and never sent to a worker."""
        if self._stopped:
            self._set(status="stopped", phase="", message="stopped while queued")
        return self._stopped

    # ---- the worker's side of it ---------------------------------------------------------------
    def execute(self) -> Snapshot:
        """Runs in a worker; returns when the run ended there (or the worker died). Never raises."""
        try:
            self.backend.execute(self)
        except Exception as e:  # noqa: BLE001 - a backend that failed (Ray gone) fails this run, not the app
            self.lost(f"{type(e).__name__}: {e}")
        return self.snapshot()

    def attach(self, send: Callable[[str], None]) -> None:
        """The run is in a worker: commands go to ``send``, the ones given so far first."""
        with self._lock:
            pending, self._pending, self._send = self._pending, [], send
        for name in pending:
            send(name)

    def detach(self) -> None:
        with self._lock:
            self._send = None

    def receive(self, changes: Changes) -> None:
        with self._lock:
            self._snapshot = apply(self._snapshot, changes)

    def lost(self, why: str) -> None:
        """The worker died (or could not be reached) before the run ended: what it saved stays."""
        if not self.snapshot().done:
            self._set(status="failed", phase="", message=f"the run's worker stopped unexpectedly ({why}); what it had saved is kept")

    def _set(self, **changes: Any) -> None:
        """A change only this side knows: written to the store first, then shown."""
        with self._lock:
            snap = replace(self._snapshot, version=self._snapshot.version + 1, **changes)
            self._record(snap, None)
            self._snapshot = snap


class Backend:
    """Where ``RemoteRun``s execute; ``execute`` blocks (in the job manager's thread for the run)."""

    slots: int = 1  # runs at once

    def start(self) -> None:
        """Get ready for runs ahead of the first one (in the background)."""

    def execute(self, run: RemoteRun) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---- a pool of worker processes ------------------------------------------------------------------
class Worker:
    """One process of the pool: ``python -m distill_core.runs.workers FD THREADS``, talking over a socket
    pair. A new interpreter, not ``multiprocessing``'s spawn, which re-imports the parent's main
    module in the child (under ``streamlit run``, the app's own script, pages and all)."""

    def __init__(self, threads: int) -> None:
        mine, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])  # the checkout, above distill_core/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "distill_core.runs.workers", str(theirs.fileno()), str(threads)],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, cwd=root,
        )
        theirs.close()  # the worker holds the only other end: its death closes the pair here
        self.conn = Connection(mine.detach())
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            put(self.conn, message)

    def execute(self, run: RemoteRun) -> None:
        self.send(("run", run.spec))
        run.attach(lambda name: self._try_send((name,)))
        try:
            while True:
                try:
                    message = get(self.conn)
                except (EOFError, OSError):
                    try:
                        code = self.process.wait(1)
                    except subprocess.TimeoutExpired:
                        code = None
                    run.lost(f"worker process exit code {code}")
                    return
                if message[0] == "snap":
                    run.receive(message[1])
                elif message[0] == "end":
                    return
        finally:
            run.detach()

    def _try_send(self, message: tuple[Any, ...]) -> None:
        try:
            self.send(message)
        except (BrokenPipeError, OSError):
            pass  # the worker died; execute() reports it

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout: float) -> None:
        self.ask_to_exit()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def ask_to_exit(self) -> None:
        self._try_send(("exit",))


class ProcessPool(Backend):
    """``slots`` worker processes, each with ``threads`` torch threads, started on the first run (a
    few seconds: each imports torch) and kept; a worker that died is replaced for the next run."""

    def __init__(self, slots: int, threads: int) -> None:
        self.slots, self.threads = slots, threads
        self._idle: queue.Queue[Worker] = queue.Queue()
        self._workers: list[Worker] = []
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if not self._workers:
                self._workers = [Worker(self.threads) for _ in range(self.slots)]
                for w in self._workers:
                    self._idle.put(w)

    def start(self) -> None:
        """Start the workers now, in the background (the app does on its first page, so that its first
        run does not wait for them to import torch)."""
        threading.Thread(target=self._start, name="start-workers", daemon=True).start()

    def execute(self, run: RemoteRun) -> None:
        self._start()
        worker = self._alive(self._idle.get())
        try:
            worker.execute(run)
        finally:
            self._idle.put(self._alive(worker))

    def _alive(self, worker: Worker) -> Worker:
        """``worker``, or a new one in its place if it died (killed while idle, or with its run)."""
        if worker.alive:
            return worker
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            fresh = Worker(self.threads)
            self._workers.append(fresh)
        return fresh

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:  # all at once: each takes about a second to wind torch down
            w.ask_to_exit()
        deadline = time.monotonic() + timeout
        for w in workers:
            w.close(max(0.1, deadline - time.monotonic()))


# ---- Ray actors ----------------------------------------------------------------------------------
class RunHost:
    """A Ray actor hosting one run: the driver polls its changes and sends commands (the actor serves
    calls concurrently with the run's own thread)."""

    def __init__(self, spec: RunSpec, threads: int) -> None:
        # the run is on the cluster already, holding its CPUs: experts it trains stay inside it rather
        # than becoming tasks that could wait forever for CPUs that runs like it hold
        os.environ.pop(ENV, None)
        set_threads(threads)
        self._lock = threading.Lock()
        self._changes: Changes = {}
        self._ended = False
        self.run = build_run(spec, self._keep)
        self._thread = threading.Thread(target=self._execute, name="run", daemon=True)
        self._thread.start()

    def _keep(self, changes: Changes) -> None:
        with self._lock:
            self._changes = merge(self._changes, changes)

    def _execute(self) -> None:
        self.run.execute()
        with self._lock:
            self._ended = True

    def poll(self) -> tuple[Changes, bool]:
        """The changes since the last poll, and whether the run has ended (then they are the last)."""
        with self._lock:
            changes, self._changes = self._changes, {}
            return changes, self._ended

    def command(self, name: str) -> None:
        command(self.run, name)


class RayBackend(Backend):
    """Each run a Ray actor of ``cpus`` CPUs on the cluster at ``address``; as many runs at once as
    the cluster has CPUs for. The driver polls each actor every ``poll_seconds``."""

    def __init__(self, address: str, cpus: int = 1, poll_seconds: float = 0.3) -> None:
        from distill_core.executor import RayExecutor

        self._connection = RayExecutor(address)  # connects (or starts a local cluster), shared with the experts' tasks
        self.cpus, self.poll_seconds = cpus, poll_seconds
        import ray

        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))

    def execute(self, run: RemoteRun) -> None:
        import ray

        actor = ray.remote(RunHost).options(num_cpus=self.cpus, max_concurrency=4, max_restarts=0).remote(run.spec, self.cpus)
        run.attach(lambda name: actor.command.remote(name))
        try:
            ended = False
            while not ended:
                try:
                    changes, ended = ray.get(actor.poll.remote())
                except ray.exceptions.RayError as e:  # the actor's worker or node died
                    run.lost(f"Ray actor: {type(e).__name__}")
                    return
                if changes:
                    run.receive(changes)
                if not ended:
                    time.sleep(self.poll_seconds)
        finally:
            run.detach()
            ray.kill(actor)

    def close(self) -> None:
        self._connection.close()


def make_backend(kind: str | None, slots: int, threads: int, ray_address: str | None = None) -> Backend | None:
    """Ray where an address is given, a process pool for "processes", None (the job manager's own
    threads) for "threads"."""
    if ray_address:
        return RayBackend(ray_address)
    kind = kind or "processes"
    if kind not in BACKENDS:
        raise ValueError(f"DISTILL_WORKERS={kind!r}: known: {', '.join(BACKENDS)}")
    # the pool hands its workers a socket by descriptor (POSIX); elsewhere runs stay in threads
    return ProcessPool(slots, threads) if kind == "processes" and os.name == "posix" else None


if __name__ == "__main__":  # a pool worker: python -m distill_core.runs.workers FD THREADS
    from distill_core.runs import workers  # the module by its name, as the server's pickles name its classes

    workers.serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
