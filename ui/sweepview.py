"""The Compare page's "Accuracy against IPC" section: final accuracy of each method against images per
class (log axis), the random-real baseline per IPC, the full-data accuracy as a line; from the
finished runs of the store or from an uploaded ``sweep.json`` (``python -m distill_core sweep``)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import streamlit as st

from distill_core import data as data_mod
from distill_core.config import RunConfig
from distill_core.studies import sweep
from ui import charts, chartview
from ui.services import Services, services

FROM_STORE = "finished runs of this app"
FROM_FILE = "a sweep.json"


def sweep_figure(result: dict[str, Any]) -> go.Figure:
    """Methods as lines with std error bars, the random baseline dashed, full data a horizontal line."""
    fig = go.Figure()
    rows = result["rows"]
    ipcs = sorted({r["ipc"] for r in rows}) or [1]
    x_span = [ipcs[0] / 1.3, ipcs[-1] * 1.3]  # the reference line spans the whole log axis
    full = result.get("full_data")
    if full:
        f = 100 * full["mean"]
        fig.add_trace(go.Scatter(x=x_span, y=[f, f], mode="lines", line={"color": charts.FULL_COLOR, "dash": "dot", "width": 3},
                                 name=f"all training images: {f:.1f}%"))
    base = sweep.random_curve(rows)
    if base:
        fig.add_trace(go.Scatter(
            x=[p[0] for p in base], y=[100 * p[1] for p in base], mode="lines+markers",
            line={"color": charts.BASELINE_COLOR, "dash": "dash", "width": 3}, marker={"size": 8},
            error_y={"type": "data", "array": [100 * p[2] for p in base], "visible": True},
            name="random real images",
        ))
    for i, (method, points) in enumerate(sweep.curves(rows).items()):
        fig.add_trace(go.Scatter(
            x=[p[0] for p in points], y=[100 * p[1] for p in points], mode="lines+markers",
            line={"color": charts.PALETTE[i % len(charts.PALETTE)], "width": 3}, marker={"size": 10},
            error_y={"type": "data", "array": [100 * p[2] for p in points], "visible": True, "thickness": 2},
            name=method.upper(),
        ))
    fig.update_xaxes(type="log", tickvals=ipcs, ticktext=[str(i) for i in ipcs])
    return charts.layout(fig, f"Accuracy against images per class ({result.get('dataset', '')})",
                         "images per class (log scale)", "final accuracy (%)", height=420)


def full_line(S: Services, records: list[Any]) -> dict[str, Any] | None:
    """The full-data accuracy the other pages show (``References``) for the network of the newest of
    ``records``; asks for it to be measured on a small dataset where it is not known yet."""
    try:
        cfg = RunConfig.from_dict(records[0].config_dict)
        data = data_mod.load(cfg.dataset)
    except (ValueError, TypeError, KeyError):
        return None
    S.references.request(cfg, data)
    known = S.references.get(cfg, data)
    return None if known is None else {"mean": known["mean"], "std": known.get("std", 0.0), "source": known["source"]}


def from_store(S: Services) -> dict[str, Any] | None:
    records = S.store.list(status="done", limit=5000)
    datasets = sorted({r.dataset for r in records})
    if not datasets:
        st.info("No finished runs yet: run a few methods at several IPCs (or load a sweep.json).")
        return None
    wanted = st.query_params.get("dataset")  # the table's dataset filter, when it names one
    ds = st.selectbox("Dataset", datasets, index=datasets.index(wanted) if wanted in datasets else 0, key="sweep_dataset")
    mine = [r for r in records if r.dataset == ds]
    rows = sweep.rows_from_records(mine)
    full = full_line(S, mine)
    st.caption(
        f"{len(mine)} finished runs of {ds}, pooled per method and IPC (mean ± std over their evaluation networks and runs). "
        + (f"Full data: {full['source']}." if full else "Full data: not measured yet for this dataset.")
    )
    return {"dataset": ds, "rows": rows, "full_data": full}


def from_file() -> dict[str, Any] | None:
    up = st.file_uploader("sweep.json", type=["json"], key="sweep_upload",
                          help="Written by `python -m distill_core sweep --dataset NAME --methods a,b --ipcs 1,10,50 --out DIR`.")
    if up is None:
        st.caption("Load the sweep.json of a `python -m distill_core sweep` to plot it here.")
        return None
    try:
        return sweep.load(up.getvalue())
    except ValueError as e:
        st.error(f"**{up.name} cannot be shown:** {e}")
        return None


def sweep_section(S: Services | None = None) -> None:
    """Where each method stops gaining with more images per class, and how close it comes to full data."""
    S = S or services()
    st.divider()
    st.subheader("Accuracy against IPC")
    source = st.radio("From", [FROM_STORE, FROM_FILE], horizontal=True, key="sweep_source")
    result = from_store(S) if source == FROM_STORE else from_file()
    if result is None:
        return
    if not sweep.curves(result["rows"]):
        st.info("No finished run with a final accuracy to plot.")
        return
    result = {**result, **sweep.findings(result["rows"], result.get("full_data"))}
    chartview.show(sweep_figure(result), key="sweep-chart")
    st.markdown(sweep.sentences(result))
