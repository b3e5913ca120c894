"""The Compare page's "Against the published figures" section: the finished runs of this app's store
whose (method, dataset, IPC) has a published figure, as the table ``python -m distill_core
reproduce`` writes (``studies.reproduce.cells``), pooled per tier."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from distill_core.studies import reproduce
from ui import runview
from ui.services import Services, services

COMMAND = ("python -m distill_core reproduce --dataset fashion-mnist --methods dm,dc,dsa --ipcs 1,10 --tier paper "
           "--out out/repro --store runs")


def frame(rows: list[dict]) -> pd.DataFrame:
    """One row per (dataset, method, IPC, tier): the reproduction table's columns, the dataset first."""
    return pd.DataFrame([{"dataset": runview.dataset_label(r["dataset"]), **dict(zip(reproduce.COLUMNS, reproduce.cells(r), strict=True))}
                         for r in rows])


def published_section(S: Services | None = None) -> None:
    """How the runs made here stand against the figures the field publishes."""
    S = S or services()
    st.divider()
    st.subheader("Against the published figures")
    rows = reproduce.rows_from_records(S.store.list(status="done", limit=5000))
    if not rows:
        st.info(
            "No finished run has a published figure to compare with yet: the authors published MNIST, Fashion-MNIST and "
            "CIFAR-10 at 1, 10 and 50 images per class (DC, DSA, DM; MTT and DATM on CIFAR-10). "
            f"From a terminal in the app's folder, `{COMMAND}` runs those cells, writes the same table and records the runs "
            "here (`--store runs`)."
        )
        return
    st.dataframe(frame(rows), hide_index=True, key="published-table")
    st.caption(
        "This app's finished runs, pooled per method, IPC and tier, beside the published figure and its random-real row. "
        + reproduce.LEGEND[0].upper() + reproduce.LEGEND[1:]
        + ". A *quick* run is shortened against the authors' settings, so its gap to the published figure is not the method's; "
        "the *paper* tier uses their settings. Sources: " + "; ".join(reproduce.sources_of(rows)) + "."
    )
