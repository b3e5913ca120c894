"""What every initializer shares: the registry, its decorator, the checks and the result's assembly.

An initializer is a function ``fn(data, ipc, generator, cfg, cache_dir) -> InitResult`` registered
with ``@initializer(name, Config)``, ``Config`` an ``Options`` dataclass (its fields' metadata hold
help and limits); ``create(name, data, ipc, generator, cache_dir, **options)`` builds the config.
It returns the chosen real indices (class-major) and a score for every training image where it has
one, so the app can draw them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from distill_core.data.datasets import Data
from distill_core.options import Options, build
from distill_core.paths import cache_dir as default_cache_dir
from distill_core.registry import Registry
from distill_core.synthetic import InitResult

__all__ = [
    "INITIALIZERS", "InitResult", "NoOptions", "check_ipc", "create", "initializer", "options_of", "weighing_initializers",
]

Initializer = Callable[[Data, int, torch.Generator, Any, Path], InitResult]
INITIALIZERS: Registry[Initializer] = Registry("initializer")


@dataclass(frozen=True)
class NoOptions(Options):
    """An initializer that takes no options."""


def initializer(
    name: str, config: type[Options] = NoOptions, score_meaning: str | None = None, gives_weights: bool = False
) -> Callable[[Initializer], Initializer]:
    """Register ``fn`` under ``name`` with its options dataclass (``fn.Config``), what the scores it
    gives every training image mean (``fn.score_meaning``, for the app; None: it gives none, or they
    need no words), and whether it gives the chosen images coreset weights (``fn.gives_weights``:
    ``InitResult.weights``, which ``syn_weights="coreset"`` needs)."""

    def add(fn: Initializer) -> Initializer:
        fn.Config = config  # type: ignore[attr-defined]
        fn.score_meaning = score_meaning  # type: ignore[attr-defined]
        fn.gives_weights = gives_weights  # type: ignore[attr-defined]
        return INITIALIZERS.register(name)(fn)

    return add


def weighing_initializers() -> list[str]:
    """The initializers that give coreset weights, in registry order."""
    return [n for n in INITIALIZERS.names() if INITIALIZERS.get(n).gives_weights]


def options_of(name: str, options: dict[str, Any]) -> Options:
    return build(INITIALIZERS.get(name).Config, options, f"initializer {name!r}")


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


def create(
    name: str, data: Data, ipc: int, generator: torch.Generator, cache_dir: Path | str | None = None, **options: Any
) -> InitResult:
    """Run initializer ``name`` with ``options`` (its ``Config``'s fields, automatic ones filled for
    ``data`` and ``ipc``) on ``data``."""
    cfg = options_of(name, options).resolved(data, ipc, 0)
    return INITIALIZERS.get(name)(data, ipc, generator, cfg, Path(cache_dir) if cache_dir is not None else default_cache_dir())
