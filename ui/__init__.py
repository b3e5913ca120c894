"""What the pages (``views/``) share and what touches Streamlit; the logic lives in the engine.

nav: the table of pages and links between them; services: the engine's shared services
(``distill_core.runs.jobs``) once per process, the session's id; state: the session-state keys;
settings: widgets built from the options dataclasses (``distill_core.options``) and their URL form;
charts, images, runview, uploads: drawing and the upload box.
"""
