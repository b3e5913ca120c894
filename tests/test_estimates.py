"""The cost shown before a run (``distill_core.runs.estimates``): it follows the expert cache as it fills,
and times a few steps of a method that needs no experts."""
from __future__ import annotations

from dataclasses import replace

from distill_core.config import RunConfig, resolve
from distill_core.data import load
from distill_core.evaluation.protocol import EvalConfig
from distill_core.methods import experts
from distill_core.nets.networks import NetConfig
from distill_core.runs.estimates import estimate, expert_cost
from distill_core.runs.store import Store

SMALL = RunConfig(
    dataset="digits", method="mtt", ipc=1, iterations=10, net=NetConfig(width=8, depth=1), eval=EvalConfig(nets=1, epochs=2),
    options={"expert_count": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "expert_epochs": 1, "syn_steps": 2},
)


def test_the_expert_line_follows_the_cache(tmp_path):
    data = load("digits")
    cfg = resolve(SMALL, data)
    before = estimate(cfg, data, Store(tmp_path / "runs"), cache_dir=tmp_path)
    assert before.needs_experts and not before.experts_ready and before.expert_seconds > 0
    assert "1 of 1 networks must first be trained" in " ".join(before.lines)
    spec = cfg.method_config().expert_spec()
    experts.load_or_train(data, cfg.net, cfg.strategy, spec, tmp_path)
    assert expert_cost(data, cfg, tmp_path).cached == 1
    after = estimate(cfg, data, Store(tmp_path / "runs"), cache_dir=tmp_path)
    assert after.experts_ready and after.expert_seconds == 0
    assert "1 already trained and saved" in " ".join(after.lines)


def test_a_method_without_experts_is_timed(tmp_path):
    data = load("digits")
    cfg = resolve(replace(SMALL, method="dm", options={}), data)
    est = estimate(cfg, data, Store(tmp_path))
    assert not est.needs_experts and est.seconds is not None and 0 < est.seconds < 60
    assert est.lines[0].startswith("Time: about")


def test_an_earlier_run_prices_the_checks_by_their_network_epochs(tmp_path):
    """An earlier run's evaluation time, scaled by network-epochs: quick checks (fewer epochs) cost a
    fraction of checks of the final protocol, and no checks cost only the final evaluation."""
    from distill_core.runs.recorder import Recorder
    from distill_core.runs.run import Run

    data = load("digits")
    store = Store(tmp_path / "runs")
    past = resolve(replace(SMALL, method="dm", options={}, iterations=6, eval=EvalConfig(nets=1, epochs=20), eval_every=3), data)
    run = Run(past, on_snapshot=Recorder(store, every_seconds=0), cache_dir=tmp_path)
    store.add(run.snapshot(), owner="me")
    assert run.execute().status == "done"
    full = estimate(replace(past, iterations=30, eval_every=3), data, store).seconds
    quick = estimate(replace(past, iterations=30, eval_every=3, check=replace(past.check, epochs=2)), data, store).seconds
    none = estimate(replace(past, iterations=30, eval_every=0), data, store).seconds
    assert none < quick < full
