"""Distillation Explorer's engine: datasets, networks, augmentation, initializers, methods, runs.

Never imports streamlit: the UI lives in pages/ and only reads snapshots.
"""
__version__ = "0.1.0"
