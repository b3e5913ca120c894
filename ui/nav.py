"""Links between pages that also work when a page runs on its own (then st.navigation has not
registered the others, and a plain markdown link to the page's URL stands in); the opening every
page that works with runs shares."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ui.services import SID_PARAM, Services, services, session_id

URL_PATHS = {
    "views/distill.py": "",
    "views/initializations.py": "initializations",
    "views/inside.py": "inside",
    "views/compare.py": "compare",
    "views/learn.py": "learn",
}


def page_start(title: str, intro: str) -> tuple[Services, str]:
    """Title and introduction of a page; returns the shared services and this session's id (the owner
    of the runs it starts)."""
    S = services()
    me = session_id()
    st.title(title)
    st.markdown(intro)
    return S, me


def link(page: str, label: str, icon: str | None = None, query_params: dict[str, Any] | None = None) -> None:
    try:
        st.page_link(page, label=label, icon=icon, query_params=query_params)
    except StreamlitAPIException:
        # a plain link loads the page anew (a new session): it carries the session's id along
        sid = st.session_state.get("session_id")
        query_params = {**(query_params or {}), **({SID_PARAM: sid} if sid else {})}
        query = f"?{urlencode(query_params, doseq=True)}" if query_params else ""
        st.markdown(f"{icon or ''} [{label}](/{URL_PATHS.get(page, '')}{query})")


def ensure_app_navigation() -> None:
    """The first request a fresh server gets for a page URL (e.g. /compare) is routed by Streamlit's
    legacy pages/ folder mode, which runs the page without app.py (no wide layout, file names in
    the sidebar). Leave that mode and rerun: app.py's st.navigation then routes the same URL."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without this internal: nothing to fix
        return
    first_run = "_nav_checked" not in st.session_state
    st.session_state["_nav_checked"] = True
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        if first_run:  # a session's first run carries no click that a rerun could lose
            st.rerun()
