"""Cross-architecture evaluation (``RunConfig.eval_archs``: run, CLI, bench, the app's settings and
Compare page) and the on-disk cache of the random-real baseline (``baselines``)."""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import replace

import pytest
import torch
from conftest import wait_done
from streamlit.testing.v1 import AppTest
from test_app import ROOT, TINY, no_exception, texts

from distill_core.cli import main
from distill_core.config import EvalConfig, RunConfig, eval_arch_names
from distill_core.evaluation.baselines import random_baseline
from distill_core.evaluation.protocol import Accuracy
from distill_core.nets.networks import NetConfig
from distill_core.runs.run import Run


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on two shared cores a second thread slows these small trainings down tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


QUICK = RunConfig(
    dataset="digits", method="dm", ipc=1, iterations=4, net=NetConfig(width=8, depth=2),
    eval=EvalConfig(nets=1, epochs=5), options={"batch_real": 16},
)


def test_the_registry_has_the_four_networks():
    assert set(eval_arch_names()) >= {"convnet", "mlp", "lenet", "resnet"}


def test_eval_archs_round_trip_through_config_json():
    cfg = RunConfig(eval_archs=["mlp", "resnet", "mlp"])  # a list (JSON, a page) with a repeat
    assert cfg.eval_archs == ("mlp", "resnet")
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.eval_archs == ("mlp", "resnet")
    old = {k: v for k, v in RunConfig().to_dict().items() if k != "eval_archs"}  # a config.json from before the field
    assert RunConfig.from_dict(old).eval_archs == ()
    # each network keeps the run's width and depth (fields its architecture may ignore)
    nets = replace(cfg, net=NetConfig(width=16, depth=2)).eval_arch_nets()
    assert nets == {"mlp": NetConfig("mlp", 16, 2), "resnet": NetConfig("resnet", 16, 2)}


