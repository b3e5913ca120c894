"""The Compare page's "Which matching window" section: DATM at each IPC with early and late windows
of the experts' epochs (``python -m distill_core windows``), the experts' epochs on the x axis, from
the runs the command recorded in this app's store or from an uploaded ``windows.json``."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import streamlit as st

from distill_core.studies import windows
from ui import charts, chartview
from ui.services import Services, services

COMMAND = "python -m distill_core windows --dataset digits --ipcs 1,10 --store runs --out windows-digits"


def windows_figure(result: dict[str, Any]) -> go.Figure:
    """Per IPC (a colour): each window a segment over its start epochs at its accuracy, with the std as
    an error bar at its middle; the IPC's random-real baseline dashed across."""
    fig = go.Figure()
    rows = [r for r in result["rows"] if "synthetic" in r]
    x_max = max(r["window"][1] for r in rows)
    for i, ipc in enumerate(sorted({r["ipc"] for r in rows})):
        color = charts.PALETTE[i % len(charts.PALETTE)]
        mine = sorted((r for r in rows if r["ipc"] == ipc), key=lambda r: r["window"][0])
        xs, ys = [], []
        for r in mine:
            xs += [r["window"][0], r["window"][1], None]
            ys += [100 * r["synthetic"]["mean"]] * 2 + [None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": color, "width": 6}, name=f"IPC {ipc}", legendgroup=str(ipc)))
        fig.add_trace(go.Scatter(
            x=[(r["window"][0] + r["window"][1]) / 2 for r in mine], y=[100 * r["synthetic"]["mean"] for r in mine],
            mode="markers", marker={"color": color, "size": 9}, text=[r["label"] for r in mine],
            hovertemplate="%{text} window: %{y:.1f}%<extra></extra>",
            error_y={"type": "data", "array": [100 * r["synthetic"]["std"] for r in mine], "visible": True},
            showlegend=False, legendgroup=str(ipc),
        ))
        base = [r["random"]["mean"] for r in mine if r.get("random")]
        if base:
            b = 100 * sum(base) / len(base)
            fig.add_trace(go.Scatter(x=[0, x_max], y=[b, b], mode="lines", line={"color": color, "dash": "dash", "width": 2},
                                     name=f"IPC {ipc}: random real {b:.1f}%", legendgroup=str(ipc)))
    return charts.layout(fig, "Which part of the experts' trajectories to match", "expert epoch (the window of start epochs)",
                         "final accuracy (%)", height=400)


def from_store(S: Services) -> dict[str, Any] | None:
    records = [r for r in S.store.list(status="done", limit=5000) if r.method == "datm" and r.label.startswith("datm window ")]
    datasets = sorted({r.dataset for r in records})
    if not datasets:
        st.info(f"No window runs in this app's store yet. On a terminal: `{COMMAND}` (or load its windows.json).")
        return None
    ds = st.selectbox("Dataset", datasets, key="windows_dataset")
    return windows.rows_from_records([r for r in records if r.dataset == ds])


def from_file() -> dict[str, Any] | None:
    up = st.file_uploader("windows.json", type=["json"], key="windows_upload", help=f"Written by `{COMMAND}`.")
    if up is None:
        return None
    try:
        return windows.load(up.getvalue())
    except ValueError as e:
        st.error(f"**{up.name} cannot be shown:** {e}")
        return None


def windows_section(S: Services | None = None) -> None:
    """DATM's difficulty alignment: which window of expert epochs wins at which IPC."""
    S = S or services()
    st.divider()
    st.subheader("Which matching window, for which IPC")
    st.caption(
        "DATM's claim: the early epochs of the expert trajectories teach easy patterns and suit small synthetic sets, "
        "the late epochs teach hard patterns and suit large ones. Each segment is a DATM run (pooled over seeds) that "
        "matched only start epochs in that window; the dashed line of the same colour is random real images."
    )
    source = st.radio("From", ["runs of this app", "a windows.json"], horizontal=True, key="windows_source")
    result = from_store(S) if source == "runs of this app" else from_file()
    if not result or not any("synthetic" in r for r in result["rows"]):
        return
    chartview.show(windows_figure(result), key="windows-chart")
    st.markdown(windows.claim(result))
