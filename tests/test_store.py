"""The run store: runs persist as they go, reload after a restart, active ones become interrupted
(and can be resumed from their checkpoint), deletion, filters, an older index migrates."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import pytest
import torch

from distill_core.artifacts import load_synthetic
from distill_core.config import RunConfig, resolve
from distill_core.data import load
from distill_core.evaluation.protocol import EvalConfig
from distill_core.methods import METHODS
from distill_core.nets.networks import NetConfig
from distill_core.options import option
from distill_core.runs.recorder import Recorder, small_extras
from distill_core.runs.run import Run, Snapshot
from distill_core.runs.store import Store, process_alive, this_process

QUICK = RunConfig(
    dataset="digits",
    method="dm",
    ipc=1,
    iterations=12,
    eval_every=6,
    net=NetConfig(width=8, depth=2),
    eval=EvalConfig(nets=2, epochs=5),
    options={"batch_real": 16},
)


def recorded_run(store: Store, cfg: RunConfig = QUICK, owner: str = "me", label: str = "", **kw) -> Run:
    run = Run(cfg, log_every=3, publish_seconds=0, on_snapshot=Recorder(store, every_seconds=0), **kw)
    store.add(run.snapshot(), owner=owner, label=label)
    return run


def paused_after(run: Run, iterations: int) -> Run:
    """Start ``run`` in its thread and pause it once it has made ``iterations`` steps (a run the app
    was busy with when it "crashed")."""
    run.start()
    deadline = time.time() + 120
    while run.snapshot().iteration < iterations and time.time() < deadline:
        time.sleep(0.05)
    run.pause()
    time.sleep(0.3)
    return run


def test_a_finished_run_survives_a_restart(tmp_path):
    store = Store(tmp_path)
    run = recorded_run(store, label="first")
    run.execute()
    live = run.snapshot()
    assert live.status == "done"

    again = Store(tmp_path)  # a new process would open the same directory
    assert again.mark_interrupted() == []
    [rec] = again.list()
    assert (rec.id, rec.status, rec.owner, rec.label, rec.method, rec.ipc) == (run.id, "done", "me", "first", "dm", 1)
    assert rec.final_mean == live.final["mean"] and rec.baseline_mean == live.baseline["mean"]
    assert rec.iteration == 12 and rec.checks == 2 and rec.timing_dict["distill"] > 0  # steps 0 and 6
    snap = again.load_snapshot(run.id)
    assert (
        snap.status == "done"
        and snap.final["mean"] == live.final["mean"]
        and list(snap.final["values"]) == list(live.final["values"])
    )
    assert [a["iteration"] for a in snap.accuracy] == [a["iteration"] for a in live.accuracy]
    assert len(snap.metrics) == 12 and snap.class_names == live.class_names
    assert torch.equal(snap.images, live.images) and torch.equal(snap.labels, live.labels)
    syn, meta = load_synthetic(again.synthetic_path(run.id))
    assert torch.allclose(syn.images, run.method.synthetic().images) and meta["method"] == "dm"
    frames = again.frames(run.id)
    assert frames[0] == 0 and frames[-1] == 12
    assert again.frame(run.id, 12).shape == live.images.shape
    assert RunConfig.from_dict(rec.config_dict) == RunConfig.from_dict(run.cfg.to_dict())


def test_active_runs_become_interrupted_and_resume_from_their_checkpoint(tmp_path):
    store = Store(tmp_path)
    run = paused_after(recorded_run(store, replace(QUICK, iterations=100000)), 6)
    # the app "crashes" here: a new process opens the store
    again = Store(tmp_path)
    assert again.mark_interrupted() == [run.id]
    rec = again.get(run.id)
    assert rec.status == "interrupted" and "stopped while this run was active" in rec.message
    saved = again.load_snapshot(run.id)
    assert saved.status == "interrupted" and saved.iteration >= 6 and saved.images is not None
    ckpt = again.checkpoint(run.id)
    assert ckpt["iteration"] >= 6 and ckpt["images"].shape == (10, 1, 8, 8)

    cfg = replace(RunConfig.from_dict(rec.config_dict), iterations=ckpt["iteration"] + 6)
    resumed = Run(cfg, log_every=3, resume=again.resume_point(run.id))
    snap = resumed.execute()
    assert snap.status == "done" and snap.iteration == ckpt["iteration"] + 6
    assert snap.metrics[0]["iteration"] == 1 and len(snap.metrics) == ckpt["iteration"] + 6  # the curve carries on
    run.stop()
    run.join(60)


def test_delete_and_filters(tmp_path):
    store = Store(tmp_path)
    a, b = recorded_run(store, owner="a"), recorded_run(store, replace(QUICK, seed=1), owner="b")
    assert {r.id for r in store.list(owner="a")} == {a.id}
    assert {r.id for r in store.list(method="dm", status="queued")} == {a.id, b.id}
    assert store.list(dataset="fashion-mnist") == []
    store.delete(a.id)
    assert store.get(a.id) is None and not store.run_dir(a.id).exists()
    assert [r.id for r in store.list()] == [b.id]


def test_nan_metrics_and_references_are_stored(tmp_path):
    store = Store(tmp_path)
    snap = Snapshot(
        "abc123", QUICK.to_dict(), status="failed", metrics=({"iteration": 1, "loss": float("nan")},), message="loss became NaN"
    )
    store.add(snap)
    store.save(snap, tensors=False)
    json.loads((tmp_path / "abc123" / "state.json").read_text())  # valid JSON despite the NaN
    back = store.load_snapshot("abc123")
    assert back.metrics[0]["loss"] != back.metrics[0]["loss"] and back.message == "loss became NaN"
    store.set_reference("full:digits", {"mean": 0.97})
    assert Store(tmp_path).reference("full:digits") == {"mean": 0.97}
    assert store.load_snapshot("nope") is None


def test_an_older_index_gains_the_new_columns(tmp_path):
    con = sqlite3.connect(tmp_path / "index.sqlite")
    con.execute(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, owner TEXT NOT NULL DEFAULT '', label TEXT NOT NULL DEFAULT '', "
        "created REAL NOT NULL, updated REAL NOT NULL, status TEXT NOT NULL, dataset TEXT NOT NULL, method TEXT NOT NULL, "
        "init TEXT NOT NULL, ipc INTEGER NOT NULL, iteration INTEGER NOT NULL DEFAULT 0, iterations INTEGER NOT NULL DEFAULT 0, "
        "final_mean REAL, final_std REAL, final_n INTEGER, baseline_mean REAL, baseline_std REAL, "
        "seconds REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', config TEXT NOT NULL)"
    )
    con.execute(
        "INSERT INTO runs (id, created, updated, status, dataset, method, init, ipc, config) VALUES "
        "('old1', 1, 1, 'running', 'digits', 'dm', 'random', 1, '{}')"
    )
    con.commit()
    con.close()
    store = Store(tmp_path)
    assert store.mark_interrupted() == ["old1"]
    assert store.get("old1").timing_dict == {} and store.get("old1").status == "interrupted"


def test_small_extras_keep_vectors_and_skip_large_ones():
    out = small_extras({"layer_weights": torch.tensor([0.5, 1.5]), "t": torch.tensor(3.0), "big": torch.zeros(10_000)})
    assert out == {"layer_weights": [0.5, 1.5], "t": 3.0}


def test_a_saved_run_keeps_its_meaning_when_a_default_changes(tmp_path, monkeypatch):
    """config.json holds every resolved option, so a default changed in code later changes neither
    what an old run shows nor how it resumes."""
    store = Store(tmp_path)
    run = recorded_run(store, replace(QUICK, init="sensitivity"))
    run.execute()
    saved = json.loads((tmp_path / run.id / "config.json").read_text())
    assert saved["options"] == {"lr_img": 1.0, "momentum": 0.5, "batch_real": 16, "refresh_every": 20, "score_pool": 128, "weighting": "plain",
                                "syn_weights": "uniform"}
    assert saved["init_options"]["k"] == 10 and saved["init_options"]["net"] is not None  # filled: k = max(ipc, 10), the dataset's net
    assert saved["net"] == {"name": "convnet", "width": 8, "depth": 2, "norm": "instance", "act": "relu", "pool": "avg"}

    dm = METHODS.get("dm")

    @dataclass(frozen=True)
    class Changed(dm.Config):
        lr_img: float = option(7.0, "a default changed in a later version")

    monkeypatch.setattr(dm, "Config", Changed)
    data = load("digits")
    assert resolve(RunConfig(method="dm"), data).options["lr_img"] == 7.0  # a new run gets the new default
    old = RunConfig.from_dict(store.get(run.id).config_dict)
    assert old.method_config().lr_img == 1.0 and resolve(old, data) == old  # the old run still says 1.0
    resumed = Run(replace(old, iterations=QUICK.iterations + 3), resume=store.resume_point(run.id))
    resumed.prepare()
    assert resumed.method.cfg.lr_img == 1.0 and resumed.snapshot().iteration == QUICK.iterations


def test_an_interrupted_run_resumes_once_and_only_for_its_owner(tmp_path):
    from distill_core.runs.jobs import make_services

    store = Store(tmp_path)
    run = paused_after(recorded_run(store, replace(QUICK, iterations=100000), owner="me"), 3)
    services = make_services(str(tmp_path), max_concurrent=1, auto_reference=False)  # the app starts again
    assert services.interrupted == [run.id]
    cfg = replace(RunConfig.from_dict(store.get(run.id).config_dict), iterations=store.checkpoint(run.id)["iteration"] + 3)
    with pytest.raises(ValueError, match="another session"):
        services.submit(cfg, owner="someone else", resume_from=run.id)
    resumed = services.submit(cfg, owner="me", resume_from=run.id)
    assert store.get(run.id).status == "resumed" and resumed.id in store.get(run.id).message
    with pytest.raises(ValueError, match="not an interrupted run"):
        services.submit(cfg, owner="me", resume_from=run.id)
    resumed.join(60)
    deadline = time.time() + 120
    while not resumed.snapshot().done and time.time() < deadline:
        time.sleep(0.1)
    assert resumed.snapshot().status == "done" and store.get(resumed.id).owner == "me"
    run.stop()
    run.join(60)


def test_the_final_set_is_on_disk_before_the_index_says_done(tmp_path, monkeypatch):
    """A crash between the two writes leaves a run listed as active (then interrupted, resumable), never
    a finished run without its synthetic set."""
    store = Store(tmp_path)
    calls: list[tuple[str, str]] = []
    for name in ("save", "save_final", "save_checkpoint"):
        original = getattr(store, name)

        def spy(*args, _name=name, _original=original, **kw):
            snap = args[0] if _name != "save_checkpoint" else None
            calls.append((_name, snap.status if snap is not None else ""))
            return _original(*args, **kw)

        monkeypatch.setattr(store, name, spy)
    recorded_run(store).execute()
    done_save = calls.index(("save", "done"))
    assert ("save_final", "done") in calls[:done_save] and ("save_checkpoint", "") in calls[:done_save]


def test_the_app_starting_leaves_the_runs_of_another_live_process_alone(tmp_path):
    """A CLI run writing into the app's store keeps running when the app starts; a run whose
    process has ended, or was this process, becomes interrupted."""
    store = Store(tmp_path)
    for run_id in ("cli", "dead", "mine"):
        store.add(Snapshot(run_id, QUICK.to_dict(), status="running"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        host = this_process().split(":")[0]
        start = open(f"/proc/{other.pid}/stat").read().rsplit(")", 1)[1].split()[19]
        with sqlite3.connect(tmp_path / "index.sqlite") as con:
            con.execute("UPDATE runs SET process = ? WHERE id = 'cli'", (f"{host}:{other.pid}:{start}",))
            con.execute("UPDATE runs SET process = ? WHERE id = 'dead'", (f"{host}:{finished.stdout.strip()}:1",))
        assert process_alive(f"{host}:{other.pid}:{start}") and not process_alive(f"{host}:{other.pid}:0")
        assert sorted(Store(tmp_path).mark_interrupted()) == ["dead", "mine"]
        assert store.get("cli").status == "running" and store.get("mine").status == "interrupted"
    finally:
        other.kill()
        other.wait()
    assert Store(tmp_path).mark_interrupted() == ["cli"]  # its process has now ended


def test_precision_defaults_to_fp32_on_digits_and_auto_elsewhere_and_is_kept_when_given():
    assert resolve(QUICK, load("digits")).precision == "fp32"
    assert replace(QUICK, dataset="fashion-mnist").chosen_precision() == "auto"
    assert replace(QUICK, dataset="/data/mine.npz", precision="fp32").chosen_precision() == "fp32"
    assert resolve(replace(QUICK, precision="bf16"), load("digits")).precision == "bf16"
