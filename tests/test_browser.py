"""End to end in headless Chromium: start the app, press Start on the default run, wait for the
synthetic images and the accuracy beside the baseline, save a screenshot: to the test's temporary
folder, or, with ``DISTILL_UPDATE_SCREENSHOT=1``, to assets/screenshot.png (the README's picture).

Needs Debian's chromium (/usr/bin/chromium) and Playwright's Python package; skipped without them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from appserver import ARGS, CHROMIUM, ROOT, serve

pytestmark = pytest.mark.browser


# Text the browser shows cut off: an element whose text ends in an ellipsis because it is wider than
# its box (metrics, select boxes, buttons), or a chart's legend entry running past the chart's edge.
CUT_OFF = """() => {
  const cut = [];
  const boxes = '[data-testid="stMetric"] *, [data-testid="stSelectbox"] *, [data-testid="stDownloadButton"] *';
  for (const el of document.querySelectorAll(boxes)) {
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).textOverflow === "ellipsis")
      cut.push(el.textContent);
  }
  for (const t of document.querySelectorAll('.legendtext')) {
    const svg = t.closest('svg.main-svg');
    if (svg && t.getBoundingClientRect().right > svg.getBoundingClientRect().right + 1) cut.push(t.textContent);
  }
  return cut;
}"""


@pytest.fixture
def app_url(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright")
    with serve(tmp_path / "runs", tmp_path / "server.log") as (url, _):  # the default: runs in worker processes
        yield url


def test_default_run_in_the_browser(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2300})  # tall: Streamlit scrolls inside its own container
        # the default settings (digits, DM, 1 image per class) with a shorter run, to keep the test near a minute
        page.goto(f"{app_url}/?steps=80")
        start = page.get_by_role("button", name="Start", exact=True)
        expect(start).to_be_enabled(timeout=60_000)
        t0 = time.time()
        start.click()
        # the synthetic images: one picture per class column, as soon as the initial set exists
        expect(page.locator('[data-testid="stImage"] img')).to_have_count(10, timeout=60_000)
        t_images = time.time() - t0
        # the accuracy beside the random baseline: the headline shows a checked accuracy
        expect(page.get_by_text("Distilled set,").or_(page.get_by_text("Distilled set (")).first).to_be_visible(timeout=300_000)
        t_accuracy = time.time() - t0
        expect(page.get_by_text("Random real images (1 per class)", exact=True)).to_be_visible()
        expect(page.locator(".legendtext").filter(has_text="random real images").first).to_be_visible()
        # let the short run finish so the screenshot shows the whole curve and the final accuracy
        expect(page.get_by_text("Finished after")).to_be_visible(timeout=300_000)
        page.mouse.move(5, 5)  # no tooltip in the picture
        time.sleep(2)
        bottom = page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMainBlockContainer\"] > *')]"
            ".map(e => e.getBoundingClientRect().bottom))"
        )
        height = min(2300, int(bottom) + 40)  # the page without the empty space below it
        shot = ROOT / "assets" / "screenshot.png" if os.environ.get("DISTILL_UPDATE_SCREENSHOT") else tmp_path / "screenshot.png"
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1500, "height": height})
        print(f"first images {t_images:.1f} s, first accuracy {t_accuracy:.1f} s after Start; screenshot {shot}")

        # on a projector's 1024 px nothing of the run is cut off: the headline's numbers and words, the
        # chart titles (written above the charts, where they wrap), the legends, the chosen settings
        page.set_viewport_size({"width": 1024, "height": 2300})
        time.sleep(3)
        expect(page.get_by_text("Test accuracy of networks trained on the synthetic images", exact=True)).to_be_visible()
        assert page.evaluate(CUT_OFF) == []
        browser.close()
    if os.environ.get("DISTILL_STRICT_TIMING"):
        assert t_images < 10 and t_accuracy < 60
