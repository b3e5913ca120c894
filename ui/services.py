"""The engine's shared services (``distill_core.runs.jobs``), once per app process, and this browser
session's id."""

from __future__ import annotations

import atexit
import os

import streamlit as st

from distill_core.runs.jobs import Services, make_services
from ui import state

__all__ = ["SID_PARAM", "Services", "services", "session_id"]


@st.cache_resource(show_spinner=False)
def services() -> Services:
    S = make_services(os.environ.get("DISTILL_RUNS"))
    if S.backend is not None:
        S.backend.start()  # the workers import torch while the person picks the settings
    atexit.register(S.shutdown)  # on SIGTERM Streamlit stops the server and the process exits: end runs first
    return S


SID_PARAM = "sid"  # the URL query parameter that carries the session's secret


def session_id() -> str:
    """This browser session's secret: the owner of the runs it starts, who may pause, step, stop,
    resume and delete them.

    The server issues it (``Services.issue_session``: 128 random bits) and keeps it in the URL
    (``?sid=``) as well as in the session, so that a reload of the same address (a new Streamlit
    session) keeps control of the runs. An id the server did not issue is replaced by a new one: a
    made-up ``?sid=`` controls nothing. Whoever has the address has that control, so a shared link
    leaves it out (the teachers' link builder does)."""
    sid = st.session_state.get(state.SESSION_ID)
    if sid is None:
        from_url = st.query_params.get(SID_PARAM, "")
        S = services()
        sid = from_url if S.knows_session(from_url) else S.issue_session()
    st.session_state[state.SESSION_ID] = sid
    if st.query_params.get(SID_PARAM) != sid:  # a page switch drops the query parameters: put it back
        st.query_params[SID_PARAM] = sid
    return sid
