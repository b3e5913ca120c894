"""Initial synthetic sets. Each initializer returns the chosen real indices (class-major) and a
score for every training image where it has one, so the app can draw them.

Signature: ``fn(data, ipc, generator, **options) -> InitResult``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from distill_core.data import Data
from distill_core.evaluate import random_subset
from distill_core.registry import Registry


@dataclass(frozen=True)
class InitResult:
    images: torch.Tensor  # (C * ipc, ch, H, W), normalised like the data
    labels: torch.Tensor  # (C * ipc,) int64, class-major
    indices: torch.Tensor | None = None  # (C * ipc,) into data.x_train; None when not real images
    scores: torch.Tensor | None = None  # (N_train,) importance of every candidate
    weights: torch.Tensor | None = None  # (C * ipc,) coreset weights where the construction gives them


INITIALIZERS: Registry[Callable[..., InitResult]] = Registry("initializer")


def check_ipc(data: Data, ipc: int) -> None:
    smallest = min(data.class_counts())
    if ipc > smallest:
        name = data.class_names[data.class_counts().index(smallest)]
        raise ValueError(
            f"ipc={ipc} is larger than the {smallest} training images of class {name!r}; choose ipc <= {smallest}"
        )


def from_indices(data: Data, indices: torch.Tensor, **extra: Any) -> InitResult:
    indices = indices.to(data.x_train.device)
    return InitResult(data.x_train[indices].clone(), data.y_train[indices].clone(), indices, **extra)


def class_labels(data: Data, ipc: int) -> torch.Tensor:
    return torch.arange(data.num_classes, device=data.x_train.device).repeat_interleave(ipc)


@INITIALIZERS.register("noise")
def noise(data: Data, ipc: int, generator: torch.Generator, **_: Any) -> InitResult:
    """Gaussian noise in normalised pixel space."""
    shape = (data.num_classes * ipc, data.channels, *data.im_size)
    return InitResult(torch.randn(shape, generator=generator).to(data.x_train.device), class_labels(data, ipc))


@INITIALIZERS.register("random")
def random(data: Data, ipc: int, generator: torch.Generator, **_: Any) -> InitResult:
    """Real images drawn uniformly per class."""
    check_ipc(data, ipc)
    return from_indices(data, random_subset(data, ipc, generator))


def create(name: str, data: Data, ipc: int, generator: torch.Generator, **options: Any) -> InitResult:
    return INITIALIZERS.get(name)(data, ipc, generator, **options)
