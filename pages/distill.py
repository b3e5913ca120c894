import streamlit as st

st.title("Distillation Explorer")
st.write("The app pages are being built; use `python -m distill_core run` for now.")
