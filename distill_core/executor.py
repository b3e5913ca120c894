"""Where independent work runs: in this process (the default) or as tasks on a Ray cluster.

The engine's independent pieces of work (the experts of a spec, the cells of a bench grid) go through
one small interface, ``Executor.map(fn, items)``: each item runs ``fn(item)`` on its own, results come
back in the items' order, a failure (an exception, or a worker process that died) is retried and then
reported as a failed ``Result``, never dropped, and ``on_done(i, result)`` hands each result to the
caller as soon as it arrives (to write it to disk, to report progress). ``fn`` must give the same
result wherever it runs (its randomness seeded from the item), so the same seed gives the same
results through either executor: bit for bit where both run torch on one thread (a Ray task does;
on more threads CPU kernels sum in another order and the last bits differ).

``InProcess`` runs the items one after another here and never imports ray. ``RayExecutor`` runs
each item as a Ray task of one CPU; ray is imported only there, so an install without Ray works.
``make_executor(address)`` picks one: ``None`` in-process, ``"local"`` a Ray cluster of this
machine's cores started for the executor (stopped on ``close()``), else the address of a running
cluster (``ray start --head`` prints it; ``"auto"`` finds one on this machine).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

ENV = "DISTILL_RAY_ADDRESS"  # the one place the engine reads where to run, when a caller passes no executor


@dataclass(frozen=True)
class Result(Generic[R]):
    """What one item gave: its value, or the error of its last attempt; ``attempts`` counts tries."""

    value: R | None = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


OnDone = Callable[[int, Result[Any]], None]


class Executor:
    """Runs ``fn`` over ``items``; subclasses say where. A context manager (``close`` on exit)."""

    in_process: bool = True  # items run in this process: ``fn`` may hold callbacks, tensors on any device

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, on_done: OnDone | None = None, retries: int = 1,
        passes: tuple[type[BaseException], ...] = (),
    ) -> list[Result[R]]:
        """``fn(item)`` per item, in the items' order. An exception of a type in ``passes`` (a run's
        stop, say: not a failure of the item) ends the map at once instead of counting as a failure."""
        raise NotImplementedError

    @property
    def workers(self) -> int:
        """How many items run at once."""
        return 1

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_text(e: BaseException) -> str:
    """One line a table can show: the exception's type and message."""
    return f"{type(e).__name__}: {e}".splitlines()[0][:500]


class InProcess(Executor):
    """Today's behaviour: one item after another, in this process."""

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, on_done: OnDone | None = None, retries: int = 1,
        passes: tuple[type[BaseException], ...] = (),
    ) -> list[Result[R]]:
        results: list[Result[R]] = []
        for i, item in enumerate(items):
            result = attempt(fn, item, retries, passes)
            results.append(result)
            if on_done is not None:
                on_done(i, result)
        return results


def attempt(fn: Callable[[T], R], item: T, retries: int, passes: tuple[type[BaseException], ...] = ()) -> Result[R]:
    """``fn(item)``, tried up to ``1 + retries`` times; the last error if every try failed."""
    error = ""
    for n in range(1, retries + 2):
        try:
            return Result(value=fn(item), attempts=n)
        except passes:
            raise
        except Exception as e:  # noqa: BLE001 - a failed item is reported, not raised: the others' results stay
            error = error_text(e)
    return Result(error=error, attempts=retries + 1)


# ---- Ray ------------------------------------------------------------------------------------------
# One connection per process, shared by every RayExecutor of it (the app runs several runs in
# threads): the first one in connects (or starts the local cluster), the last one out disconnects.
_lock = threading.Lock()
_users = 0
_started_here = False


