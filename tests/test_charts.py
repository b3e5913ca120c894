"""Charts that a projector's narrow columns cannot cut off: the title is kept for the page to write
above the chart (where it wraps), long legend entries take two lines, and the page's title text is
escaped."""
from __future__ import annotations

from ui import charts, chartview


def test_the_title_is_kept_for_the_page_and_not_drawn_by_plotly():
    fig = charts.lines_figure({"a": ([0, 1], [1.0, 2.0])}, "Matching loss<br>lower: closer to the real data", "step", "loss")
    assert charts.title_of(fig) == "Matching loss<br>lower: closer to the real data"
    assert not fig.layout.title.text  # Plotly would draw it on one line, cut off at the column's edge
    assert charts.title_of(charts.lines_figure({}, "", "x", "y")) == ""


def test_long_legend_entries_take_two_lines_and_the_legend_band_grows_for_them():
    baseline = {"mean": 0.744, "std": 0.025}
    final = {"mean": 0.871, "std": 0.004, "n": 2}
    fig = charts.accuracy_figure([{"name": "DC", "accuracy": [], "final": final}], baseline, {"mean": 0.975}, 20, 2)
    names = [t.name for t in fig.data if t.name]
    assert "random real images (2 per<br>class): 74.4%" in names and "DC final: 87.1 ± 0.4% (2<br>networks)" in names
    assert "all training images: 97.5%" in names  # short entries stay on one line
    assert all(len(line) <= charts.LEGEND_WRAP for n in names for line in n.split("<br>"))
    alone = charts.accuracy_figure([{"name": "DC", "accuracy": [], "final": final}], None, None, 20, 2)  # one entry: no legend
    assert fig.layout.height - alone.layout.height == 3 * charts.LEGEND_ROW + 2 * charts.LEGEND_LINE + 8  # 3 rows, 2 wrapped


def test_the_page_writes_the_title_escaped_with_its_line_breaks():
    out = chartview.title_html("Loss <of> S & T<br>lower: better")
    assert "Loss &lt;of&gt; S &amp; T<br>lower: better" in out and out.startswith("<div")