def test_an_unknown_network_is_refused_with_the_known_names(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown evaluation architecture 'vgg'; known: .*convnet.*mlp.*lenet.*resnet"):
        RunConfig(eval_archs=("mlp", "vgg"))
    with pytest.raises(ValueError, match="must be a list of network names"):
        RunConfig(eval_archs="mlp")  # would be read as the networks m, l, p
    assert main(["run", "--eval-archs", "mlp,vgg", "--out", str(tmp_path / "r")]) == 2
    assert "unknown evaluation architecture 'vgg'" in capsys.readouterr().err
    assert main(["bench", "--eval-archs", "vgg", "--out", str(tmp_path / "b")]) == 2  # before any cell starts
    assert "known: convnet" in capsys.readouterr().err and not (tmp_path / "b" / "bench.json").exists()


def test_cli_run_writes_accuracy_by_arch_and_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # a cache of its own: the baselines are trained here
    out = tmp_path / "run"
    args = ["run", "--dataset", "digits", "--method", "dm", "--ipc", "2", "--iterations", "10", "--width", "16",
            "--eval-nets", "1", "--eval-epochs", "40", "--set", "batch_real=16", "--eval-archs", "mlp,resnet", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["eval_archs"] == ["mlp", "resnet"] and list(r["accuracy_by_arch"]) == ["mlp", "resnet"]
    for arch, a in r["accuracy_by_arch"].items():
        for kind in ("synthetic", "random"):
            acc = a[kind]
            assert acc["n"] == 1 and len(acc["values"]) == 1 and all(math.isfinite(v) for v in acc["values"]), (arch, kind)
            assert acc["mean"] > 0.25, (arch, kind, acc)  # 10 classes: chance is 0.10
        assert a["random_cached"] is False  # a fresh cache
    assert r["baseline_cached"] is False and r["seconds"]["cross_arch"] > 0
    # another network gives other numbers than the run's own ConvNet
    assert r["accuracy_by_arch"]["mlp"]["synthetic"]["values"] != r["accuracy"]["values"]
    printed = capsys.readouterr().out
    mlp = r["accuracy_by_arch"]["mlp"]
    assert "| network | synthetic % | random real % |" in printed
    assert f"| mlp | {100 * mlp['synthetic']['mean']:.1f} ± {100 * mlp['synthetic']['std']:.1f} | " in printed


def test_the_run_s_own_network_reuses_its_final_evaluation_and_baseline(tmp_path):
    run = Run(replace(QUICK, eval_archs=("convnet", "mlp")), cache_dir=tmp_path)
    snap = run.execute()
    assert snap.status == "done", snap.message
    own = snap.accuracy_by_arch["convnet"]
    assert own["synthetic"] == snap.final and own["random"] == snap.baseline
    assert snap.accuracy_by_arch["mlp"]["synthetic"]["n"] == 1


def test_a_second_identical_run_takes_its_baseline_from_the_cache(tmp_path):
    first = Run(QUICK, cache_dir=tmp_path)
    first.execute()
    second = Run(QUICK, cache_dir=tmp_path)
    snap = second.execute()
    assert first.results()["baseline_cached"] is False and second.results()["baseline_cached"] is True
    assert snap.baseline == first.snapshot().baseline and snap.baseline_cached


def test_the_baseline_cache_hits_only_the_same_key(tiny, tmp_path):
    cfg, net = EvalConfig(nets=2, epochs=10), NetConfig(width=8, depth=1)

    def base(**kw):
        args = {"data": tiny, "ipc": 2, "cfg": cfg, "net": net, "strategy": "", "seed": 5, "cache_dir": tmp_path} | kw
        t0 = time.perf_counter()
        acc, cached = random_baseline(**args)
        return acc, cached, time.perf_counter() - t0

    first, cached, t_first = base()
    assert not cached and isinstance(first, Accuracy) and first.n == 2
    again, cached, t_again = base()
    assert cached and again == first and t_again < t_first / 3, (t_again, t_first)
    files = list((tmp_path / "baselines").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # one file per key, no temporary left over
    for change in ({"seed": 6}, {"ipc": 1}, {"cfg": replace(cfg, epochs=11)}, {"net": NetConfig("mlp", 8, 1)},
                   {"strategy": "color"}, {"precision": "bf16"}):
        assert base(**change)[1] is False, change
    # once computed, each of them is served too
    assert base(seed=6)[1] and base(cfg=replace(cfg, arch=NetConfig("mlp", 8, 1)))[1]  # the same network, named by arch
    assert not base(cfg=replace(cfg, augment=False), strategy="color")[1]
    assert base(cfg=replace(cfg, augment=False), strategy="")[1]  # unused without augmentation


def test_stop_ends_the_cross_arch_evaluation_keeping_the_final_accuracy(tmp_path):
    run = Run(replace(QUICK, eval=EvalConfig(nets=1, epochs=3000), eval_archs=("mlp",)), cache_dir=tmp_path)  # the limit
    run.baseline = lambda: Accuracy.of([0.5])
    evaluate = run._evaluate
    # the final evaluation answers at once; the cross-arch one (a protocol of its own) takes far longer than the test
    run._evaluate = lambda syn, nets=None, protocol=None: Accuracy.of([0.6]) if protocol is None else evaluate(syn, nets, protocol)
    thread = threading.Thread(target=run.execute)
    thread.start()
    deadline = time.time() + 60
    while not run.snapshot().phase.startswith("cross-arch") and time.time() < deadline:
        time.sleep(0.05)
    assert run.snapshot().phase.startswith("cross-arch evaluation: 1/2 mlp, synthetic set"), run.snapshot()
    time.sleep(0.2)
    run.stop()
    thread.join(20)
    snap = run.snapshot()
    assert not thread.is_alive() and snap.status == "stopped"
    assert snap.final["mean"] == 0.6 and snap.accuracy_by_arch == {}
    assert "stopped during the cross-arch evaluation" in snap.message


@pytest.mark.usefixtures("runs_dir")
def test_the_distill_page_sets_eval_archs_and_compare_shows_them():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for k, v in (TINY | {"eval_archs": "mlp"}).items():
        at.query_params[k] = v
    at.run()
    no_exception(at)
    assert at.multiselect(key="eval_archs").value == ["mlp"]
    at.button(key="start").click().run()
    run_id = at.session_state["current_run"]
    wait_done(run_id)
    cmp = AppTest.from_file(str(ROOT / "views/compare.py"), default_timeout=120)
    cmp.query_params["runs"] = run_id
    cmp.run()
    no_exception(cmp)
    assert "Across architectures" in texts(cmp)
    table = next(d.value for d in cmp.dataframe if "network" in d.value.columns)
    from ui.services import services

    snap = services().snapshot(run_id)
    assert list(snap.config["eval_archs"]) == ["mlp"] and list(table["network"]) == ["mlp"]
    mlp = snap.accuracy_by_arch["mlp"]
    name = f"DM from random ({run_id})"
    assert table[name][0] == f"{100 * mlp['synthetic']['mean']:.1f}%" and table["random real"][0] == f"{100 * mlp['random']['mean']:.1f}%"
    assert len(cmp.get("plotly_chart")) >= 3  # accuracy, loss, and the per-network bars


def test_bench_with_eval_archs_writes_the_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the bench's runs are subprocesses: one thread each too
    out = tmp_path / "bench"
    code = main(["bench", "--dataset", "digits", "--methods", "dm", "--ipc", "1", "--eval-archs", "mlp", "--out", str(out), "--",
                 "--iterations", "4", "--eval-nets", "1", "--eval-epochs", "3", "--width", "8"])
    assert code == 0
    row = json.loads((out / "bench.json").read_text())["rows"][0]
    mlp, run = row["summary"]["accuracy_by_arch"]["mlp"], row["summary"]["runs"][0]
    assert mlp["synthetic"]["mean"] == run["accuracy_by_arch"]["mlp"]["synthetic"]["values"][0] and mlp["random"]["n"] == 1
    table = (out / "bench.md").read_text()
    assert "| mlp: synthetic % | mlp: random % |" in table
    assert f"| {100 * mlp['synthetic']['mean']:.1f} ± 0.0 | {100 * mlp['random']['mean']:.1f} ± 0.0 |" in table
