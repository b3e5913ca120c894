"""The paper and quick tiers, the overrides resolve finds, the provenance in results.json, the
reproduction table and the cache command."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import stored_run, tiny_data

from distill_core import tiers
from distill_core.cli import main
from distill_core.config import RunConfig, recount_overrides, resolve
from distill_core.methods import METHODS
from distill_core.studies import published, reproduce


def named(name: str, classes: int = 10, side: int = 8, channels: int = 1):
    return replace(tiny_data(classes=classes, per_class=12, side=side, channels=channels), name=name)


@pytest.fixture(scope="module")
def mnist():
    return named("mnist", side=28)


@pytest.fixture(scope="module")
def cifar10():
    return named("cifar10", side=32, channels=3)


def test_paper_tier_is_the_authors_dm_on_mnist(mnist):
    cfg = resolve(RunConfig(dataset="mnist", method="dm", ipc=10, tier="paper"), mnist)
    assert cfg.tier == "paper" and cfg.overrides == ()
    assert cfg.iterations == 20000 and cfg.options["batch_real"] == 256  # main_DM.py: Iteration, batch_real
    assert (cfg.eval.nets, cfg.eval.epochs, cfg.eval.augment) == (20, 1000, True)
    assert resolve(cfg, mnist) == cfg  # idempotent: nothing the tier set reads back as overridden


def test_paper_tier_dc_and_dsa_loops_and_protocols(mnist):
    dsa = resolve(RunConfig(dataset="mnist", method="dsa", ipc=10, tier="paper"), mnist)
    assert (dsa.options["outer_loop"], dsa.options["inner_loop"]) == (10, 50) and dsa.iterations == 1000
    assert dsa.options["momentum_net"] == 0.0 and dsa.options["batch_real"] == 256
    assert (dsa.eval.nets, dsa.eval.epochs) == (20, 1000)
    one = resolve(RunConfig(dataset="mnist", method="dc", ipc=1, tier="paper"), mnist)
    assert (one.options["outer_loop"], one.options["inner_loop"]) == (1, 1)
    fmnist = named("fashion-mnist", side=28)
    dc = resolve(RunConfig(dataset="fashion-mnist", method="dc", ipc=10, tier="paper"), fmnist)
    assert (dc.eval.epochs, dc.eval.augment) == (300, False)  # DC without augmentation off MNIST


def test_paper_tier_mtt_and_datm_on_cifar10(cifar10):
    mtt = resolve(RunConfig(dataset="cifar10", method="mtt", ipc=10, tier="paper"), cifar10)
    o = mtt.options
    assert (o["syn_steps"], o["expert_epochs"], o["max_start_epoch"]) == (30, 2, 20)
    assert (o["expert_count"], o["expert_train_epochs"]) == (100, 50) and mtt.iterations == 5000
    assert (mtt.eval.nets, mtt.eval.epochs) == (5, 1000)
    datm = resolve(RunConfig(dataset="cifar10", method="datm", ipc=10, tier="paper"), cifar10)
    o = datm.options
    assert (o["syn_steps"], o["initial_max_start_epoch"], o["max_start_epoch"], o["expansion_iterations"]) == (80, 10, 20, 1000)
    assert (o["expert_count"], o["expert_train_epochs"], o["lr_label"], o["batch_syn"]) == (100, 100, 2.0, 100)
    assert datm.iterations == 10000 and datm.eval.batch == 128


def test_nearest_published_setting_is_said():
    p = tiers.paper_settings("mtt", "fashion-mnist", 10, 1)
    assert p.options["syn_steps"] == 50 and any("did not run" in n and "CIFAR-10 IPC 1" in n for n in p.notes)
    # only options the method's Config has
    for method in ("dm", "dc", "dsa", "mtt", "datm", "iadd", "krr"):
        known = set(METHODS.get(method).Config.__dataclass_fields__)
        assert set(tiers.paper_settings(method, "cifar10", 10, 10).options) <= known


def test_default_tier_by_device_and_dataset(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tiers.default_tier("mnist", "auto") == "paper" and tiers.default_tier("cifar100", "cuda") == "paper"
    assert tiers.default_tier("digits", "auto") == "quick" and tiers.default_tier("/tmp/x.npz", "cuda") == "quick"
    assert tiers.default_tier("mnist", "cpu") == "quick"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tiers.default_tier("fashion-mnist", "auto") == "quick"


def test_quick_tier_is_todays_defaults_and_default_on_cpu(mnist):
    cfg = resolve(RunConfig(dataset="mnist", method="dm", ipc=10, device="cpu"), mnist)
    assert cfg.tier == "quick" and cfg.overrides == ()
    assert cfg.iterations == 500 and cfg.options["batch_real"] == 64 and (cfg.eval.nets, cfg.eval.epochs) == (3, 300)


def test_explicit_settings_override_the_tier_and_are_reported(mnist):
    cfg = resolve(RunConfig(dataset="mnist", method="dm", ipc=10, tier="paper", iterations=50, options={"batch_real": 32}), mnist)
    assert cfg.iterations == 50 and cfg.options["batch_real"] == 32 and cfg.eval.epochs == 1000
    assert set(cfg.overrides) == {"iterations", "batch_real"}
    assert resolve(cfg, mnist).overrides == cfg.overrides
    cfg = cfg.with_eval(nets=3)
    assert resolve(cfg, mnist).overrides == cfg.overrides  # a resolved config keeps the overrides it was resolved with
    recounted = recount_overrides(cfg, mnist)  # the CLI and the page, after changing the network or the check
    assert "eval nets" in recounted.overrides
    assert tiers.tier_label(recounted.to_dict()) == "paper, iterations, batch_real, eval nets overridden"


def test_a_config_saved_before_tiers_loads_and_says_so(tiny):
    cfg = resolve(RunConfig(dataset="tiny", method="dm"), tiny).to_dict()
    old = {k: v for k, v in cfg.items() if k not in ("tier", "overrides")}
    loaded = RunConfig.from_dict(old)
    assert loaded.tier is None and tiers.tier_label(old) == tiers.BEFORE_TIERS == "before tiers"
    assert RunConfig.from_dict(json.loads(json.dumps(cfg))) == RunConfig.from_dict(cfg)  # the tuple reads back
    with pytest.raises(ValueError, match="unknown tier"):
        RunConfig(tier="slow")


def test_results_json_carries_tier_commit_seeds_and_versions(tmp_path, capsys):
    out = tmp_path / "run"
    fast = ["--iterations", "3", "--eval-nets", "1", "--eval-epochs", "2", "--width", "8", "--set", "batch_real=16"]
    assert main(["run", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--out", str(out), *fast]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["tier"] == "quick" and r["config"]["tier"] == "quick"
    assert {"iterations", "batch_real", "eval nets", "eval epochs", "network"} <= set(r["overrides"])
    assert r["reduced"].startswith("iterations 3 of 20000, eval 1 x 2 epochs of 20 x 1000")
    assert r["seeds"] == {"run": 0, "evaluation": 1, "baseline": 2}
    assert r["commit"] and r["versions"]["torch"] == torch.__version__ and "cuda" in r["versions"] and r["device_name"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("tier: quick, ")


def test_published_table_holds_the_methods_md_figures():
    assert published.published("dsa", "mnist", 10).accuracy == 97.8
    assert published.published("dm", "fashion-mnist", 1).third_party
    assert not published.published("dm", "cifar10", 10).third_party
    assert published.published("krr", "mnist", 1).comparable is False  # KIP's kernel figure
    assert published.published("mtt", "cifar10", 10).accuracy == 65.3 and published.published("mtt", "mnist", 10) is None
    assert published.published("full", "fashion-mnist", 0).accuracy == 93.5
    assert published.published("dm", "digits", 1) is None


def test_reproduce_on_digits_writes_both_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "repro"
    small = ["--tier", "quick", "--iterations", "2", "--eval-nets", "1", "--eval-epochs", "2"]
    # no published figure for digits: the cell is skipped with a note
    assert main(["reproduce", "--dataset", "digits", "--methods", "dm", "--ipcs", "1", "--out", str(out), *small]) == 0
    r = json.loads((out / "reproduce.json").read_text())
    assert r["rows"] == [] and "no published figure" in r["skipped"][0] and "Skipped" in (out / "reproduce.md").read_text()
    # a tiny published table for digits: the cell runs, beside its figure
    monkeypatch.setitem(published.PUBLISHED, ("dm", "digits", 1), published.Figure(90.0, "a test"))
    assert main(["reproduce", "--dataset", "digits", "--methods", "dm", "--ipcs", "1", "--out", str(out), *small,
                 "--", "--width", "8"]) == 0
    r = json.loads((out / "reproduce.json").read_text())
    row = r["rows"][0]
    assert row["published"]["accuracy"] == 90.0 and row["published_random"] is None
    assert row["ours"]["n"] == 1 and row["difference"] == pytest.approx(100 * row["ours"]["mean"] - 90.0, abs=0.01)
    assert row["random"]["n"] == 1 and row["wall"] > 0 and row["devices"] and row["tiers"][0].startswith("quick")
    assert row["across_runs"] == {"mean": row["ours"]["mean"], "std": 0.0, "n": 1}  # one distillation run
    md = (out / "reproduce.md").read_text()
    assert "| dm | 1 |" in md and "90.0" in md and "a test" in md and "| one run |" in md

    # a second call into the same folder keeps the finished run and runs only the new seed; other
    # arguments run everything again
    from distill_core.studies import bench

    ran, original = [], bench.run_cell
    monkeypatch.setattr(bench, "run_cell", lambda *a: ran.append(a[:4]) or original(*a))
    again = ["reproduce", "--dataset", "digits", "--methods", "dm", "--ipcs", "1", "--seeds", "0,1", "--out", str(out), *small,
             "--store", str(tmp_path / "runs"), "--", "--width", "8"]
    assert main(again) == 0
    assert ran == [("dm", "random", 1, 1)] and "1 of 2 runs kept" in capsys.readouterr().err
    from distill_core.runs.store import Store

    recorded = Store(tmp_path / "runs").list()  # --store: the run is also the app's, for its Compare page
    assert [(r.method, r.label, r.owner, r.status) for r in recorded] == [("dm", "command line: dm ipc 1 seed 1", "cli", "done")]
    assert reproduce.rows_from_records(recorded)[0]["published"]["accuracy"] == 90.0
    row = json.loads((out / "reproduce.json").read_text())["rows"][0]
    assert row["seeds"] == [0, 1] and row["ours"]["n"] == 2 and row["across_runs"]["n"] == 2
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["dm-ipc1-seed0.json", "dm-ipc1-seed1.json"]
    ran.clear()
    assert main(again[:-1] + ["12"]) == 0  # another width: nothing kept
    assert ran == [("dm", "random", 1, 0), ("dm", "random", 1, 1)]


def test_the_stores_finished_runs_read_as_reproduction_rows_with_the_spread_across_runs(tmp_path):
    """Two runs of one published cell pool into one row: n counts every network, the spread of the
    runs' means is its own column; a cell without a published figure and a paper-tier run stay apart."""
    from distill_core.runs.store import Store

    store = Store(tmp_path / "runs")
    stored_run(store, "run000001", "fashion-mnist", "dm", 1, 0.70, 0.01)
    stored_run(store, "run000002", "fashion-mnist", "dm", 1, 0.72, 0.01)
    stored_run(store, "run000003", "fashion-mnist", "dm", 1, 0.71, 0.0, tier="paper")
    stored_run(store, "run000004", "digits", "dm", 1, 0.93, 0.01)  # nothing published for digits
    rows = reproduce.rows_from_records(store.list())
    assert [(r["dataset"], r["tiers"]) for r in rows] == [("fashion-mnist", ["paper"]), ("fashion-mnist", ["quick"])]
    quick = rows[1]
    assert quick["ours"]["n"] == 6 and quick["ours"]["mean"] == pytest.approx(0.71)
    assert quick["ours"]["std"] == pytest.approx((0.01 ** 2 + 0.01 ** 2) ** 0.5)  # within runs and between them
    assert quick["across_runs"] == {"mean": pytest.approx(0.71), "std": pytest.approx(0.01), "n": 2}
    assert quick["published"]["accuracy"] == 70.7 and quick["difference"] == pytest.approx(0.3)
    text = dict(zip(reproduce.COLUMNS, reproduce.cells(quick), strict=True))
    assert text["across runs %"] == "71.0 ± 1.0 (2 runs)"
    assert text["published %"] == "70.7 (third-party)" and text["published random %"] == "51.4"


