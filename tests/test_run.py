import threading
import time
from dataclasses import replace

import pytest
import torch

from distill_core.config import EvalConfig, RunConfig
from distill_core.evaluation.protocol import Accuracy
from distill_core.nets.networks import NetConfig
from distill_core.runs.manager import JobManager
from distill_core.runs.run import Run, log_rows

QUICK = RunConfig(
    dataset="digits", method="dm", ipc=1, iterations=12, net=NetConfig(width=8, depth=2),
    eval=EvalConfig(nets=1, epochs=5), options={"batch_real": 16},
)


def test_run_to_the_end_and_results():
    run = Run(QUICK, log_every=5)
    snap = run.execute()
    assert snap.status == "done", snap.message
    assert snap.iteration == 12 and len(snap.metrics) == 12
    assert snap.images.shape == (10, 1, 8, 8) and 0 <= snap.images.min() and snap.images.max() <= 1
    r = run.results()
    for key in ("dataset", "method", "init", "ipc", "iterations", "seed", "device", "accuracy", "baseline_random", "seconds"):
        assert key in r
    # the results are the snapshot's evaluations; one network each (5 epochs: near chance, so no margin)
    for key, evaluated in (("accuracy", snap.final), ("baseline_random", snap.baseline)):
        assert r[key] == {k: evaluated[k] for k in ("mean", "std", "n")} | {"values": list(evaluated["values"])}
    assert r["accuracy"]["n"] == 1 and r["accuracy"]["values"] == [r["accuracy"]["mean"]] and r["accuracy"]["std"] == 0
    assert {"distill", "evaluate"} <= set(r["seconds"])


def test_same_seed_same_synthetic_set():
    a, b = Run(QUICK), Run(QUICK)
    a.execute(), b.execute()
    assert torch.equal(a.method.synthetic().images, b.method.synthetic().images)
    assert a.results()["accuracy"] == b.results()["accuracy"]
    c = Run(replace(QUICK, seed=1))
    c.execute()
    assert not torch.equal(a.method.synthetic().images, c.method.synthetic().images)


def test_eval_every_builds_an_accuracy_curve():
    """Checks at step 0 (the initial set) and every 6 steps before the last, then the final evaluation; on digits the
    checks use the final protocol with one network, so the final baseline is drawn beside them."""
    snap = Run(replace(QUICK, eval_every=6)).execute()
    assert [row["iteration"] for row in snap.accuracy] == [0, 6, 12]
    assert snap.check_baseline == snap.baseline is not None


def test_quick_checks_have_their_own_baseline_and_the_final_one_comes_last(tmp_path):
    """Checks under a quicker protocol (fewer epochs, a subset of the test set): their baseline is
    measured first under that protocol, the final one after the final evaluation."""
    check = EvalConfig(nets=1, epochs=2, test_images=50)
    run = Run(replace(QUICK, eval=EvalConfig(nets=2, epochs=4), check=check, eval_every=6), cache_dir=tmp_path)
    phases: list[str] = []
    run.progress = lambda s: phases.append(s.phase) if not phases or phases[-1] != s.phase else None
    snap = run.execute()
    assert snap.status == "done", snap.message
    order = [p for p in phases if p.startswith(("baseline", "checking", "distilling", "final"))]
    assert order == [
        "baseline for the checks: training on random real images (quick protocol)", "checking the initial images",
        "distilling", "final evaluation", "baseline: training on random real images",
    ]
    assert snap.check_baseline["n"] == 1 and snap.baseline["n"] == 2
    checks = [row for row in snap.accuracy if row["n"] == 1]
    assert [row["iteration"] for row in checks] == [0, 6]
    # scored on 50 test images: every check's accuracy is a whole number of fiftieths
    assert all(abs(50 * row["mean"] - round(50 * row["mean"])) < 1e-9 for row in checks + [snap.check_baseline])
    assert run.results()["baseline_random_checks"]["n"] == 1


def test_time_budget_logs_every_iteration_it_ran():
    # a budget that runs out between log intervals: the iterations since the last log still count
    run = Run(replace(QUICK, iterations=100000, time_budget=0.5), log_every=1000)
    snap = run.execute()
    assert snap.status == "done", snap.message
    assert 0 < snap.iteration < 1000
    assert len(snap.metrics) == snap.iteration and snap.metrics[-1]["iteration"] == snap.iteration
    assert f"reached at iteration {snap.iteration} of 100000" in snap.message
    assert run.results()["iterations"] == snap.iteration and snap.final is not None


