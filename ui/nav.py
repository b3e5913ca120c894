"""Links between pages that also work when a page runs on its own (then st.navigation has not
registered the others, and a plain markdown link to the page's URL stands in)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

URL_PATHS = {
    "pages/distill.py": "",
    "pages/initializations.py": "initializations",
    "pages/inside.py": "inside",
    "pages/compare.py": "compare",
    "pages/learn.py": "learn",
}


def link(page: str, label: str, icon: str | None = None, query_params: dict[str, Any] | None = None) -> None:
    try:
        st.page_link(page, label=label, icon=icon, query_params=query_params)
    except StreamlitAPIException:
        query = f"?{urlencode(query_params or {}, doseq=True)}" if query_params else ""
        st.markdown(f"{icon or ''} [{label}](/{URL_PATHS.get(page, '')}{query})")
