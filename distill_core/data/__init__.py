"""Datasets as whole tensors (``datasets.Data``), by name or by path: ``load``.

Sources: the built-in datasets (``builtin.DATASETS``: scikit-learn digits, Fashion-MNIST, torchvision
sets) and a user's ``.npz`` or zip of one folder of images per class (``uploads``, which checks it).
"""
from __future__ import annotations

import functools
from pathlib import Path

from distill_core.data.builtin import DATASETS
from distill_core.data.datasets import Data, DataError
from distill_core.data.uploads import load_npz, load_zip

__all__ = ["load", "load_cached"]


@functools.lru_cache(maxsize=8)
def load_cached(name: str, mtime: float | None) -> Data:
    if mtime is not None:
        path = Path(name)
        return load_npz(path) if path.suffix.lower() == ".npz" else load_zip(path)
    return DATASETS.get(name)()


def load(name: str) -> Data:
    """Load a registered dataset by name, or a user's ``.npz`` / ``.zip`` by path (cached, on CPU)."""
    path = Path(name)
    if path.suffix.lower() in (".npz", ".zip"):
        if not path.exists():
            raise DataError(f"no file {path}; give a path to an existing .npz or .zip")
        return load_cached(str(path.resolve()), path.stat().st_mtime)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS.names())}, or a path to an .npz or .zip")
    return load_cached(name, None)

