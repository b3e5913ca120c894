"""A workshop against the app as started from the README: N browser sessions (headless Chromium
contexts, loopback only) each open the Distill page with ``?steps=S``, press Start and keep watching
(or close the page: ``closed=True``, the comparison). Measured: whether every run finishes, the wall
time from the first Start to the last run's end, the health endpoint's latency meanwhile, the
server's memory, and the exceptions in its log.

In the suite: 4 sessions of a short run, bounded in time. For the issue's figure, 20 sessions, both
ways, one after the other (a Ray address as a third argument runs the app with DISTILL_RAY_ADDRESS):

    .venv/bin/python tests/test_load.py 20 60
    .venv/bin/python tests/test_load.py 6 60 127.0.0.1:6379
"""
from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from appserver import ARGS, CHROMIUM, serve

pytestmark = pytest.mark.browser


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Probe(threading.Thread):
    """The health endpoint's latency and the server's memory, sampled every ``every`` s."""

    def __init__(self, url: str, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.url, self.pid, self.every = url + "/_stcore/health", pid, every
        self.latency: list[float] = []
        self.rss: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.perf_counter()
            try:
                urllib.request.urlopen(self.url, timeout=30).read()
                self.latency.append(time.perf_counter() - t)
            except OSError:
                self.latency.append(float("inf"))
            self.rss.append(rss_mb(self.pid))
            self.halt.wait(self.every)


def statuses(runs: Path) -> list[str]:
    db = runs / "index.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as con:
        return [r[0] for r in con.execute("SELECT status FROM runs")]


def workshop(tmp: Path, sessions: int, steps: int, closed: bool = False, timeout: float = 900, **env: str) -> dict:
    """Start the server (``env``: its environment's additions), have ``sessions`` pages each start a
    run, wait for every run to end."""
    from playwright.sync_api import expect, sync_playwright

    runs, log = tmp / "runs", tmp / "server.log"
    with serve(runs, log, **env) as (url, server), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages = [browser.new_context(viewport={"width": 1300, "height": 1600}).new_page() for _ in range(sessions)]
        for page in pages:
            page.goto(f"{url}/?steps={steps}")
        probe = Probe(url, server.pid)
        probe.start()
        t0 = None
        for page in pages:
            start = page.get_by_role("button", name="Start", exact=True)
            expect(start).to_be_enabled(timeout=120_000)
            start.click()
            t0 = t0 or time.perf_counter()
        until = time.perf_counter() + timeout
        while len(statuses(runs)) < sessions and time.perf_counter() < until:  # every Start made its run
            time.sleep(0.2)
        if closed:
            for page in pages:
                page.close()
        while time.perf_counter() < until:
            found = statuses(runs)
            if len(found) >= sessions and all(s in ("done", "stopped", "failed", "interrupted") for s in found):
                break
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        probe.halt.set()
        probe.join()
        browser.close()
        found = statuses(runs)
    lat = sorted(probe.latency)
    text = log.read_text()
    return {
        "sessions": sessions, "steps": steps, "pages": "closed" if closed else "watching",
        "runs": len(found), "done": sum(s == "done" for s in found), "wall_s": round(wall, 1),
        "health_median_ms": round(1000 * statistics.median(lat), 1), "health_p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1),
        "health_max_ms": round(1000 * lat[-1], 1), "server_rss_mb_max": round(max(probe.rss), 1),
        "server_rss_mb_last": round(probe.rss[-1], 1), "tracebacks": text.count("Traceback"),
    }


def test_four_watched_sessions_all_finish_and_the_server_answers(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright")
    r = workshop(tmp_path, sessions=4, steps=30, timeout=240)
    print(json.dumps(r))
    assert r["runs"] == 4 and r["done"] == 4, r
    assert r["tracebacks"] == 0, (tmp_path / "server.log").read_text()[-3000:]
    # the server does only web work: its health check stays quick while four runs go and four pages redraw
    assert r["health_p95_ms"] < 500, r


if __name__ == "__main__":
    import tempfile

    n, steps = int(sys.argv[1]), int(sys.argv[2])
    env = {"DISTILL_RAY_ADDRESS": sys.argv[3]} if len(sys.argv) > 3 else {}
    results = []
    for closed in (True, False):
        with tempfile.TemporaryDirectory() as d:
            results.append(workshop(Path(d), n, steps, closed, **env))
            print(json.dumps(results[-1]), flush=True)
    print(f"watching / closed wall time: {results[1]['wall_s'] / results[0]['wall_s']:.2f}")