def _acquire(address: str) -> None:
    global _users, _started_here
    import ray  # here, not at the top: the default (in-process) path must work without ray installed

    with _lock:
        if _users == 0 and not ray.is_initialized():
            if address == "local":
                # workers import this package: make it importable from wherever they start
                root = str(Path(__file__).resolve().parent.parent)
                path = os.environ.get("PYTHONPATH", "")
                if root not in path.split(os.pathsep):
                    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, path) if p)
                # Ray nices its workers (15) to keep itself responsive; here they do all the work while
                # the driver waits, and niced they yield to every other process of a shared machine
                ray.init(num_cpus=usable_cpus(), include_dashboard=False, log_to_driver=False, configure_logging=False,
                         _system_config={"worker_niceness": 0})
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            _started_here = True
        _users += 1


def usable_cpus() -> int:
    """The cores this process may run on (``taskset``, a container's cpuset), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _release() -> None:
    global _users, _started_here
    import ray

    with _lock:
        _users -= 1
        if _users == 0 and _started_here:
            ray.shutdown()  # stops a local cluster; from a running cluster it only disconnects
            _started_here = False


def _single_threaded(fn: Callable[[T], R], item: T) -> R:
    """A Ray task's body: one CPU is what the task asked for, so torch (and any subprocess the item
    starts, through OMP_NUM_THREADS) uses one thread instead of fighting the other tasks for cores."""
    import torch

    # a task is on the cluster already: what it starts runs inside it, not as more tasks that could
    # wait forever for the CPUs their parents hold
    os.environ.pop(ENV, None)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    return fn(item)


class RayExecutor(Executor):
    """Each item a Ray task of ``num_cpus`` CPUs (``num_gpus`` GPUs). ``fn`` travels once through the
    object store (data it holds included), each item as the task's argument, each result back
    through the object store. A task that raises or whose worker dies is submitted again (our own
    retry rather than Ray's ``max_retries``, so a result knows its attempts and both failures are
    handled alike), ``retries`` times, then reported as failed; results already in are kept."""

    in_process = False

    def __init__(self, address: str = "local", num_cpus: float = 1, num_gpus: float = 0) -> None:
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        _acquire(address)
        self._closed = False

    @property
    def workers(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1) // self.num_cpus))

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, on_done: OnDone | None = None, retries: int = 1,
        passes: tuple[type[BaseException], ...] = (),
    ) -> list[Result[R]]:
        import ray

        task = ray.remote(_single_threaded).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)
        fn_ref = ray.put(fn)  # once, not once per task: fn may hold a whole dataset
        tries: dict[Any, tuple[int, int]] = {task.remote(fn_ref, item): (i, 1) for i, item in enumerate(items)}
        results: list[Result[R] | None] = [None] * len(items)
        try:
            while tries:
                done, _ = ray.wait(list(tries), num_returns=1)
                ref = done[0]
                i, n = tries.pop(ref)
                try:
                    result: Result[R] = Result(value=ray.get(ref), attempts=n)
                except Exception as e:  # noqa: BLE001 - the task's error, or its worker died (WorkerCrashedError)
                    if passes and isinstance(getattr(e, "cause", None), passes):
                        raise
                    if n <= retries:
                        tries[task.remote(fn_ref, items[i])] = (i, n + 1)
                        continue
                    result = Result(error=ray_error_text(e), attempts=n)
                results[i] = result
                if on_done is not None:
                    on_done(i, result)  # may raise (a run's stop): the tasks still out are cancelled below
        finally:
            for ref in tries:
                ray.cancel(ref, force=True)
        return [r for r in results if r is not None]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release()


def ray_error_text(e: BaseException) -> str:
    """A Ray task error unwrapped to the task's own exception (a dead worker names itself)."""
    cause = getattr(e, "cause", None)
    return error_text(cause) if isinstance(cause, BaseException) else error_text(e)


def make_executor(address: str | None) -> Executor:
    """In-process for ``None`` or ``""``; otherwise a ``RayExecutor`` on ``address`` (``"local"``: start one here)."""
    return RayExecutor(address) if address else InProcess()


def from_environment() -> Executor:
    """The executor ``$DISTILL_RAY_ADDRESS`` names (in-process when unset): what a caller that was
    handed no executor uses, so ``run --ray`` reaches expert training without threading it through
    the run and its method."""
    return make_executor(os.environ.get(ENV) or None)
