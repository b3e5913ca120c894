"""The app's runs in worker processes (its default): the same numbers as a run in a thread, the same
controls, a worker's death costs only its run, and the server's death leaves its runs interrupted
(saved, resumable) instead of running on without it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from distill_core.config import EvalConfig, RunConfig
from distill_core.nets.networks import NetConfig
from distill_core.runs.jobs import make_services
from distill_core.runs.run import Run, Snapshot
from distill_core.runs.store import Store
from distill_core.runs.workers import ChangeTracker, apply, merge

ROOT = Path(__file__).resolve().parent.parent
LONG = RunConfig(
    dataset="digits", method="dm", ipc=1, iterations=3000, net=NetConfig(width=8, depth=2),
    eval=EvalConfig(nets=1, epochs=5), options={"batch_real": 16},
)


def until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def services(tmp_path):
    S = make_services(str(tmp_path / "runs"), max_concurrent=1, auto_reference=False, workers="processes")
    yield S
    S.shutdown(10)


def test_changes_carry_only_what_changed_and_rebuild_the_snapshot():
    run = Run(replace(LONG, iterations=3))
    track, sent = ChangeTracker(), []
    run.on_snapshot = lambda snap, syn: sent.append((snap, track(snap)))
    run.execute()
    rebuilt = Snapshot(run.id, {})
    for snap, changes in sent:
        rebuilt = apply(rebuilt, changes)
        assert rebuilt == snap
    # after the first, the growing history travels as its new rows, and the images only when they changed
    later = [c for _, c in sent[1:]]
    assert all("metrics" not in c for c in later) and any(c.get("metrics+") for c in later)
    assert any("images" not in c for c in later)
    # what a Ray actor keeps between two polls: the merge of its changes rebuilds the same snapshot
    merged: dict = {}
    for _, changes in sent[1:]:
        merged = merge(merged, changes)
    assert apply(sent[0][0], merged) == sent[-1][0]


def test_a_run_in_a_worker_process_obeys_pause_step_stop_and_gives_the_threads_numbers(services):
    run = services.submit(LONG, owner="a")
    assert type(run).__name__ == "RemoteRun"
    until(lambda: run.snapshot().iteration >= 5, what="distilling")
    run.pause()
    until(lambda: run.snapshot().status == "paused", what="paused")
    at = run.snapshot().iteration
    time.sleep(0.5)
    assert run.snapshot().iteration == at and run.paused
    run.step_once()
    until(lambda: run.snapshot().iteration == at + 1, what="one step")
    time.sleep(0.3)
    assert run.snapshot().iteration == at + 1 and run.snapshot().status == "paused"
    run.resume()
    until(lambda: run.snapshot().iteration > at + 5, what="resumed")
    services.manager.stop(run.id)
    until(lambda: run.snapshot().done, what="the end")
    snap = run.snapshot()
    assert snap.status == "stopped" and snap.final is not None and snap.images.shape == (10, 1, 8, 8)
    # the worker wrote the store itself: the index row and the final set
    assert services.store.get(run.id).status == "stopped" and services.store.synthetic_path(run.id).exists()
    # the same first steps as a run in this process with the same seed
    here = Run(replace(LONG, iterations=4)).execute()
    for a, b in zip(here.metrics, snap.metrics[:4], strict=True):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])) for k in a if k != "seconds")


def test_a_killed_worker_fails_only_its_run_and_the_next_run_gets_a_new_one(services):
    run = services.submit(LONG, owner="a")
    until(lambda: run.snapshot().iteration >= 3, what="distilling")
    (pid,) = services.backend.pids
    os.kill(pid, signal.SIGKILL)
    until(lambda: run.snapshot().done, what="the run to fail")
    snap = run.snapshot()
    assert snap.status == "failed" and "worker stopped unexpectedly" in snap.message
    assert services.store.get(run.id).status == "failed"
    short = services.submit(replace(LONG, iterations=5), owner="a")
    until(lambda: short.snapshot().done, what="the next run")
    assert short.snapshot().status == "done" and services.backend.pids != [pid]


SERVER = """
import sys, time
from distill_core.config import EvalConfig, RunConfig
from distill_core.nets.networks import NetConfig
from distill_core.runs.jobs import make_services
if __name__ == "__main__":
    S = make_services(sys.argv[1], max_concurrent=1, auto_reference=False, workers="processes")
    run = S.submit(RunConfig(dataset="digits", method="dm", ipc=1, iterations=3000, net=NetConfig(width=8, depth=2),
                             eval=EvalConfig(nets=1, epochs=5), options={"batch_real": 16}), owner="a")
    while run.snapshot().iteration < 20:
        time.sleep(0.05)
    time.sleep(3.5)  # one more save (every 3 s) with a checkpoint
    print(run.id, S.backend.pids[0], flush=True)
    time.sleep(600)
"""


def test_the_server_killed_leaves_its_run_interrupted_and_its_worker_gone_and_the_run_resumes(tmp_path):
    root = tmp_path / "runs"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        run_id, worker = server.stdout.readline().split()
    finally:
        server.kill()  # kill -9: no shutdown code runs in the server
        server.wait()
    # the worker saw its pipe close: it saved the run as interrupted and exited (before any restart)
    store = Store(root)
    until(lambda: store.get(run_id).status == "interrupted", 30, "the run to be interrupted")
    until(lambda: not Path(f"/proc/{worker}").exists() or Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z", 30,
          "the worker to exit")
    S = make_services(str(root), max_concurrent=1, auto_reference=False, workers="threads")
    point = S.store.resume_point(run_id)
    assert point is not None and point.iteration >= 20
    again = S.submit(replace(LONG, iterations=point.iteration + 5), owner="a", resume_from=run_id)
    until(lambda: again.snapshot().done, what="the resumed run")
    assert again.snapshot().status == "done" and again.snapshot().iteration == point.iteration + 5
    S.shutdown()
