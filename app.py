"""Distillation Explorer: page config, the session's id in the URL (on every page), routing."""

import streamlit as st

from ui.services import session_id

st.set_page_config(page_title="Distillation Explorer", page_icon=":material/science:", layout="wide")
session_id()  # ?sid= in the address of every page, so that a reload keeps control of this session's runs
st.navigation(
    [
        st.Page("views/distill.py", title="Distill", icon=":material/science:", default=True),
        st.Page("views/initializations.py", title="Initializations", icon=":material/grass:", url_path="initializations"),
        st.Page("views/inside.py", title="Inside the method", icon=":material/biotech:", url_path="inside"),
        st.Page("views/compare.py", title="Compare runs", icon=":material/compare:", url_path="compare"),
        st.Page("views/learn.py", title="Learn", icon=":material/school:", url_path="learn"),
    ]
).run()