def test_reproduce_plan_skips_unpublished_cells():
    cells, notes = reproduce.plan(["dm", "mtt"], "mnist", [1, 10], run_all=False)
    assert cells == [("dm", 1), ("dm", 10)] and len(notes) == 2
    assert reproduce.plan(["mtt"], "mnist", [1], run_all=True)[0] == [("mtt", 1)]


def test_cache_list_and_clear(tmp_path, capsys):
    root = tmp_path / "cache"
    folder = root / "experts" / "digits-convnet-abc123"
    folder.mkdir(parents=True)
    (folder / "expert_000_e0020.safetensors").write_bytes(b"x" * 100)
    (root / "baselines").mkdir()
    (root / "baselines" / "k.json").write_text(json.dumps({"key": {"ipc": 1, "eval": {"nets": 5, "epochs": 300}, "net": {"name": "convnet"}},
                                                          "accuracy": {"mean": 0.68}}))
    (root / "data").mkdir()
    assert main(["cache", "list", "--cache-dir", str(root)]) == 0
    shown = capsys.readouterr().out
    assert "digits-convnet" in shown and "1 expert trajectories" in shown and "ipc 1, 5 x 300 epochs" in shown and "2 cached item(s)" in shown
    assert main(["cache", "clear", "--baselines", "--cache-dir", str(root)]) == 0
    assert not (root / "baselines" / "k.json").exists() and folder.exists()
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert not folder.exists() and (root / "data").exists()  # datasets are left alone
    assert "cleared 1 cached item(s)" in capsys.readouterr().out


