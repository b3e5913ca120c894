"""Plotly figures of runs, sized and labelled to be read on a projector."""

from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

FONT = 16
# distinct colours for up to 10 lines (Tableau 10); more lines reuse them with a dash pattern
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
DASHES = ["solid", "dash", "dot", "dashdot"]
BASELINE_COLOR = "#7f7f7f"
FULL_COLOR = "#2ca02c"


LEGEND_ROW = 26  # pixels per legend row
LEGEND_LINE = 19  # pixels of each further line of a two-line entry
LEGEND_WRAP = 30  # characters of a legend line: a figure in a third of a 1024 px page holds about that many


TITLE_HEIGHT = 30  # pixels of a figure's height that its title took when Plotly drew it (now the page does)


def layout(fig: go.Figure, title: str, x: str, y: str, height: int = 330) -> go.Figure:
    """Fonts, axis titles; a legend under the x-axis title in a band of its own (placed in the
    figure's coordinates, with the figure grown by that band), so the two never overlap. The title is
    kept in the figure's ``meta`` (``title_of``), not drawn by Plotly: a Plotly title does not wrap and is
    cut off at the right of a narrow column (a projector's 1024 px), so the page writes it above the
    chart as text that wraps (``ui.chartview.show``)."""
    entries = [t for t in fig.data if t.showlegend is not False and t.name]
    longest = max((len(t.name) for t in entries), default=0)
    # few or long entries: one per row; many short ones (layers): two per row. Never an overlap.
    columns = 1 if len(entries) <= 4 or longest > 26 else 2
    rows = -(-len(entries) // columns) if len(entries) > 1 else 0
    if columns == 1 and rows:  # a long entry on two lines: Plotly cuts legend text off at the figure's edge
        for t in entries:
            t.name = "<br>".join(textwrap.wrap(t.name, LEGEND_WRAP)) if "<br>" not in t.name else t.name
    extra = sum(t.name.count("<br>") for t in entries) if rows else 0
    band = rows * LEGEND_ROW + extra * LEGEND_LINE + (8 if rows else 0)
    fig.update_layout(
        meta={"title": title},
        font={"size": FONT},
        height=height - TITLE_HEIGHT + band,
        margin={"l": 10, "r": 10, "t": 20, "b": 10 + band},
        showlegend=rows > 0,
        legend={
            "orientation": "h",
            "xref": "container",  # from the figure's left edge, not the plot's: long entries get the axis's width too
            "yref": "container",
            "yanchor": "bottom",
            "y": 0.0,
            "x": 0,
            "entrywidthmode": "fraction",
            "entrywidth": 1 / columns - 0.01,
            "font": {"size": FONT - 1},
        },
        xaxis_title=x,
        yaxis_title=y,
        hovermode="x unified",
    )
    # explicit sizes: Streamlit's chart theme would otherwise shrink ticks below projector size
    fig.update_xaxes(tickfont={"size": FONT - 1}, title_font={"size": FONT})
    fig.update_yaxes(tickfont={"size": FONT - 1}, title_font={"size": FONT})
    return fig


def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    pairs = [(a, b) for a, b in zip(xs, ys, strict=True) if b is not None and math.isfinite(b)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _reference_line(fig: go.Figure, x_max: float, y: float, color: str, dash: str, name: str) -> None:
    """A horizontal line at ``y`` across the whole run (a reference accuracy)."""
    fig.add_trace(
        go.Scatter(x=[0, x_max], y=[y, y], mode="lines", line={"color": color, "dash": dash, "width": 3}, name=name)
    )


def accuracy_figure(
    curves: list[dict[str, Any]],
    baseline: dict[str, Any] | None,
    full: dict[str, Any] | None,
    iterations: int,
    ipc: int | None,
    title: str = "Test accuracy",
    check_baseline: dict[str, Any] | None = None,
) -> go.Figure:
    """``curves``: [{"name", "accuracy": rows {"iteration", "mean", "std", "n"}, "final": dict|None,
    "check_words": how the checks were made (optional)}].

    The random-real baseline is a band (mean ± std); the full training set a dotted line. A baseline
    of the checks' own quicker protocol (``check_baseline``, when it is not the final one) is a thin
    dashed line: the checks compare with it, the final star with the band.
    """
    fig = go.Figure()
    x_max = max(1, iterations)
    if baseline:
        m, s = 100 * baseline["mean"], 100 * baseline["std"]
        fig.add_trace(
            go.Scatter(
                x=[0, x_max, x_max, 0],
                y=[m - s, m - s, m + s, m + s],
                fill="toself",
                mode="none",
                fillcolor="rgba(127,127,127,0.18)",
                hoverinfo="skip",
                showlegend=False,
            )
        )
        name = f"random real images ({ipc} per class): {m:.1f}%" if ipc else f"random real images: {m:.1f}%"
        _reference_line(fig, x_max, m, BASELINE_COLOR, "dash", name)
    if check_baseline and check_baseline != baseline:
        m = 100 * check_baseline["mean"]
        fig.add_trace(
            go.Scatter(x=[0, x_max], y=[m, m], mode="lines", line={"color": BASELINE_COLOR, "dash": "dot", "width": 2},
                       name=f"random real images, quick check: {m:.1f}%")
        )
    if full:
        f = 100 * full["mean"]
        _reference_line(fig, x_max, f, FULL_COLOR, "dot", f"all training images: {f:.1f}%")
    for i, c in enumerate(curves):
        color = c.get("color", PALETTE[i % len(PALETTE)])
        rows = [r for r in c["accuracy"] if r.get("n", 1) == 1]
        xs, ys = _finite([r["iteration"] for r in rows], [100 * r["mean"] for r in rows])
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    line={"color": color, "width": 3},
                    marker={"size": 9},
                    name=f"{c['name']} ({c.get('check_words', '1 network')})" if not c.get("final") else c["name"],
                )
            )
        final = c.get("final")
        if final:
            # several finals at the same step: spread them a little so every star shows
            it = c.get("final_iteration", iterations) + (i - (len(curves) - 1) / 2) * 0.012 * x_max
            fig.add_trace(
                go.Scatter(
                    x=[it],
                    y=[100 * final["mean"]],
                    mode="markers",
                    marker={"size": 16, "color": color, "symbol": "star"},
                    error_y={"type": "data", "array": [100 * final["std"]], "visible": True, "thickness": 2, "width": 8},
                    name=f"{c['name']} final: {100 * final['mean']:.1f} ± {100 * final['std']:.1f}% ({final['n']} networks)",
                )
            )
    fig.update_xaxes(range=[-0.02 * x_max, 1.04 * x_max])
    if len(fig.data) == 0:
        fig.update_yaxes(range=[0, 100])  # an empty chart still reads as a percentage scale
        fig.add_annotation(
            text="the first accuracy check comes after the baseline",
            showarrow=False,
            x=x_max / 2,
            y=50,
            font={"size": FONT, "color": "#7f7f7f"},
        )
    return layout(fig, title, "distillation step", "accuracy (%)")


