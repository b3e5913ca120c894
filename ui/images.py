"""Synthetic and real images as crisp, large pictures (nearest-neighbour upscaling: tiny 8x8 digits
must stay readable on a projector), and the bytes of the downloads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from PIL import Image

from distill_core import data as data_mod
from distill_core.artifacts import grid_image, png_bytes, to_uint8

CELL = 96  # displayed side of one image, in pixels


def to_pil(pixels: torch.Tensor, cell: int = CELL) -> Image.Image:
    """One image (C, H, W) in [0, 1] -> an RGB picture about ``cell`` pixels wide."""
    c, h, w = pixels.shape
    arr = to_uint8(pixels).permute(1, 2, 0).numpy()
    arr = np.repeat(arr, 3, axis=2) if c == 1 else arr[..., :3]
    scale = max(1, round(cell / max(h, w)))
    return Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST)


def class_strip(pixels: torch.Tensor, cell: int = CELL, pad: int = 4, max_images: int = 10) -> Image.Image:
    """Images of one class (n, C, H, W) stacked vertically (at most ``max_images``)."""
    ims = [to_pil(p, cell) for p in pixels[:max_images]]
    w, h = ims[0].size
    canvas = Image.new("RGB", (w, len(ims) * (h + pad) - pad), "white")
    for i, im in enumerate(ims):
        canvas.paste(im, (0, i * (h + pad)))
    return canvas


@dataclass(frozen=True)
class ClassColumn:
    """One class of the synthetic set as the page shows it: its name, a PNG strip, notes under it."""

    name: str
    png: bytes
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PerClassView:
    """A synthetic set ready to show: one column per class, or (many classes) one grid."""

    columns: tuple[ClassColumn, ...] = ()
    grid: bytes | None = None
    caption: str = ""


def per_class_view(
    pixels: torch.Tensor,
    class_names: tuple[str, ...],
    ipc: int,
    labels: torch.Tensor | None = None,
    max_classes: int = 20,
    cell: int = CELL,
) -> PerClassView:
    """The PNGs and captions of ``show_per_class``, encoded once: Streamlit sends PNG bytes as they are,
    while a PIL picture would be encoded again by every ``st.image`` call."""
    n = pixels.shape[0]
    classes = len(class_names) or max(1, n // max(ipc, 1))
    per = max(1, n // classes)
    if classes > max_classes:
        return PerClassView(
            grid=png_bytes(grid_image(pixels, per, cell=48)), caption=f"{classes} classes × {per} images (one row per class)"
        )
    soft = labels is not None and labels.is_floating_point() and labels.dim() == 2
    columns = []
    for c in range(classes):
        notes = [f"10 of {per} shown"] if per > 10 else []
        if soft:
            p = labels[c * per].softmax(0)
            notes.append(f"label: {100 * p.max():.0f}% {class_names[int(p.argmax())] if class_names else int(p.argmax())}")
        strip = class_strip(pixels[c * per : (c + 1) * per], cell)
        name = class_names[c] if c < len(class_names) else str(c)
        columns.append(ClassColumn(name, png_bytes(strip), tuple(notes)))
    return PerClassView(columns=tuple(columns))


def show_view(view: PerClassView) -> None:
    """Emit a built ``PerClassView`` (cheap: no image work)."""
    if view.grid is not None:
        st.image(view.grid, caption=view.caption)
        return
    for col, column in zip(st.columns(len(view.columns)), view.columns, strict=True):
        with col:
            st.markdown(
                f"<div style='text-align:center;font-size:1.15rem;font-weight:600'>{column.name}</div>", unsafe_allow_html=True
            )
            st.image(column.png, width="stretch")
            for note in column.notes:
                st.caption(note)


NO_IMAGES = "No images yet: they appear as soon as the run has made its initial set."


def show_per_class(
    pixels: torch.Tensor | None,
    class_names: tuple[str, ...],
    ipc: int,
    labels: torch.Tensor | None = None,
    max_classes: int = 20,
    cell: int = CELL,
) -> None:
    """The synthetic set, one column per class (name on top); a single grid for many classes."""
    if pixels is None:
        st.info(NO_IMAGES)
        return
    show_view(per_class_view(pixels, class_names, ipc, labels, max_classes, cell))


def grid_png(pixels: torch.Tensor, ipc: int) -> bytes:
    return png_bytes(grid_image(pixels, ipc))


@st.cache_data(show_spinner=False, max_entries=64)
def real_thumbs(dataset: str, indices: tuple[int, ...], cell: int = 64) -> list[Image.Image]:
    d = data_mod.load(dataset)
    px = d.denormalise(d.x_train[list(indices)])
    return [to_pil(p, cell) for p in px]


def to_pil_grid(pixels: torch.Tensor, ipc: int, classes: int, cell: int = 64) -> Image.Image:
    """Class-major images as one picture: one row per class, or with one image per class, a few rows of classes."""
    per_row = ipc if ipc > 1 else min(classes, 5)
    return grid_image(pixels, per_row, cell=cell)
