"""Distillation Explorer: page config and routing only."""
import streamlit as st

st.set_page_config(page_title="Distillation Explorer", page_icon="🧪", layout="wide")
st.navigation([st.Page("pages/distill.py", title="Distill", default=True)]).run()
