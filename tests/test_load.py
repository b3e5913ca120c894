"""A workshop against the app as started from the README: N browser sessions (headless Chromium
contexts, loopback only) each open the Distill page with ``?steps=S``, press Start and keep watching
(or close the page: ``closed=True``, the comparison). Measured: whether every run finishes, the wall
time from the first Start to the last run's end, the health endpoint's latency meanwhile, the
server's memory, and the exceptions in its log.

In the suite: 4 sessions of a short run, bounded in time. For the issue's figure, 20 sessions, both
ways, one after the other (a Ray address as a third argument runs the app with DISTILL_RAY_ADDRESS):

    .venv/bin/python tests/test_load.py 20 60 - [--background-browsers]
    .venv/bin/python tests/test_load.py 6 60 127.0.0.1:6379

``--background-browsers`` (root, cgroup v1) gives the browsers only the CPU that the server and its
runs leave: on one machine they stand in for the students' own laptops.
"""
from __future__ import annotations

import json
import os
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


def processes() -> dict[int, tuple[str, int, float]]:
    """{pid: (name, parent pid, CPU seconds so far)} of every process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            out[int(d.name)] = (name, int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    return out


BACKGROUND = Path("/sys/fs/cgroup/cpu/distill-browsers")  # cgroup v1: CPU shares 2 against everyone else's 1024


def background_group() -> Path:
    """A CPU cgroup whose processes get only what the others leave (needs root and cgroup v1's cpu
    controller). Nice 19 is not enough: the kernel's autogroups share the CPU between sessions first,
    and the browsers sit in sessions of their own."""
    BACKGROUND.mkdir(exist_ok=True)
    (BACKGROUND / "cpu.shares").write_text("2")
    return BACKGROUND / "cgroup.procs"


class Probe(threading.Thread):
    """Every ``every`` s: the health endpoint's latency, the server's memory, and the CPU seconds of
    the server, its workers and the browsers (which, with ``background_browsers``, go to the
    background group: they stand in for the students' own laptops, and take only the CPU that the
    server and its runs leave)."""

    def __init__(self, url: str, pid: int, runs: Path, every: float = 0.25, background_browsers: bool = False) -> None:
        super().__init__(daemon=True)
        self.runs, self.most_at_once = runs, 0  # the most runs preparing or running at one look
        self.url, self.pid, self.every = url + "/_stcore/health", pid, every
        self.background = background_group() if background_browsers else None
        self.latency: list[float] = []
        self.rss: list[float] = []
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds at the last look)
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
            self.account()
            self.most_at_once = max(self.most_at_once, sum(s in ("preparing", "running") for s in statuses(self.runs)))
            self.halt.wait(self.every)

    def account(self) -> None:
        for pid, (name, parent, cpu) in processes().items():
            role = ("server" if pid == self.pid else "workers" if parent == self.pid
                    else "browsers" if "chrom" in name or name == "headless_shell" else None)
            if role is None:
                continue
            if role == "browsers" and self.background is not None and pid not in self.cpu:
                try:
                    self.background.write_text(str(pid))
                except OSError:
                    pass  # it ended meanwhile
            self.cpu[pid] = (role, cpu)

    def cpu_seconds(self, start: dict[int, tuple[str, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (role, cpu) in self.cpu.items():
            out[role] = out.get(role, 0.0) + cpu - start.get(pid, (role, 0.0))[1]
        return {k: round(v, 1) for k, v in sorted(out.items())}


def statuses(runs: Path) -> list[str]:
    db = runs / "index.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as con:
        return [r[0] for r in con.execute("SELECT status FROM runs")]


def workshop(tmp: Path, sessions: int, steps: int, closed: bool = False, timeout: float = 900,
             background_browsers: bool = False, **env: str) -> dict:
    """Start the server (``env``: its environment's additions), have ``sessions`` pages each start a
    run, wait for every run to end."""
    from playwright.sync_api import expect, sync_playwright

    runs, log = tmp / "runs", tmp / "server.log"
    with serve(runs, log, **env) as (url, server), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages = [browser.new_context(viewport={"width": 1300, "height": 1600}).new_page() for _ in range(sessions)]
        for page in pages:
            page.goto(f"{url}/?steps={steps}")
        probe = Probe(url, server.pid, runs, background_browsers=background_browsers)
        probe.account()
        start_cpu = dict(probe.cpu)
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
        "runs": len(found), "done": sum(s == "done" for s in found), "most_at_once": probe.most_at_once, "wall_s": round(wall, 1),
        "health_median_ms": round(1000 * statistics.median(lat), 1), "health_p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1),
        "health_max_ms": round(1000 * lat[-1], 1), "server_rss_mb_max": round(max(probe.rss), 1),
        "server_rss_mb_last": round(probe.rss[-1], 1), "tracebacks": text.count("Traceback"),
        "cpu_seconds": probe.cpu_seconds(start_cpu), "browsers_in_background": background_browsers,
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
    env = {"DISTILL_RAY_ADDRESS": sys.argv[3]} if len(sys.argv) > 3 and sys.argv[3] != "-" else {}
    background = "--background-browsers" in sys.argv
    results = []
    for closed in (True, False):
        with tempfile.TemporaryDirectory() as d:
            results.append(workshop(Path(d), n, steps, closed, background_browsers=background, **env))
            print(json.dumps(results[-1]), flush=True)
    print(f"watching / closed wall time: {results[1]['wall_s'] / results[0]['wall_s']:.2f}")