def metric_figure(
    rows: Sequence[dict[str, float]], key: str, title: str, y: str, log: bool | None = None, smooth: bool = True
) -> go.Figure:
    xs, ys = _finite([r["iteration"] for r in rows], [r.get(key) for r in rows])
    fig = go.Figure()
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={
                    "color": "#c7c7c7" if smooth and len(ys) > 20 else PALETTE[0],
                    "width": 1.5 if smooth and len(ys) > 20 else 3,
                },
                name=key,
                showlegend=False,
            )
        )
        if smooth and len(ys) > 20:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=moving_average(ys),
                    mode="lines",
                    line={"color": PALETTE[0], "width": 3},
                    name="average",
                    showlegend=False,
                )
            )
    if log is None:
        log = bool(ys) and min(ys) > 0 and max(ys) / max(min(ys), 1e-12) > 30
    if log:
        fig.update_yaxes(type="log")
    return layout(fig, title, "distillation step", y)


def moving_average(ys: Sequence[float], window: int | None = None) -> list[float]:
    a = np.asarray(ys, dtype=float)
    w = window or max(3, len(a) // 15)
    kernel = np.ones(w) / w
    padded = np.concatenate([np.full(w - 1, a[0]), a])
    return np.convolve(padded, kernel, mode="valid").tolist()


def lines_figure(series: dict[str, tuple[list[float], list[float]]], title: str, x: str, y: str, height: int = 330) -> go.Figure:
    fig = go.Figure()
    for i, (name, (xs, ys)) in enumerate(series.items()):
        line = {"width": 3, "color": PALETTE[i % len(PALETTE)], "dash": DASHES[(i // len(PALETTE)) % len(DASHES)]}
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line=line))
    return layout(fig, title, x, y, height)


def title_of(fig: go.Figure) -> str:
    """The title ``layout`` gave a figure ("" for none)."""
    meta = fig.layout.meta
    return str(meta.get("title", "")) if isinstance(meta, dict) else ""


def histogram(values: np.ndarray, title: str, x: str, chosen: np.ndarray | None = None, height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=values, nbinsx=40, marker={"color": "#9ecae1"}, name="all real images"))
    if chosen is not None and len(chosen):
        fig.add_trace(
            go.Scatter(
                x=chosen,
                y=np.zeros(len(chosen)),
                mode="markers",
                name="chosen",
                marker={"symbol": "triangle-up", "size": 14, "color": "#d62728"},
            )
        )
    fig.update_layout(bargap=0.05)
    return layout(fig, title, x, "images", height)


def bars(labels: Sequence[str], values: Sequence[float], title: str, y: str, height: int = 300) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), marker={"color": PALETTE[0]}))
    return layout(fig, title, "", y, height)


