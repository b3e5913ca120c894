"""Links between pages that also work when a page runs on its own (then st.navigation has not
registered the others, and a plain markdown link to the page's URL stands in); the opening every
page that works with runs shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ui import state
from ui.services import SID_PARAM, Services, services, session_id


@dataclass(frozen=True)
class Page:
    path: str  # the file under views/ (not pages/: a pages/ folder beside st.navigation would switch
    # Streamlit's legacy multipage mode on for the first request of a page URL)
    title: str
    icon: str
    url_path: str  # "" for the default page


PAGES = (
    Page("views/distill.py", "Distill", ":material/science:", ""),
    Page("views/initializations.py", "Initializations", ":material/grass:", "initializations"),
    Page("views/inside.py", "Inside the method", ":material/biotech:", "inside"),
    Page("views/compare.py", "Compare runs", ":material/compare:", "compare"),
    Page("views/learn.py", "Learn", ":material/school:", "learn"),
)
URL_PATHS = {p.path: p.url_path for p in PAGES}


def navigation() -> Any:
    """``st.navigation`` over ``PAGES`` (the first is the default)."""
    return st.navigation([
        st.Page(p.path, title=p.title, icon=p.icon, default=not p.url_path, **({"url_path": p.url_path} if p.url_path else {}))
        for p in PAGES
    ])


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
        sid = st.session_state.get(state.SESSION_ID)
        query_params = {**(query_params or {}), **({SID_PARAM: sid} if sid else {})}
        query = f"?{urlencode(query_params, doseq=True)}" if query_params else ""
        st.markdown(f"{icon or ''} [{label}](/{URL_PATHS.get(page, '')}{query})")
