"""Value types every layer shares: a synthetic set (what a method hands out) and an initial set
(what an initializer chooses). Tensors only; nothing here imports the rest of the engine."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Synthetic:
    images: torch.Tensor  # (C * ipc, ch, H, W), normalised like the data
    labels: torch.Tensor  # (C * ipc,) int64, or (C * ipc, C) float logits (soft labels)
    lr: float | None = None  # a learned evaluation learning rate, where the method learns one


@dataclass(frozen=True)
class InitResult:
    images: torch.Tensor  # (C * ipc, ch, H, W), normalised like the data
    labels: torch.Tensor  # (C * ipc,) int64, class-major
    indices: torch.Tensor | None = None  # (C * ipc,) into data.x_train; None when not real images
    scores: torch.Tensor | None = None  # (N_train,) importance of every candidate
    weights: torch.Tensor | None = None  # (C * ipc,) coreset weights where the construction gives them
