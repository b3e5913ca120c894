"""Crafted URL parameters (issue: hostile input): a run id that names no run, path tricks and control
characters show the page without a traceback and read nothing outside the runs directory."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from distill_core.runs.store import Store, is_run_id

ROOT = Path(__file__).resolve().parent.parent
CRAFTED_RUNS = ["..", "../../", ".hidden", "a/b", "a%2Fb", "\x00", "/etc/passwd", "x" * 300, "runs", "index.sqlite", " "]

pytestmark = pytest.mark.usefixtures("runs_dir")


@pytest.mark.parametrize("page", ["distill", "inside", "compare"])
@pytest.mark.parametrize("value", CRAFTED_RUNS)
def test_a_crafted_run_id_shows_the_page_without_a_traceback(page, value):
    at = AppTest.from_file(str(ROOT / "views" / f"{page}.py"), default_timeout=60)
    at.query_params["run"] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]


def test_the_store_names_no_run_outside_its_folder(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "index.sqlite").stat()  # exists: a name that is a file of the store, not a run
    for value in CRAFTED_RUNS:
        if not is_run_id(value):
            assert store.get(value) is None and store.load_snapshot(value) is None
            with pytest.raises(ValueError, match="not a run id"):
                store.run_dir(value)
    assert store.load_snapshot("index.sqlite") is None if not is_run_id("index.sqlite") else True
    assert store.load_snapshot("runs") is None  # a valid id that names no run


def test_a_made_up_session_id_controls_nothing():
    """The server issues the session's secret; an id a URL names is replaced unless the server issued it."""
    from ui.services import services

    first = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    first.run()
    sid = first.session_state["session_id"]
    assert len(sid) >= 22 and services().knows_session(sid)  # 128 bits, url-safe
    for made_up in ("deadbeef", "0" * 22, sid[:-1] + ("A" if sid[-1] != "A" else "B")):
        other = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        other.query_params["sid"] = made_up
        other.run()
        assert other.session_state["session_id"] not in (made_up, sid)
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    again.query_params["sid"] = sid  # the same address: the same session
    again.run()
    assert again.session_state["session_id"] == sid


@pytest.mark.parametrize("key,value", [("eval_epochs", "1000000"), ("width", "2048"), ("steps", "100000000"), ("ipc", "abc")])
def test_a_link_cannot_ask_for_endless_work(key, value):
    """Out-of-range numbers in a link are not taken, and the page says so in one line."""
    at = AppTest.from_file(str(ROOT / "views" / "distill.py"), default_timeout=60)
    at.query_params[key] = value
    at.run()
    assert not at.exception
    [warning] = [w.value for w in at.warning if key in w.value]
    assert f"{key}='{value}'" in warning and "keeps its default" in warning
    widget = [w for w in at.number_input if w.key == key][0]
    assert widget.value is None or widget.value == 1  # the default (automatic), not the link's value
