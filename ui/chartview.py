"""A chart on a page: its title as text that wraps to the column, then the Plotly figure.

Plotly draws a title on one line and cuts it off at the right of a narrow column (at 1024 px, a
projector's width, most titles of the Distill and Inside pages were cut), so ``charts.layout`` keeps
the title in the figure's ``meta`` and this writes it above the chart.
"""
from __future__ import annotations

import html

import plotly.graph_objects as go
import streamlit as st

from ui import charts

TITLE_STYLE = "font-size:1.2rem;font-weight:600;line-height:1.3;margin:0.4rem 0 -0.2rem 0"


def title_html(title: str) -> str:
    """The title as HTML: escaped, with the line breaks (``<br>``) its author put in kept."""
    lines = [html.escape(line) for line in title.split("<br>")]
    return f"<div style='{TITLE_STYLE}'>{'<br>'.join(lines)}</div>"


def show(fig: go.Figure, key: str) -> None:
    """``fig``'s title (``charts.title_of``), then the figure without Plotly's toolbar."""
    title = charts.title_of(fig)
    if title:
        st.markdown(title_html(title), unsafe_allow_html=True)
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})
