"""The evaluation protocol: train fresh networks on a (synthetic) set, report final test accuracy.

SGD with momentum, weight decay, lr x0.1 at half the epochs, DSA on each batch; hard labels (int64)
or soft labels (float logits, targets = softmax); the learned lr where the method has one. The
random-real baseline uses the same protocol at the same IPC, a fresh random subset per network.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill_core.augment import augment
from distill_core.data import Data
from distill_core.nets import NetConfig, create_net, in_passes
from distill_core.options import Options, option
from distill_core.precision import compiled
from distill_core.sampling import random_subset


@dataclass(frozen=True)
class EvalConfig(Options):
    """The evaluation protocol: fresh networks trained on the synthetic set, final test accuracy."""

    nets: int = option(5, "fresh networks trained on the set", min=1, max=20)
    epochs: int = option(300, "epochs each trains (lr x0.1 at half)", min=1, max=3000)
    lr: float = option(0.01, "SGD learning rate (a learned one replaces it)", above=0)
    momentum: float = option(0.9, "SGD momentum", min=0, max=0.999)
    weight_decay: float = option(5e-4, "SGD weight decay", min=0)
    batch: int = option(256, "minibatch", min=1)
    augment: bool = option(True, "DSA on every minibatch")
    arch: NetConfig | None = option(None, "the network evaluated (empty: the one the run distils with)")


class Stopped(Exception):
    """Raised between epochs when the caller's ``stop`` says so (a run's Stop button)."""


def never() -> bool:
    return False


@dataclass(frozen=True)
class Accuracy:
    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> "Accuracy":
        return cls(float(np.mean(values)), float(np.std(values)), len(values), tuple(values))

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}% (n={self.n})"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy with hard labels (int64, (n,)) or soft labels (float logits, (n, C))."""
    if labels.is_floating_point():
        return F.cross_entropy(logits, labels.softmax(dim=1))
    return F.cross_entropy(logits, labels)


def train_epoch(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    strategy: str,
    generator: torch.Generator,
) -> None:
    """One shuffled pass of SGD over (images, labels), each minibatch augmented with ``strategy``
    ("" for none); the loss is ``classification_loss``. No host sync."""
    n = images.shape[0]
    perm = torch.randperm(n, generator=generator).to(images.device)
    for start in range(0, n, batch):
        idx = perm[start : start + batch]
        x = augment(images[idx], strategy, generator) if strategy else images[idx]
        loss = classification_loss(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_network(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: EvalConfig,
    strategy: str,
    generator: torch.Generator,
    lr: float | None = None,
    stop: Callable[[], bool] = never,
) -> nn.Module:
    """Train ``net`` on ``images`` (n, C, H, W) for ``cfg.epochs`` epochs; no host sync per batch.
    ``stop`` is asked between epochs; when it says so, ``Stopped`` is raised."""
    base_lr = cfg.lr if lr is None else lr
    opt = torch.optim.SGD(net.parameters(), lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch, images.shape[0])
    net.train()
    for epoch in range(cfg.epochs):
        if stop():
            raise Stopped
        if epoch == cfg.epochs // 2:
            for group in opt.param_groups:
                group["lr"] = base_lr * 0.1
        train_epoch(net, opt, images, labels, batch, strategy if cfg.augment else "", generator)
    return net


@torch.no_grad()
def test_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((in_passes(net, x).argmax(1) == y).sum()) / x.shape[0]


def evaluate_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: Data,
    cfg: EvalConfig,
    net_cfg: NetConfig,
    strategy: str,
    generator: torch.Generator,
    lr: float | None = None,
    nets: int | None = None,
    stop: Callable[[], bool] = never,
) -> Accuracy:
    """Mean and std of the final test accuracy of ``nets`` fresh networks trained on (images, labels)."""
    arch = cfg.arch or net_cfg
    values = []
    images, labels = images.detach(), labels.detach()
    for _ in range(nets or cfg.nets):
        net = compiled(create_net(arch, data.channels, data.im_size, data.num_classes, generator, images.device))
        train_network(net, images, labels, cfg, strategy, generator, lr, stop)
        values.append(test_accuracy(net, data.x_test, data.y_test))
    return Accuracy.of(values)


def baseline_random(
    data: Data,
    ipc: int,
    cfg: EvalConfig,
    net_cfg: NetConfig,
    strategy: str,
    generator: torch.Generator,
    nets: int | None = None,
    stop: Callable[[], bool] = never,
) -> Accuracy:
    """The random-real-subset baseline: the same protocol, a new random subset for each network."""
    values = []
    for _ in range(nets or cfg.nets):
        idx = random_subset(data, ipc, generator)
        values.append(evaluate_set(data.x_train[idx], data.y_train[idx], data, cfg, net_cfg, strategy, generator, nets=1, stop=stop).mean)
    return Accuracy.of(values)
