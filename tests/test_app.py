"""The Streamlit pages under AppTest: every page alone and through the app's navigation; the Distill
page driven through a short digits run to its final accuracy; pause/step/stop; the in-page
messages for an impossible IPC, a malformed upload, a method whose experts cannot be trained here;
guided links; compare, inside and delete.

``run_every`` fragments do not fire under AppTest: the tests wait for the run's thread, then re-run.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import stored_run, wait_done
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["distill", "initializations", "inside", "compare", "learn"]
# a tiny network and a short check keep every run to a few seconds
TINY = {"steps": "12", "eval_nets": "1", "eval_epochs": "5", "width": "8", "check_every": "6"}


pytestmark = pytest.mark.usefixtures("runs_dir")  # conftest: own runs directory, fresh services


def app(page: str | None = None, **params: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / ("app.py" if page is None else f"views/{page}.py")), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [e.value for e in at.warning]
    parts += [e.value for e in at.info] + [e.value for e in at.success] + [e.value for e in at.caption]
    return "\n".join(str(p) for p in parts)


def services():
    from ui.services import services as s

    return s()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_alone(page):
    at = app(page)
    if page == "initializations":
        at.session_state["umap"] = False  # the map has its own test
    at.run()
    no_exception(at)
    assert at.title


def test_navigation_reaches_every_page():
    at = app()
    at.run()
    no_exception(at)
    assert at.title[0].value == "Distill a dataset"
    assert at.selectbox(key="dataset").value == "digits" and at.selectbox(key="method").value == "dm"
    assert at.number_input(key="ipc").value == 1
    for page in PAGES[1:]:
        if page == "initializations":
            at.session_state["umap"] = False
        at.switch_page(f"views/{page}.py").run()
        no_exception(at)


def test_distill_page_runs_digits_to_its_final_accuracy():
    at = app(**TINY)
    at.run()
    no_exception(at)
    assert "Before you start" in texts(at)
    at.button(key="start").click().run()
    no_exception(at)
    run_id = at.session_state["current_run"]
    assert at.query_params["run"] in (run_id, [run_id])  # the view is in the URL
    wait_done(run_id)
    at.run()
    no_exception(at)
    assert "Finished" in texts(at)
    labels = {m.label: m.value for m in at.metric}
    assert "Distilled set (1 networks)" in labels and labels["Distilled set (1 networks)"].endswith("%")
    assert labels["Random real images (1 per class)"].endswith("%")
    assert len(at.get("download_button")) == 3  # PNG, .safetensors, .npz
    snap = services().snapshot(run_id)
    assert snap.status == "done" and [a["iteration"] for a in snap.accuracy] == [0, 6, 12]  # the initial set, a check, the end
    assert services().store.get(run_id).status == "done"  # persisted as it went


def test_pause_step_and_stop_from_the_page():
    at = app(**{**TINY, "steps": "100000"})
    at.run()
    at.button(key="start").click().run()
    run = services().manager.get(at.session_state["current_run"])
    deadline = time.time() + 180  # generous: on a machine loaded by other runs the baseline and first steps take minutes
    while run.snapshot().iteration < 2 and time.time() < deadline:
        time.sleep(0.05)
    at.run()
    at.button(key="pause").click().run()
    no_exception(at)
    assert run.paused
    deadline = time.time() + 180  # the step in flight ends first
    while run.snapshot().status != "paused" and time.time() < deadline:
        time.sleep(0.05)
    assert run.snapshot().status == "paused", f"not paused after 180 s: {run.snapshot().status}"
    it = run.snapshot().iteration
    at.run()
    at.button(key="step").click().run()
    deadline = time.time() + 30
    while run.snapshot().iteration == it and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert run.snapshot().iteration == it + 1 and run.paused
    at.run()
    at.button(key="stop").click().run()
    wait_done(run.id)
    at.run()
    assert run.snapshot().status == "stopped" and "Stopped" in texts(at)


def test_a_reload_of_the_same_address_keeps_control_of_the_run():
    first = app(**{**TINY, "steps": "100000"})
    first.run()
    first.button(key="start").click().run()
    run_id = first.session_state["current_run"]
    sid = first.query_params["sid"]
    sid = sid[0] if isinstance(sid, list) else sid
    assert services().manager.owner(run_id) == sid
    other = app(**{**TINY, "run": run_id})  # another browser: watches, cannot control
    other.run()
    no_exception(other)
    assert "you can watch it, not control it" in texts(other)
    assert not [b for b in other.button if b.key == "stop"]
    reloaded = app(**{**TINY, "run": run_id, "sid": sid})  # a new session from the same address
    reloaded.run()
    no_exception(reloaded)
    assert reloaded.session_state["session_id"] == sid
    reloaded.button(key="stop").click().run()
    wait_done(run_id)
    reloaded.run()
    no_exception(reloaded)
    assert services().snapshot(run_id).status == "stopped" and "Stopped" in texts(reloaded)


def test_a_run_beyond_the_limit_waits_in_the_queue_and_then_runs(monkeypatch):
    from ui import services as services_mod

    monkeypatch.setenv("DISTILL_MAX_RUNS", "2")
    services_mod.services.clear()
    sessions = [app(**{**TINY, "steps": "40"}) for _ in range(3)]  # three browser sessions
    for at in sessions:
        at.run()
        at.button(key="start").click().run()
    ids = [at.session_state["current_run"] for at in sessions]
    assert len(set(ids)) == 3
    m = services().manager
    assert m.queue_position(ids[2]) == 1 and m.owner(ids[2]) != m.owner(ids[0])
    sessions[2].run()
    assert "Waiting in the queue: position 1" in texts(sessions[2])
    for run_id in ids:
        wait_done(run_id, timeout=240)
    for at, run_id in zip(sessions, ids, strict=True):
        at.run()
        assert services().snapshot(run_id).status == "done" and "Finished" in texts(at)


def test_switching_pages_during_a_run_and_coming_back_finds_it():
    at = app(**{**TINY, "steps": "100000"})
    at.run()
    at.button(key="start").click().run()
    run_id = at.session_state["current_run"]
    at.switch_page("views/compare.py").run()
    no_exception(at)
    at.switch_page("views/distill.py").run()
    no_exception(at)
    assert services().snapshot(run_id).status in ("preparing", "running")
    assert any(h.value.startswith("DM from random") for h in at.subheader)
    assert at.button(key="stop")  # still ours to control


def test_ipc_larger_than_a_class_gets_a_message():
    at = app(ipc="500")
    at.run()
    no_exception(at)
    assert any("more than this dataset has" in e.value for e in at.error)
    assert at.button(key="start").disabled


def test_a_method_whose_experts_cannot_be_trained_here_explains_why():
    from dataclasses import fields

    from distill_core.methods import METHODS

    trajectory = [n for n in METHODS.names() if "expert_budget_s" in {f.name for f in fields(METHODS.get(n).Config)}]
    if not trajectory:
        pytest.skip("no trajectory-matching method is registered")
    method = trajectory[0]
    # a width no cached expert has, and a budget no expert training fits in
    at = app(**{**TINY, "method": method, f"{method}.expert_budget_s": "0.001", "width": "12"})
    at.run()
    no_exception(at)
    assert "Experts:" in texts(at)  # the estimate of their cost is shown before the start
    at.button(key="start").click().run()
    wait_done(at.session_state["current_run"])
    at.run()
    no_exception(at)
    [err] = [e.value for e in at.error]
    assert "This run failed" in err and "expert" in err and "budget" in err


def test_after_a_restart_finished_runs_keep_their_results_and_active_ones_are_interrupted(runs_dir):
    from distill_core.runs.run import Snapshot
    from distill_core.runs.store import Store
    from ui import services as services_mod

    at = app(**TINY)
    at.run()
    at.button(key="start").click().run()
    finished = at.session_state["current_run"]
    wait_done(finished)
    # a run that was going when the app process died: the index still says "running"
    crashed = Snapshot("crashed001", services().snapshot(finished).config, status="running", iteration=5, iterations=12)
    Store(runs_dir).add(crashed)
    Store(runs_dir).save(crashed, tensors=False)
    services_mod.services.clear()  # the app starts again
    cmp = app("compare")
    cmp.run()
    no_exception(cmp)
    assert "were still going when the app last stopped" in texts(cmp)
    df = cmp.dataframe[0].value.set_index("id")
    assert df.loc[finished, "status"] == "Finished" and df.loc[finished, "accuracy"].endswith("%")
    assert df.loc["crashed001", "status"] == "Interrupted"


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_uploads_are_validated_with_clear_messages(runs_dir):
    at = app()
    at.run()
    at.file_uploader(key="upload").set_value(("broken.npz", b"not a zip file", "application/octet-stream")).run()
    no_exception(at)
    assert any("broken.npz cannot be used" in e.value and "not a readable .npz" in e.value for e in at.error)
    at.file_uploader(key="upload").set_value(
        ("half.npz", npz_bytes(x_train=np.zeros((4, 8, 8))), "application/octet-stream")
    ).run()
    assert any("lacks" in e.value and "y_train" in e.value for e in at.error)
    rng = np.random.default_rng(0)
    good = npz_bytes(
        x_train=rng.random((30, 8, 8)),
        y_train=np.repeat(np.arange(3), 10),
        x_test=rng.random((9, 8, 8)),
        y_test=np.repeat(np.arange(3), 3),
    )
    at.file_uploader(key="upload").set_value(("mine.npz", good, "application/octet-stream")).run()
    no_exception(at)
    assert any("mine.npz** loaded: 30 training and 9 test images" in s.value for s in at.success)
    assert at.selectbox(key="dataset").value.endswith(".npz")
    assert len(list((runs_dir / "uploads").rglob("*.npz"))) == 1  # the broken ones were not kept
    assert "upload mine" in at.selectbox(key="dataset").options  # the options show as labels
    other = app()  # another browser session does not see it
    other.run()
    assert "upload mine" not in other.selectbox(key="dataset").options
    at.checkbox(key="share_upload").check().run()  # shared on purpose: now everyone does
    at.file_uploader(key="upload").set_value(("ours.npz", good, "application/octet-stream")).run()
    assert "/shared/" in at.selectbox(key="dataset").value
    other.run()
    assert "upload ours" in other.selectbox(key="dataset").options and "upload mine" not in other.selectbox(key="dataset").options


def test_guided_link_locks_its_settings():
    at = app(guided="1", method="dm", ipc="2")
    at.run()
    no_exception(at)
    assert "Guided mode" in texts(at)
    assert at.selectbox(key="method").disabled and at.number_input(key="ipc").disabled
    assert at.number_input(key="ipc").value == 2
    assert not at.selectbox(key="init").disabled  # not set by the link: free


def inside_a_finished_run(**params: str) -> tuple[AppTest, str, AppTest]:
    """Start a run on the Distill page with ``params``, wait for it, open Inside on it: (the Distill
    page, the run's id, the Inside page)."""
    at = app(**params)
    at.run()
    at.button(key="start").click().run()
    run_id = at.session_state["current_run"]
    wait_done(run_id)
    inside = app("inside", run=run_id)
    inside.run()
    no_exception(inside)
    return at, run_id, inside


def test_compare_inside_and_delete_past_runs():
    at, run_id, inside = inside_a_finished_run(**TINY)
    assert "does not use expert trajectories" in texts(inside) and "hard labels" in texts(inside)
    other = app("compare", runs=run_id)  # another session sees the run but may not delete it
    other.run()
    no_exception(other)
    assert not [b for b in other.button if b.key == "delete"] and "started by another session" in texts(other)
    cmp = app("compare", runs=run_id, sid=at.session_state["session_id"])  # the owner's session (its address)
    cmp.run()
    no_exception(cmp)
    df = cmp.dataframe[0].value
    assert list(df["id"]) == [run_id] and df["status"][0] == "Finished" and df["accuracy"][0].endswith("%")
    cmp.button(key="delete").click().run()
    cmp.button(key="confirm_delete").click().run()
    no_exception(cmp)
    assert services().store.get(run_id) is None


def test_compare_sets_finished_runs_beside_the_published_figures(runs_dir):
    """Compare's "Against the published figures": the reproduce table of the store's finished runs that
    have a published cell; without any, a line says which cells have one and the command that runs them."""
    from distill_core.runs.store import Store

    empty = app("compare")
    empty.run()
    no_exception(empty)
    assert "No finished run has a published figure" in texts(empty) and "distill_core reproduce" in texts(empty)
    store = Store(runs_dir)
    stored_run(store, "fm0000001", "fashion-mnist", "dm", 10, 0.80, 0.002)
    stored_run(store, "fm0000002", "fashion-mnist", "dm", 10, 0.82, 0.002)
    stored_run(store, "fm0000003", "fashion-mnist", "mtt", 10, 0.78, 0.01)
    cmp = app("compare")
    cmp.run()
    no_exception(cmp)
    table = next(d.value for d in cmp.dataframe if "published %" in d.value.columns)
    assert len(table) == 1  # none for MTT on Fashion-MNIST
    row = table.iloc[0]
    assert (row["dataset"], row["method"], row["ipc"], row["tier"]) == ("fashion-mnist", "dm", "10", "quick")
    assert row["published %"] == "83.5 (third-party)" and row["Δ points"] == "-2.5"
    assert row["across runs %"] == "81.0 ± 1.0 (2 runs)"
    assert "third-party reruns" in texts(cmp)


def test_inside_shows_importance_sampling_from_a_fresh_pool():
    """Digits classes hold about 144 training images, more than the 128 a refresh scores per class: the
    Inside page says how many of the 1,437 were scored, and draws the histogram of those alone."""
    at, _, inside = inside_a_finished_run(**TINY, sampling="importance")
    assert at.selectbox(key="sampling").value == "importance"
    assert "Importance sampling of real images" in [h.value for h in inside.subheader]
    assert "a fresh random pool, 1,280 of the 1,437 real images now" in texts(inside)


def test_coreset_weights_are_set_on_the_distill_page_and_shown_inside():
    """syn_weights from a link (DM's option and the checks'): the run weighs both, and Inside shows the
    weights with where they were used; from random images the page refuses the setting with the reason."""
    refused = app(**TINY, init="random", **{"dm.syn_weights": "coreset"})
    refused.run()
    no_exception(refused)
    assert "initializer random gives none" in texts(refused)
    at, run_id, inside = inside_a_finished_run(**TINY, init="sensitivity", eval_syn_weights="coreset", **{"dm.syn_weights": "coreset"})
    config = services().snapshot(run_id).config
    assert config["options"]["syn_weights"] == "coreset" and config["eval"]["syn_weights"] == "coreset"
    assert ("This run uses them (setting syn_weights: coreset): DM weighs the synthetic mean of a class; "
            "the evaluation weighs each image's loss.") in texts(inside)


def test_initializations_page_maps_and_starts_one_run_per_initializer():
    at = app("initializations", **TINY)
    at.run()
    no_exception(at)
    chosen = at.multiselect(key="inits").value
    assert len(chosen) >= 2
    assert len(at.get("plotly_chart")) >= len(chosen)  # a map (and scores where the initializer has them) per column
    at.button(key="start_all").click().run()
    no_exception(at)
    group = at.session_state["init_group"]
    assert len(group) == len(chosen)
    assert sorted(services().snapshot(r).config["init"] for r in group) == sorted(chosen)


def test_initializations_page_passes_the_feature_space_to_the_initializer_and_the_runs():
    at = app("initializations", **TINY)
    at.session_state["umap"] = False
    at.run()
    at.multiselect(key="inits").set_value(["random", "sensitivity"]).run()
    no_exception(at)
    keys = {w.key for w in at.selectbox} | {w.key for w in at.number_input}
    assert "init.sensitivity.features" in keys and "init.sensitivity.k" in keys
    assert not any(k.startswith("init.random.") for k in keys)  # shown only where the initializer takes it
    at.selectbox(key="init.sensitivity.features").set_value("embedding").run()
    at.number_input(key="init.sensitivity.k").set_value(2).run()
    no_exception(at)
    at.button(key="start_all").click().run()
    no_exception(at)
    runs = {services().snapshot(r).config["init"]: r for r in at.session_state["init_group"]}
    for run_id in runs.values():
        wait_done(run_id)
    saved = services().store.load_snapshot(runs["sensitivity"]).config["init_options"]  # resolved: every option it used
    assert (saved["features"], saved["k"], saved["lloyd"], saved["train_steps"]) == ("embedding", 2, False, 200)
    assert services().store.load_snapshot(runs["random"]).config["init_options"] == {}
    assert services().snapshot(runs["sensitivity"]).status == "done"


def test_distill_page_takes_the_initializer_options_from_the_link():
    at = app(**TINY, init="sensitivity", **{"init.sensitivity.features": "embedding", "init.sensitivity.k": "2"})
    at.run()
    no_exception(at)
    assert at.selectbox(key="init.sensitivity.features").value == "embedding"
    assert at.number_input(key="init.sensitivity.k").value == 2
    at.button(key="start").click().run()
    no_exception(at)
    run_id = at.session_state["current_run"]
    saved = services().snapshot(run_id).config["init_options"]
    assert (saved["features"], saved["k"], saved["lloyd"]) == ("embedding", 2, False)
    at.selectbox(key="init").set_value("random").run()
    no_exception(at)
    assert not any(w.key.startswith("init.") for w in at.selectbox if w.key != "init")


def test_full_data_accuracy_is_measured_once_and_shown(monkeypatch):
    from distill_core.runs import jobs
    from ui import services as services_mod

    monkeypatch.setenv("DISTILL_AUTO_REFERENCE", "1")
    monkeypatch.setattr(jobs, "FULL_EPOCHS", 2)  # the protocol's shape, not its length, is under test
    services_mod.services.clear()
    at = app(**TINY)
    at.run()
    services().references.join(120)
    at.button(key="start").click().run()
    wait_done(at.session_state["current_run"])
    at.run()
    labels = {m.label: m.value for m in at.metric}
    assert labels["All training images"].endswith("%")
    assert services().store.list()[0].status == "done"


def test_learn_page_explains_every_method_and_links_to_it():
    from distill_core.methods import METHODS

    at = app("learn")
    at.run()
    no_exception(at)
    labels = [e.label for e in at.expander]
    for name in METHODS.names():
        assert any(lbl.startswith(f"**{name.upper()}**") for lbl in labels)
    assert len(at.latex) >= 1