def embedding_figure(
    xy: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    chosen: np.ndarray | None,
    scores: np.ndarray | None,
    title: str,
    height: int = 420,
    legend: bool = False,
) -> go.Figure:
    """UMAP map of real images coloured by class; chosen images as large outlined stars, sized by
    score where the initializer gives one. Class names are written at each class's centre, so the
    map needs no legend (it would not fit beside three others)."""
    fig = go.Figure()
    palette = PALETTE
    chosen_set = set(int(i) for i in chosen) if chosen is not None else set()
    real = np.array([i not in chosen_set for i in range(len(xy))])
    for c, name in enumerate(class_names):
        m = (labels == c) & real
        # SVG, not WebGL: the map must also draw in browsers without a GPU (and in headless tests)
        fig.add_trace(
            go.Scatter(
                x=xy[m, 0],
                y=xy[m, 1],
                mode="markers",
                name=str(name),
                showlegend=legend,
                marker={"size": 6, "color": palette[c % len(palette)], "opacity": 0.55},
                hoverinfo="skip",
            )
        )
        if m.any() and len(class_names) <= 20:
            cx, cy = np.median(xy[m, 0]), np.median(xy[m, 1])
            fig.add_annotation(
                x=cx,
                y=cy,
                text=f"<b>{name}</b>",
                showarrow=False,
                font={"size": FONT, "color": "black"},
                bgcolor="rgba(255,255,255,0.6)",
            )
    if chosen is not None and len(chosen):
        size = np.full(len(chosen), 16.0)
        if scores is not None:
            s = scores[chosen].astype(float)
            lo, hi = float(np.nanmin(s)), float(np.nanmax(s))
            size = 10 + 18 * ((s - lo) / (hi - lo) if hi > lo else np.ones_like(s) * 0.5)
        fig.add_trace(
            go.Scatter(
                x=xy[chosen, 0],
                y=xy[chosen, 1],
                mode="markers",
                name="chosen",
                showlegend=False,
                marker={
                    "size": size,
                    "color": [palette[int(c) % len(palette)] for c in labels[chosen]],
                    "line": {"width": 2, "color": "black"},
                    "symbol": "star",
                },
            )
        )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return layout(fig, title, "", "", height)


def heatmap(
    z: np.ndarray, x: Sequence[Any], y: Sequence[Any], title: str, xlabel: str, ylabel: str, height: int = 360
) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, x=[str(v) for v in x], y=[str(v) for v in y], colorscale="Viridis"))
    fig.update_xaxes(type="category", dtick=1)  # class names, every one labelled
    fig.update_yaxes(type="category")
    return layout(fig, title, xlabel, ylabel, height)


def error_bars_figure(
    series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], title: str, x: str, y: str, height: int = 360
) -> go.Figure:
    """One line with error bars per series, ``{name: (xs, means, stds)}``, on log-log axes (errors that
    fall like 1 / sqrt(m) are straight lines of slope -1/2)."""
    fig = go.Figure()
    for i, (name, (xs, means, stds)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=list(xs),
                y=list(means),
                error_y={"type": "data", "array": list(stds), "visible": True, "thickness": 2, "width": 6},
                mode="lines+markers",
                name=name,
                line={"width": 3, "color": color, "dash": DASHES[i % len(DASHES)]},
                marker={"size": 9},
            )
        )
    fig = layout(fig, title, x, y, height)
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig
