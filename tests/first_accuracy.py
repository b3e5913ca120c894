"""Seconds from Start to a run's first synthetic images and first accuracy beside its baseline, in
headless Chromium against the app as a user starts it (worker processes), with a fresh cache:

    .venv/bin/python tests/first_accuracy.py [DATASET] [IPC] [SECONDS_ON_THE_PAGE_BEFORE_START] [SCREENSHOT_DIR]

Defaults: fashion-mnist, 10, 15. A tool for the README's figure, not a test (it takes about a minute)."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from appserver import ARGS, CHROMIUM, serve


def main(dataset: str = "fashion-mnist", ipc: str = "10", wait: str = "15", shots: str = "") -> None:
    from playwright.sync_api import expect, sync_playwright

    tmp = Path(tempfile.mkdtemp())
    # a fresh HOME: no cached baseline or experts, as on a new machine
    with serve(tmp / "runs", tmp / "server.log", HOME=str(tmp / "home")) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2300})
        page.goto(f"{url}/?dataset={dataset}&ipc={ipc}")
        start = page.get_by_role("button", name="Start", exact=True)
        expect(start).to_be_enabled(timeout=120_000)
        time.sleep(float(wait))  # a person reads the page before pressing Start; the workers warm up meanwhile
        t0 = time.time()
        start.click()
        expect(page.locator('[data-testid="stImage"] img').first).to_be_visible(timeout=120_000)
        t_images = time.time() - t0
        expect(page.get_by_text("Distilled set, step").first).to_be_visible(timeout=900_000)
        t_accuracy = time.time() - t0
        print(f"{dataset} IPC {ipc}: first images {t_images:.1f} s, first accuracy {t_accuracy:.1f} s after Start", flush=True)
        if shots:
            time.sleep(2)
            page.mouse.move(5, 5)
            page.screenshot(path=str(Path(shots) / f"first-accuracy-{dataset}.png"), full_page=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
