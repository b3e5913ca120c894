"""What every distillation method shares: its inputs (``Context``), its output (``Synthetic``), what
it declares about itself (``Declares``), the protocol the run loop drives, and the registry.

A new method is one module under ``methods/`` with a ``@METHODS.register("name")`` class that has a
``Config`` (an ``Options`` dataclass), a ``declares`` and the protocol below, plus one import line in
``methods/__init__.py``; the contract tests (``tests/test_contracts.py``) pick it up by themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import nn

from distill_core.data.datasets import Data
from distill_core.nets.networks import NetConfig, create_net
from distill_core.options import Options
from distill_core.paths import cache_dir
from distill_core.registry import Registry
from distill_core.synthetic import InitResult, Synthetic

__all__ = ["METHODS", "Context", "Declares", "Method", "Options", "Synthetic", "no_progress"]


def no_progress(phase: str, fraction: float) -> None:
    pass


@dataclass(frozen=True)
class Declares:
    """What a method needs and what it publishes; the app reads this instead of guessing.

    ``metrics``: the keys of ``step()``'s dict; ``extras``: the keys of ``extras()``, where a key
    ending in "/" stands for a family (``importance/<parameter name>``)."""

    experts: bool = False  # trains or loads expert trajectories first (config has ``expert_spec()``)
    real_batches: bool = False  # draws real batches each step, so ``RunConfig.sampling`` applies
    soft_labels: bool = False  # hands out float logits as labels
    learned_lr: bool = False  # hands out a learned evaluation learning rate
    metrics: tuple[str, ...] = ("loss",)
    extras: tuple[str, ...] = ()
    # the hot loop its step is, as ``bench --speed`` names it (``precision.AUTO``'s rows); None: not measured
    loop: str | None = None

    def publishes_extra(self, key: str) -> bool:
        return any(key == e or (e.endswith("/") and key.startswith(e)) for e in self.extras)


@dataclass
class Context:
    data: Data  # on the run's device
    ipc: int
    net: NetConfig
    strategy: str
    generator: torch.Generator  # CPU; all of a run's randomness comes from it
    init: InitResult
    sampling: str = "uniform"
    cache_dir: Path = field(default_factory=cache_dir)
    report: Callable[[str, float], None] = no_progress  # long preparations (experts) report progress
    iterations: int = 0  # the run's planned number of steps, for schedules

    @property
    def device(self) -> torch.device:
        return self.data.x_train.device

    def fresh_net(self) -> nn.Module:
        d = self.data
        return create_net(self.net, d.channels, d.im_size, d.num_classes, self.generator, self.device)

    def options(self, cfg: Options) -> Any:
        """``cfg`` with its automatic fields filled for this run (a no-op on a resolved config)."""
        return cfg.resolved(self.data, self.ipc, self.iterations)


class Method(Protocol):
    Config: ClassVar[type[Options]]
    declares: ClassVar[Declares]

    def __init__(self, ctx: Context, cfg: Any) -> None: ...

    @staticmethod
    def default_iterations(data: Data, ipc: int) -> int: ...

    def step(self) -> dict[str, torch.Tensor]:
        """One distillation iteration; metrics as 0-d tensors (no host sync here)."""
        ...

    def synthetic(self) -> Synthetic: ...

    def extras(self) -> dict[str, torch.Tensor]:
        """What the method learns besides the images (importance weights, sampling weights...), for the app."""
        ...


METHODS: Registry[type] = Registry("method")
