"""What every distillation method shares: its inputs (``Context``), its output (``Synthetic``), the
protocol the run loop drives, and the factory of fresh networks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import nn

from distill_core.data import Data
from distill_core.initializers import InitResult
from distill_core.nets import NetConfig, create_net
from distill_core.registry import Registry


@dataclass(frozen=True)
class Synthetic:
    images: torch.Tensor  # (C * ipc, ch, H, W)
    labels: torch.Tensor  # (C * ipc,) int64, or (C * ipc, C) float logits (soft labels)
    lr: float | None = None  # a learned evaluation learning rate, where the method learns one


def no_progress(phase: str, fraction: float) -> None:
    pass


@dataclass
class Context:
    data: Data  # on the run's device
    ipc: int
    net: NetConfig
    strategy: str
    generator: torch.Generator  # CPU; all of a run's randomness comes from it
    init: InitResult
    sampling: str = "uniform"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "distill_explorer")
    report: Callable[[str, float], None] = no_progress  # long preparations (experts) report progress
    iterations: int = 0  # the run's planned number of steps, for schedules

    @property
    def device(self) -> torch.device:
        return self.data.x_train.device

    def fresh_net(self) -> nn.Module:
        d = self.data
        return create_net(self.net, d.channels, d.im_size, d.num_classes, self.generator, self.device)


class Method(Protocol):
    Config: ClassVar[type]
    draws_real_batches: ClassVar[bool]

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