def test_nan_stops_with_a_message_and_keeps_the_last_good_set(monkeypatch):
    # the images turn NaN after the 5th step (a diverging learning rate is now refused up front)
    from distill_core.methods.dm import DM

    step, calls = DM.step, []

    def diverging(self):
        out = step(self)
        calls.append(1)
        if len(calls) == 5:
            with torch.no_grad():
                self.images_syn.fill_(float("nan"))
        return out

    monkeypatch.setattr(DM, "step", diverging)
    run = Run(replace(QUICK, iterations=40, options={"batch_real": 16}), log_every=1)
    snap = run.execute()
    assert snap.status == "failed"
    assert "NaN or infinite" in snap.message and "last good" in snap.message
    assert torch.isfinite(run.method.synthetic().images).all()
    assert snap.final is not None  # the last good set was still evaluated


def test_stop_and_pause_from_another_thread():
    run = Run(replace(QUICK, iterations=100000), log_every=1, publish_seconds=0)
    run.start()
    deadline = time.time() + 60
    while run.snapshot().iteration < 3 and time.time() < deadline:
        time.sleep(0.05)
    run.pause()
    time.sleep(0.3)
    it = run.snapshot().iteration
    time.sleep(0.3)
    assert run.snapshot().iteration == it and run.snapshot().status == "paused"
    run.step_once()
    while run.snapshot().iteration == it and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert run.snapshot().iteration == it + 1
    run.stop()
    run.join(60)
    assert run.snapshot().status == "stopped" and run.snapshot().final is not None


def test_bad_setting_fails_cleanly():
    snap = Run(replace(QUICK, ipc=500)).execute()
    assert snap.status == "failed" and "ipc=500" in snap.message


def test_config_validation_messages():
    with pytest.raises(ValueError, match="unknown method 'nope'; known: .*dm"):
        RunConfig(method="nope")
    with pytest.raises(ValueError, match="unknown initializer"):
        RunConfig(init="nope")
    with pytest.raises(ValueError, match="ipc"):
        RunConfig(ipc=0)
    with pytest.raises(ValueError, match="unknown option not_an_option for method dm; known: batch_real"):
        RunConfig(options={"not_an_option": 1})
    assert RunConfig.from_dict(QUICK.to_dict()) == QUICK


def test_log_rows_syncs_metrics_to_floats():
    rows = log_rows([(1, {"loss": torch.tensor(2.0)}), (2, {"loss": torch.tensor(3.0), "x": torch.tensor(1.0)})])
    assert rows[0]["loss"] == 2.0 and rows[0]["x"] != rows[0]["x"] and rows[1]["x"] == 1.0


def test_job_manager_bounds_concurrency_and_queues():
    started = []
    gate = threading.Event()

    class Slow(Run):
        def execute(self):
            started.append(self.id)
            gate.wait(30)
            self._publish(status="done")
            return self.snapshot()

    jm = JobManager(max_concurrent=2, run_factory=Slow)
    runs = [jm.submit(QUICK, owner=o) for o in ("a", "b", "c")]
    time.sleep(0.3)
    assert len(started) == 2 and jm.queue_position(runs[2].id) == 1
    assert [r.id for r in jm.runs(owner="c")] == [runs[2].id]
    gate.set()
    deadline = time.time() + 10
    while len(started) < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert started[-1] == runs[2].id and jm.queue_position(runs[2].id) is None


