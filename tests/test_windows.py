"""DATM's matching windows compared (``python -m distill_core windows``): the windows, the verdict on
the paper's claim, a small end-to-end run through the store, the file check, the page section."""
import json
from pathlib import Path

import pytest

from distill_core import data as data_mod
from distill_core.config import RunConfig
from distill_core.evaluation.protocol import EvalConfig
from distill_core.runs.store import Store
from distill_core.studies import windows

ROOT = Path(__file__).resolve().parent.parent


def test_windows_cut_the_usable_start_epochs_into_equal_consecutive_parts():
    assert windows.cut(20, 2, 2) == [(0, 9), (9, 18)]
    assert windows.cut(20, 2, 3) == [(0, 6), (6, 12), (12, 18)]
    with pytest.raises(ValueError, match="fewer than 3 windows"):
        windows.cut(4, 2, 3)


def row(ipc, label, lo, hi, acc):
    return {"ipc": ipc, "label": label, "window": [lo, hi], "synthetic": {"mean": acc, "std": 0.01, "n": 2}}


@pytest.mark.parametrize(
    "accs,verdict",
    [
        ({1: (0.9, 0.8), 10: (0.9, 0.95)}, "The claim holds here"),
        ({1: (0.9, 0.8), 10: (0.95, 0.9)}, "The claim does not show here"),
        ({1: (0.8, 0.9), 10: (0.95, 0.9)}, "The claim does not hold here"),
    ],
)
def test_the_verdict_follows_the_winning_window_across_ipcs(accs, verdict):
    rows = [r for ipc, (e, late) in accs.items() for r in (row(ipc, "early", 0, 9, e), row(ipc, "late", 9, 18, late))]
    result = {"rows": rows, "labels": ["early", "late"], "winner": windows.winners(rows)}
    assert windows.claim(result).startswith(verdict)


def test_plan_fixes_each_window_and_shares_the_experts():
    digits = data_mod.load("digits")
    runs, shared = windows.plan(RunConfig(method="datm", options={"expert_count": 2}), digits, [1, 10], 2, [0, 1])
    assert shared["windows"] == [[0, 9], [9, 18]] and shared["expert_epochs"] == 20
    assert len(runs) == 2 * 2 * 2
    for cfg, w in runs:
        lo, hi = shared["windows"][w]
        o = cfg.options
        assert (o["min_start_epoch"], o["max_start_epoch"], o["initial_max_start_epoch"]) == (lo, hi, hi)
        assert o["expert_train_epochs"] == 20 and o["expert_count"] == 2 and cfg.method == "datm"


def test_a_small_comparison_runs_records_its_runs_and_reads_back(tmp_path):
    digits = data_mod.load("digits")
    base = RunConfig(method="datm", iterations=2, eval=EvalConfig(nets=1, epochs=5),
                     options={"expert_count": 1, "expert_train_epochs": 6, "syn_steps": 2, "batch_syn": 10})
    store = Store(tmp_path / "runs")
    result = windows.windows(base, digits, [1], k=2, store=store, out=tmp_path / "out", log=lambda s: None)
    assert [r["window"] for r in result["rows"]] == [[0, 2], [2, 4]]
    for r in result["rows"]:
        assert 0.0 < r["synthetic"]["mean"] <= 1.0 and 0.0 <= r["random"]["mean"] <= 1.0 and r["random"]["n"] == 1
    assert result["winner"]["1"] in ("early", "late")
    back = windows.load((tmp_path / "out" / "windows.json").read_text())
    assert back["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| 1 | early" in (tmp_path / "out" / "windows.md").read_text()
    from_store = windows.rows_from_records(store.list(status="done"))
    assert [(r["ipc"], r["window"], r["label"]) for r in from_store["rows"]] == [(1, [0, 2], "early"), (1, [2, 4], "late")]


@pytest.mark.parametrize(
    "text,message",
    [
        ("{", "not a windows.json"),
        ('{"rows": 3}', "needs a 'rows' list"),
        ('{"rows": [{"ipc": 1, "label": "early", "window": [5, 2]}]}', "a row needs"),
        ('{"rows": [{"ipc": 1, "label": "early", "window": [0, 2], "synthetic": {"mean": NaN, "std": 0}}]}', "a row needs"),
    ],
)
def test_load_refuses_what_is_not_a_windows_json(text, message):
    with pytest.raises(ValueError, match=message):
        windows.load(text)


def chart(at) -> dict:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "expert epoch" in c.proto.spec]
    assert len(charts) == 1
    return charts[0]


@pytest.mark.usefixtures("runs_dir")
def test_the_compare_page_plots_an_uploaded_windows_json():
    from streamlit.testing.v1 import AppTest

    rows = [row(1, "early", 0, 9, 0.9), row(1, "late", 9, 18, 0.8), row(10, "early", 0, 9, 0.93), row(10, "late", 9, 18, 0.96)]
    at = AppTest.from_file(str(ROOT / "views/compare.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    at.radio(key="windows_source").set_value("a windows.json").run()
    at.file_uploader(key="windows_upload").set_value(("windows.json", json.dumps({"rows": rows}).encode(), "application/json")).run()
    assert not at.exception, [e.message for e in at.exception]
    spec = chart(at)
    segments = [t for t in spec["data"] if t.get("name") == "IPC 10"]
    assert segments and segments[0]["x"][:2] == [0, 9] and segments[0]["y"][:2] == [93.0, 93.0]
    assert any("The claim holds here" in m.value for m in at.markdown)
    at.file_uploader(key="windows_upload").set_value(("windows.json", b"{", "application/json")).run()
    assert any("cannot be shown" in e.value for e in at.error)


def test_the_cli_prints_the_estimate_and_writes_the_table(tmp_path, capsys):
    from distill_core.cli import main

    args = ["windows", "--ipcs", "1", "--iterations", "2", "--eval-nets", "1", "--eval-epochs", "2", "--set", "expert_count=1",
            "--set", "expert_train_epochs=6", "--set", "syn_steps=2", "--set", "batch_syn=10", "--out", str(tmp_path / "w")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 runs, about") and "| 1 | early" in out and "| 1 | late" in out
    assert json.loads((tmp_path / "w" / "windows.json").read_text())["windows"] == [[0, 2], [2, 4]]
