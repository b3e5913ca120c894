"""A dataset's images as they are kept, and read normalised: ``Images``.

Pixels that arrive as bytes (uint8, 0..``top``) stay bytes, a quarter of their float32 size on the
host and on a GPU, and every read (``images[idx]``, ``images[a:b]``) turns the rows it takes into the
normalised float32 the engine computes with: ``(byte / top - mean) / std``, the same float32
operations in the same order that normalising the whole set once did, so the values are bit for bit
those of a float32 copy. Pixels that arrive as floats are kept normalised, as float32, and a read is
plain indexing (a view for a slice).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

READ_VALUES = 2**22  # pixel values per slice of ``slices``: 16 MB of float32 whatever the set's size


class Images:
    """(N, C, H, W) images: ``stored`` uint8 with ``top`` the byte value of a white pixel and the
    per-channel ``mean``/``std`` of the pixels in [0, 1] (kept as ``pixel_mean``/``pixel_std``), or
    float32 already normalised (``top`` None).
    Indexing returns normalised float32 tensors; ``shape``, ``device`` and ``len`` are the stored ones."""

    __slots__ = ("stored", "top", "pixel_mean", "pixel_std", "__weakref__")  # weakly referenced by the fingerprint memo

    def __init__(self, stored: torch.Tensor, top: float | None = None, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        if stored.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(stored.shape)}")
        if top is None and stored.dtype != torch.float32:
            raise ValueError(f"unnormalised images must be float32, got {stored.dtype}")
        if top is not None and (stored.dtype != torch.uint8 or mean is None or std is None):
            raise ValueError("byte images need uint8 storage, a mean and a std")
        self.stored, self.top = stored, top
        self.pixel_mean = None if mean is None else mean.to(stored.device, torch.float32).view(-1, 1, 1)  # (C, 1, 1): one image or many
        self.pixel_std = None if std is None else std.to(stored.device, torch.float32).view(-1, 1, 1)

    @classmethod
    def of(cls, x: "Images | torch.Tensor") -> "Images":
        """``x`` itself, or a normalised float32 tensor wrapped as is."""
        return x if isinstance(x, Images) else cls(x)

    @property
    def shape(self) -> torch.Size:
        return self.stored.shape

    @property
    def device(self) -> torch.device:
        return self.stored.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what a read gives

    @property
    def nbytes(self) -> int:
        return self.stored.numel() * self.stored.element_size()

    def __len__(self) -> int:
        return self.stored.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows = self.stored[index]
        if self.top is None:
            return rows
        assert self.pixel_mean is not None and self.pixel_std is not None
        return rows.float().div_(self.top).sub_(self.pixel_mean).div_(self.pixel_std)

    def to(self, device: torch.device | str) -> "Images":
        if self.top is None:
            return Images(self.stored.to(device))
        assert self.pixel_mean is not None and self.pixel_std is not None
        return Images(self.stored.to(device), self.top, self.pixel_mean.flatten(), self.pixel_std.flatten())

    def slices(self, values: int = READ_VALUES) -> Iterator[torch.Tensor]:
        """Consecutive normalised slices of a few images each (about ``values`` pixel values), in order."""
        per = max(1, values // max(1, self.stored[0].numel()))
        for s in range(0, len(self), per):
            yield self[s : s + per]

    def __repr__(self) -> str:
        kept = "float32, normalised" if self.top is None else f"uint8 / {self.top:g}"
        return f"Images({tuple(self.shape)}, {kept}, on {self.device})"