def test_distill_page_takes_the_tier_from_the_link_and_shows_it(runs_dir):
    from conftest import wait_done
    from streamlit.testing.v1 import AppTest

    from distill_core.runs.store import Store
    from ui.services import services

    root = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(root / "views" / "distill.py"), default_timeout=120)
    for k, v in {"tier": "paper", "steps": "3", "eval_nets": "1", "eval_epochs": "2", "width": "8"}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="tier").value == "paper"
    at.button(key="tier_costs").click().run()  # both tiers' time, on request
    assert not at.exception, [e.message for e in at.exception]
    shown = "\n".join(str(m.value) for m in at.markdown)
    assert "Both tiers on this machine" in shown and "paper tier: about" in shown and "quick tier: about" in shown
    at.button(key="start").click().run()
    run_id = at.session_state["current_run"]
    wait_done(run_id)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    cfg = services().snapshot(run_id).config
    assert cfg["tier"] == "paper" and cfg["options"]["batch_real"] == 256 and cfg["iterations"] == 3
    assert {"iterations", "eval nets", "eval epochs", "network"} <= set(cfg["overrides"])
    assert any("Settings tier: **paper, iterations" in str(c.value) for c in at.caption)
    cmp = AppTest.from_file(str(root / "views" / "compare.py"), default_timeout=120)
    cmp.query_params["runs"] = run_id
    cmp.run()
    assert not cmp.exception, [e.message for e in cmp.exception]
    assert cmp.dataframe[0].value["tier"][0].startswith("paper, iterations")
    assert Store(runs_dir).get(run_id) is not None
