"""Redraws of a live run cost one build per snapshot version, whatever the number of viewers: the
snapshot's version grows with every publish, the figures and image strips are built once per (run,
version) and shared, and pages poll less often for runs nobody watching them controls."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import torch

from distill_core.config import RunConfig
from distill_core.evaluation.protocol import EvalConfig
from distill_core.nets.networks import NetConfig
from distill_core.runs.run import Run, Snapshot
from distill_core.runs.store import decode_snapshot, encode_snapshot
from ui import charts, images, runview
from ui.cache import VIEWS, ViewCache

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # st.* calls outside a server ("bare mode")


def live_snapshot(version: int = 7, iteration: int = 40) -> Snapshot:
    """A mid-run snapshot of a 10-class, 2-per-class run: images, a loss curve, one accuracy check."""
    g = torch.Generator().manual_seed(0)
    return Snapshot(
        run_id="redrawtest",
        config={"method": "dm", "dataset": "digits", "init": "random", "ipc": 2},
        status="running",
        iteration=iteration,
        iterations=100,
        images=torch.rand(20, 1, 8, 8, generator=g),
        labels=torch.arange(10).repeat_interleave(2),
        class_names=tuple(str(c) for c in range(10)),
        metrics=tuple({"iteration": i, "loss": 1.0 / (i + 1)} for i in range(iteration)),
        accuracy=({"iteration": 20, "mean": 0.4, "std": 0.0, "n": 1},),
        baseline={"mean": 0.3, "std": 0.02, "n": 2},
        version=version,
    )


@pytest.fixture
def counted(monkeypatch):
    """Counts of the builders: accuracy figures, and class strips encoded as PNG."""
    VIEWS.clear()
    calls = {"figure": 0, "strip": 0}
    figure, strip = charts.accuracy_figure, images.class_strip

    def counting_figure(*a, **kw):
        calls["figure"] += 1
        time.sleep(0.05)  # a slow build: viewers arriving meanwhile must wait for it, not repeat it
        return figure(*a, **kw)

    def counting_strip(*a, **kw):
        calls["strip"] += 1
        return strip(*a, **kw)

    monkeypatch.setattr(charts, "accuracy_figure", counting_figure)
    monkeypatch.setattr(images, "class_strip", counting_strip)
    yield calls
    VIEWS.clear()


def redraw(snap: Snapshot) -> None:
    """What a viewer's redraw draws from the snapshot (the Distill page's fragment, less the store)."""
    runview.headline(snap, None)
    runview.show_images(snap)
    runview.curves(snap, None, key=snap.run_id)


def test_six_viewers_of_one_version_cause_one_build_and_a_new_version_one_more(counted):
    snap = live_snapshot()
    viewers = 6
    start = threading.Barrier(viewers)
    errors: list[BaseException] = []

    def viewer() -> None:
        try:
            start.wait()  # all at once, as six browser sessions polling the same second
            redraw(snap)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=viewer) for _ in range(viewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert counted == {"figure": 1, "strip": 10}  # one figure, one strip per class, for six viewers
    for _ in range(3):
        redraw(snap)  # the same viewers polling again with nothing new
    assert counted == {"figure": 1, "strip": 10}

    newer = replace(snap, version=snap.version + 1, iteration=41)
    for _ in range(viewers):
        redraw(newer)
    assert counted == {"figure": 2, "strip": 20}


def test_the_accuracy_figure_changes_when_the_full_data_reference_arrives(counted):
    snap = live_snapshot()
    runview.curves(snap, None, key="a")
    runview.curves(snap, {"mean": 0.97, "source": "measured here"}, key="a")
    runview.curves(snap, {"mean": 0.97, "source": "measured here"}, key="a")
    assert counted["figure"] == 2


def test_a_cached_view_equals_a_fresh_one():
    snap = live_snapshot()
    VIEWS.clear()
    shared = runview.snapshot_view(snap, "curves-test", lambda: runview.curves_of(snap, None))
    fresh = runview.curves_of(snap, None)
    assert shared.accuracy.to_json() == fresh.accuracy.to_json() and shared.loss.to_json() == fresh.loss.to_json()
    view = images.per_class_view(snap.images, snap.class_names, 2, snap.labels)
    assert [c.name for c in view.columns] == [str(c) for c in range(10)]
    assert all(c.png.startswith(b"\x89PNG") for c in view.columns)
    VIEWS.clear()


def test_the_cache_is_bounded_and_refreshes_old_entries():
    cache = ViewCache(max_entries=3)
    for k in range(5):
        cache.get(k, lambda k=k: k * 10)
    assert cache.builds == 5 and cache.get(4, lambda: -1) == 40 and cache.get(0, lambda: -1) == -1
    cache.get("ref", lambda: None, max_age=60)
    assert cache.get("ref", lambda: "measured", max_age=60) is None  # None is a value, kept
    assert cache.get("ref", lambda: "measured", max_age=0.0) == "measured"  # older than max_age: built again


def test_every_publish_makes_a_new_version_that_the_store_keeps():
    cfg = RunConfig(
        dataset="digits", method="dm", ipc=1, iterations=3, eval_every=0,
        net=NetConfig(width=8, depth=2), eval=EvalConfig(nets=1, epochs=1), options={"batch_real": 8},
    )
    seen: list[int] = []
    run = Run(cfg, publish_seconds=0, on_snapshot=lambda snap, syn: seen.append(snap.version))
    assert run.snapshot().version == 0
    run.pause()
    run.resume()
    run.execute()
    assert seen == list(range(1, len(seen) + 1)) and run.snapshot().version == len(seen) > 3
    snap = run.snapshot()
    state, tensors = encode_snapshot(snap)
    assert decode_snapshot(snap.run_id, {**state, "config": snap.config}, tensors).version == snap.version


@pytest.mark.parametrize(
    ("status", "owned", "seconds"),
    [
        ("running", True, runview.POLL_SECONDS),
        ("preparing", True, runview.POLL_SECONDS),
        ("running", False, runview.POLL_WATCHER),
        ("paused", True, runview.POLL_OWNER_PAUSED),
        ("paused", False, runview.POLL_IDLE),
        ("queued", True, runview.POLL_IDLE),
        ("done", True, None),
        ("interrupted", False, None),
    ],
)
def test_polling_slows_for_watchers_and_idle_runs(status, owned, seconds):
    assert runview.poll_seconds(status, owned, queue_position=2 if status == "queued" else None) == seconds
    # a run just started, not yet reported by its worker ("queued" in no queue): its owner polls fast
    assert runview.poll_seconds("queued", True, None) == runview.POLL_SECONDS
    assert runview.poll_seconds("queued", False, None) == runview.POLL_IDLE
    assert runview.POLL_SECONDS < runview.POLL_WATCHER <= runview.POLL_IDLE
