"""The engine's shared services (``distill_core.jobs``), once per app process, and this browser
session's id."""

from __future__ import annotations

import os
import re
import uuid

import streamlit as st

from distill_core.jobs import Services, make_services
from ui import state

__all__ = ["SID_PARAM", "Services", "services", "session_id"]


@st.cache_resource(show_spinner=False)
def services() -> Services:
    return make_services(os.environ.get("DISTILL_RUNS"))


SID_PARAM = "sid"  # the URL query parameter that carries the session's id
SID_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,64}")  # an id from the URL that is not like this is replaced


def session_id() -> str:
    """This browser session's id: the owner of the runs it starts, who may pause, step and stop them.

    Kept in the URL (``?sid=``) as well as in the session, so that a reload of the same address (a new
    Streamlit session) keeps control of the runs; a session opened without one gets a new id. Whoever
    has the address has that control."""
    from_url = st.query_params.get(SID_PARAM, "")
    sid = st.session_state.get(state.SESSION_ID) or (from_url if SID_PATTERN.fullmatch(from_url) else uuid.uuid4().hex[:8])
    st.session_state[state.SESSION_ID] = sid
    if st.query_params.get(SID_PARAM) != sid:  # a page switch drops the query parameters: put it back
        st.query_params[SID_PARAM] = sid
    return sid