def wait_for(run: Run, phase: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not run.snapshot().phase.startswith(phase) and time.time() < deadline:
        time.sleep(0.02)
    assert run.snapshot().phase.startswith(phase), run.snapshot()


@pytest.mark.parametrize("phase", ["baseline", "final evaluation"])
def test_stop_ends_even_an_endless_evaluation(phase):
    """A run whose evaluation would take days (eval epochs 3000, the limit): Stop ends the baseline at once, and
    during the final evaluation (reached normally) ends it too, keeping the images."""
    huge = EvalConfig(nets=1, epochs=3000)  # the most a run may ask for
    run = Run(replace(QUICK, iterations=3, eval=huge))
    if phase == "final evaluation":
        run.baseline = lambda: Accuracy.of([0.5])  # reach the final evaluation without an endless baseline
    thread = threading.Thread(target=run.execute)
    thread.start()
    wait_for(run, phase)
    time.sleep(0.3)
    t0 = time.time()
    run.stop()
    thread.join(20)
    assert not thread.is_alive() and time.time() - t0 < 10
    snap = run.snapshot()
    assert snap.status == "stopped" and snap.final is None
    if phase == "baseline":
        assert snap.message == "stopped before distillation began"
    else:
        assert "stopped during the final evaluation" in snap.message and snap.iteration == 3 and snap.images is not None


def test_a_first_stop_while_distilling_still_evaluates_what_the_run_has():
    run = Run(replace(QUICK, iterations=100000))
    thread = threading.Thread(target=run.execute)
    thread.start()
    wait_for(run, "distilling")
    run.stop()
    thread.join(60)
    snap = run.snapshot()
    assert snap.status == "stopped" and snap.final is not None and snap.final["n"] == QUICK.eval.nets


def test_baseline_and_evaluation_move_their_own_progress(tmp_path):
    """No phase sits at 0%: the baseline and the final evaluation publish the fraction of their epochs
    done (and a time left), distilling publishes none (its bar is the steps)."""
    run = Run(replace(QUICK, eval=EvalConfig(nets=2, epochs=6)), publish_seconds=0, cache_dir=tmp_path)
    seen: list[tuple[str, float | None, float | None]] = []
    run.progress = lambda s: seen.append((s.phase, s.phase_progress, s.phase_eta))
    assert run.execute().status == "done"
    for phase in ("baseline: training on random real images", "final evaluation"):
        fractions = [f for p, f, _ in seen if p == phase and f is not None]
        assert fractions == sorted(fractions) and len(fractions) >= 6 and fractions[-1] == 1.0
        assert all(eta is not None and eta >= 0 for p, f, eta in seen if p == phase and f)
    assert all(f is None for p, f, _ in seen if p == "distilling")


def test_shutdown_interrupts_the_runs_under_way_and_starts_no_queued_one(tmp_path):
    """SIGTERM: the app's services end every active run between two steps, saved as interrupted
    (resumable), start nothing from the queue, and mark the queued runs interrupted too."""
    from distill_core.runs.jobs import make_services

    S = make_services(str(tmp_path / "runs"), max_concurrent=1, auto_reference=False)
    long = replace(QUICK, iterations=100000)
    running, queued = S.submit(long, owner="a"), S.submit(long, owner="b")
    wait_for(running, "distilling")
    t0 = time.time()
    S.shutdown(timeout=10)
    assert time.time() - t0 < 5
    assert running.snapshot().status == "interrupted" and queued.snapshot().status == "queued"
    assert {r.id: r.status for r in S.store.list()} == {running.id: "interrupted", queued.id: "interrupted"}
    assert S.store.resume_point(running.id) is not None  # it can be resumed from what it saved


def test_a_run_queued_when_the_app_stopped_resumes_once_from_the_start(tmp_path):
    from distill_core.runs.jobs import make_services

    S = make_services(str(tmp_path / "runs"), max_concurrent=1, auto_reference=False)
    long = replace(QUICK, iterations=100000)
    running, queued = S.submit(long, owner="a"), S.submit(replace(QUICK, iterations=4), owner="a")
    wait_for(running, "distilling")
    S.shutdown(timeout=10)
    S2 = make_services(str(tmp_path / "runs"), max_concurrent=1, auto_reference=False)
    assert S2.store.resume_point(queued.id) is None  # it never ran: nothing to continue from
    again = S2.submit(RunConfig.from_dict(S2.store.get(queued.id).config_dict), owner="a", resume_from=queued.id)
    deadline = time.time() + 60
    while again.snapshot().status not in ("done", "failed") and time.time() < deadline:
        time.sleep(0.1)
    assert again.snapshot().status == "done" and again.snapshot().iteration == 4
    with pytest.raises(ValueError, match="not an interrupted run"):  # once only
        S2.submit(RunConfig.from_dict(S2.store.get(queued.id).config_dict), owner="a", resume_from=queued.id)
    S2.shutdown(timeout=10)


def test_checks_follow_the_final_protocol_by_the_dataset_rule():
    from distill_core import data as data_mod
    from distill_core.config import resolve
    from distill_core.evaluation.defaults import CHECK_EPOCHS, CHECK_TEST_IMAGES, check_for

    cfg = resolve(RunConfig(), data_mod.load("digits"))
    assert cfg.check == replace(cfg.eval, nets=1)  # digits: one network of the final protocol
    longer = cfg.with_eval(nets=3, epochs=400)
    assert (longer.eval.nets, longer.eval.epochs) == (3, 400) and longer.check == replace(longer.eval, nets=1)
    assert RunConfig.from_dict(longer.to_dict()) == longer  # the check's protocol is saved and read back
    quick = check_for("fashion-mnist", EvalConfig(nets=3, epochs=300))
    assert (quick.nets, quick.epochs, quick.test_images) == (1, CHECK_EPOCHS, CHECK_TEST_IMAGES)
    assert check_for("fashion-mnist", EvalConfig(nets=3, epochs=20)).epochs == 20  # never longer than the final one
