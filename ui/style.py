"""Page-wide style the widgets' own settings do not reach, injected once per page (``app.py``)."""
from __future__ import annotations

import streamlit as st

# A metric's value, label and delta (the Distill page's headline: "87.1 ± 0.4%", "Random real images
# (2 per class)", "+12.6 points vs random") are single lines that Streamlit cuts off with an ellipsis
# in a narrow column: at 1024 px, a projector's width, the headline read "87.1 ± 0.…". The value's size
# now follows the window's width down to 1.5rem, and text too long for its column wraps.
CSS = """
<style>
[data-testid="stMetricValue"] { font-size: clamp(1.5rem, 2.6vw, 2.25rem); }
[data-testid="stMetricValue"] *, [data-testid="stMetricLabel"] *, [data-testid="stMetricDelta"] * {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
}
</style>
"""


def apply() -> None:
    st.html(CSS)
