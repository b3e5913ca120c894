"""Shared UI code of the Streamlit pages (not a page itself: app.py lists the pages explicitly).

services: the job manager, store and reference jobs shared by all sessions; settings: widgets built
from the registries' Config dataclasses and their URL form; charts, images, runview: drawing.
"""
