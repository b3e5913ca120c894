"""Accuracy against IPC (``distill_core.studies.sweep``, ``python -m distill_core sweep``, the Compare page's
section): on digits with a tiny network, 2 steps and 1 evaluation network of a few epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from distill_core import cli
from distill_core import data as data_mod
from distill_core.config import RunConfig
from distill_core.data.datasets import Data
from distill_core.evaluation.protocol import EvalConfig
from distill_core.methods import METHODS
from distill_core.nets.networks import NetConfig
from distill_core.runs.store import Store
from distill_core.studies import sweep

ROOT = Path(__file__).resolve().parent.parent
TINY_NET = NetConfig(width=8, depth=2)
TINY_EVAL = EvalConfig(nets=1, epochs=5)


def tiny_base() -> RunConfig:
    return RunConfig(dataset="digits", iterations=2, net=TINY_NET, eval=TINY_EVAL)


@pytest.fixture(scope="module")
def digits() -> Data:
    return data_mod.load("digits")


@pytest.fixture(scope="module")
def tiny_sweep(digits, tmp_path_factory) -> tuple[dict, Path]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sweep")
    # DC only at IPC 1 (--upto dc=1): the sweep skips it at IPC 2
    result = sweep.sweep(tiny_base(), digits, ["dm", "dc"], [1, 2], upto={"dc": 1}, out=out, store=Store(out / "runs"), log=lambda s: None)
    return result, out


def plateau_phrase(result: dict) -> str:
    """What the sentence says of DM in a sweep over IPCs 1 and 2."""
    return "DM still gains up to the largest IPC swept, 2" if result["plateau"]["dm"] == 2 else "DM stops gaining at IPC 1"


def test_ipcs_parse_max_and_refuse_more_than_the_smallest_class(digits):
    smallest = min(digits.class_counts())
    assert sweep.parse_ipcs("50, 1,10,max,10", digits) == [1, 10, 50, smallest]
    with pytest.raises(ValueError, match=f"largest IPC that fits is {smallest}"):
        sweep.parse_ipcs(str(smallest + 1), digits)
    with pytest.raises(ValueError, match="whole numbers"):
        sweep.parse_ipcs("1,ten", digits)


def test_plan_gives_each_method_its_own_defaults_per_ipc_and_honours_upto(digits):
    base = RunConfig(dataset="digits", eval=TINY_EVAL)
    cfgs = sweep.plan(base, digits, ["dm", "mtt"], [1, 10], [0, 1], upto={"mtt": 1})
    assert [(c.method, c.ipc, c.seed) for c in cfgs] == [
        ("dm", 1, 0), ("dm", 1, 1), ("mtt", 1, 0), ("mtt", 1, 1), ("dm", 10, 0), ("dm", 10, 1)
    ]
    mtt, dm10 = cfgs[2], cfgs[4]
    assert mtt.options["batch_syn"] == 10  # resolved at its own IPC: 10 images at IPC 1
    assert mtt.iterations == METHODS.get("mtt").default_iterations(digits, 1)
    assert dm10.iterations == METHODS.get("dm").default_iterations(digits, 10) and dm10.eval == TINY_EVAL
    with pytest.raises(ValueError, match="does not run"):
        sweep.plan(base, digits, ["dm"], [1], [0], upto={"datm": 50})


def test_plateau_is_the_smallest_ipc_within_a_point_of_the_best_and_the_gap_to_full_data():
    def row(m, ipc, mean, std=0.01):
        return {"method": m, "ipc": ipc, "synthetic": {"mean": mean, "std": std}, "random": {"mean": mean - 0.1, "std": 0.02}}

    rows = [row("dm", 1, 0.60), row("dm", 10, 0.90), row("dm", 50, 0.905), row("datm", 1, 0.70), row("datm", 10, 0.95)]
    found = sweep.findings(rows, {"mean": 0.958, "std": 0.004})
    assert found["plateau"] == {"dm": 10, "datm": 10}
    c = found["closest"]
    assert (c["method"], c["ipc"]) == ("datm", 10) and c["gap"] == pytest.approx(0.008) and c["reaches_full"]
    assert not sweep.findings(rows, {"mean": 0.99, "std": 0.004})["closest"]["reaches_full"]  # 4 points short
    text = sweep.sentences({"rows": rows, "full_data": {"mean": 0.958, "std": 0.004}, **found})
    assert "DM stops gaining at IPC 10: 90.0% (within a point of its best up to IPC 50)" in text
    assert "DATM still gains up to the largest IPC swept, 10" in text
    assert "The best, DATM at IPC 10" in text and "reaches the full-data line" in text
    # pooling equal groups: the mean of the means, the std of their union
    assert sweep.pooled([{"mean": 0.5, "std": 0.0}, {"mean": 0.7, "std": 0.0}]) == pytest.approx((0.6, 0.1))


def test_sweep_writes_rows_per_ipc_with_random_and_full_data(tiny_sweep):
    result, out = tiny_sweep
    written = json.loads((out / "sweep.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert [(r["method"], r["ipc"]) for r in written["rows"]] == [("dm", 1), ("dc", 1), ("dm", 2)]
    for r in written["rows"]:
        assert r["synthetic"]["n"] == 1 and r["random"]["n"] == 1 and r["iterations"] == [2]
        assert 0 <= r["synthetic"]["mean"] <= 1 and r["seconds"] >= 0  # a tiny run can take under 0.05 s
    full = written["full_data"]
    assert full["n"] == 1 and full["epochs"] == TINY_EVAL.epochs
    # 5 epochs on all 1,437 images beat 5 epochs on 10 random ones
    assert full["mean"] > written["rows"][0]["random"]["mean"] + 0.1
    assert written["plateau"]["dc"] == 1 and written["closest"]["method"] in ("dm", "dc")
    assert written["rows"][0]["random"] == written["rows"][1]["random"]  # one baseline per IPC and seed
    md = (out / "sweep.md").read_text()
    assert "| dm | 1 |" in md and "| dm | 2 |" in md and "all training images" in md and plateau_phrase(written) in md
    runs = Store(out / "runs").list(dataset="digits", status="done")
    assert sorted((r.method, r.ipc) for r in runs) == [("dc", 1), ("dm", 1), ("dm", 2)]  # also in the store


def test_cli_prints_the_estimate_writes_the_files_and_refuses_a_long_sweep(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    args = ["sweep", "--dataset", "digits", "--methods", "dm", "--ipcs", "1", "--iterations", "1",
            "--eval-nets", "1", "--eval-epochs", "1"]
    monkeypatch.setattr(cli, "REFUSE_SECONDS", 0)  # every sweep is "too long" now
    assert cli.main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr()
    assert "1 runs, about" in err.out and "--yes" in err.err
    assert not (tmp_path / "refused").exists()
    assert cli.main([*args, "--yes", "--out", str(tmp_path / "ran")]) == 0
    result = sweep.load((tmp_path / "ran" / "sweep.json").read_text())
    assert [r["ipc"] for r in result["rows"]] == [1] and result["full_data"]["epochs"] == 1
    assert (tmp_path / "ran" / "sweep.md").read_text().startswith("Dataset `digits`")
    assert cli.main(["sweep", "--ipcs", "1,999", "--out", str(tmp_path / "x")]) == 2
    assert "largest IPC that fits" in capsys.readouterr().err


def test_load_refuses_what_is_not_a_sweep():
    for bad in (b"{", b"[]", b'{"rows": [{"method": "dm", "ipc": 0}]}', b'{"rows": [], "full_data": {"mean": "x"}}'):
        with pytest.raises(ValueError, match="not a sweep.json"):
            sweep.load(bad)


def chart_spec(at: AppTest) -> dict:
    charts = [c for c in at.get("plotly_chart") if "images per class" in c.proto.spec]
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def trace_names(spec: dict) -> list[str]:
    return [t.get("name", "") for t in spec["data"]]


@pytest.mark.usefixtures("runs_dir")
def test_section_plots_an_uploaded_sweep_json(tiny_sweep):
    result, out = tiny_sweep
    at = AppTest.from_file(str(ROOT / "views/compare.py"), default_timeout=60)
    at.run()
    assert not at.exception
    at.radio(key="sweep_source").set_value("a sweep.json").run()
    at.file_uploader(key="sweep_upload").set_value(("sweep.json", (out / "sweep.json").read_bytes(), "application/json")).run()
    assert not at.exception, [e.message for e in at.exception]
    spec = chart_spec(at)
    names = trace_names(spec)
    full = 100 * result["full_data"]["mean"]
    assert f"all training images: {full:.1f}%" in names and "random real images" in names and "DM" in names
    assert spec["layout"]["xaxis"]["type"] == "log"
    dm = next(t for t in spec["data"] if t["name"] == "DM")
    assert dm["x"] == [1, 2] and len(dm["error_y"]["array"]) == 2
    assert any(plateau_phrase(result) in m.value for m in at.markdown)
    at.file_uploader(key="sweep_upload").set_value(("sweep.json", b'{"rows": 3}', "application/json")).run()
    assert any("cannot be shown" in e.value for e in at.error)


def test_section_plots_the_store_runs_with_the_full_data_reference(runs_dir, digits):
    from ui.services import services

    torch.set_num_threads(1)
    S = services()
    result = sweep.sweep(tiny_base(), digits, ["dm"], [1, 2], store=S.store, log=lambda s: None)
    cfg = RunConfig.from_dict(S.store.list(status="done")[0].config_dict)
    S.store.set_reference(S.references.key(cfg, digits), {"mean": 0.973})  # the app's quick one-network reference
    at = AppTest.from_file(str(ROOT / "views/compare.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="sweep_dataset").value == "digits"
    # the line is the sweep's own full-data measurement (its networks and epochs), not the quick reference
    full = 100 * result["full_data"]["mean"]
    assert abs(full - 97.3) > 0.05, "the test needs the two measurements to differ"
    spec = chart_spec(at)
    assert f"all training images: {full:.1f}%" in trace_names(spec)
    assert any("measured by a sweep: 1 network," in c.value for c in at.caption)
    dm = next(t for t in spec["data"] if t["name"] == "DM")
    assert dm["y"] == pytest.approx([100 * r["synthetic"]["mean"] for r in result["rows"]])
    sentence = " ".join(m.value for m in at.markdown)
    assert plateau_phrase(result) in sentence and f"full-data line: {full:.1f}" in sentence
