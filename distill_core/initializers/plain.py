"""The initializers that compare no images: Gaussian noise, and real images drawn uniformly per class."""
from __future__ import annotations

from pathlib import Path

import torch

from distill_core.data.datasets import Data
from distill_core.data.sampling import random_subset
from distill_core.initializers.base import NoOptions, check_ipc, class_labels, from_indices, initializer
from distill_core.synthetic import InitResult


@initializer("noise")
def noise(data: Data, ipc: int, generator: torch.Generator, cfg: NoOptions, cache_dir: Path) -> InitResult:
    """Gaussian noise in normalised pixel space."""
    shape = (data.num_classes * ipc, data.channels, *data.im_size)
    return InitResult(torch.randn(shape, generator=generator).to(data.x_train.device), class_labels(data, ipc))


@initializer("random")
def random(data: Data, ipc: int, generator: torch.Generator, cfg: NoOptions, cache_dir: Path) -> InitResult:
    """Real images drawn uniformly per class."""
    check_ipc(data, ipc)
    return from_indices(data, random_subset(data, ipc, generator))
