"""Distillation Explorer: page config, the session's id in the URL (on every page), routing."""

import streamlit as st

from ui import style
from ui.nav import navigation
from ui.services import session_id

st.set_page_config(page_title="Distillation Explorer", page_icon=":material/science:", layout="wide")
session_id()  # ?sid= in the address of every page, so that a reload keeps control of this session's runs
style.apply()
navigation().run()
