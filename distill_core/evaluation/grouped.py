"""K networks trained as one group (``stacked``): each with its own initialisation, data order and
augmentation draws, taken from its own generator in the order one network trained alone takes them
(``evaluate.train_epoch``), so that the group's networks are the independent networks of the
one-at-a-time path, to float rounding.

What makes a group fast on a GPU: one forward and backward for all networks; the data order and
augmentation of a whole epoch drawn on the CPU while the GPU runs the epoch before, and copied over
once (pinned memory, no host sync); SGD as whole-list (foreach) updates; and on CUDA the epoch
captured once as a CUDA graph and replayed, so an epoch costs a few launches whatever its steps. A
group's size follows the free device memory, halved on an out-of-memory error.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.data.augment import PACKED, apply_packed, draw, pack
from distill_core.nets import stacked
from distill_core.nets.networks import in_passes, rows_per_pass

EpochHook = Callable[[int], None]


def nothing(epoch: int) -> None:
    pass


@dataclass
class Group:
    """K networks of one architecture being trained: stacked parameters (leaves) and SGD's state."""

    template: nn.Module
    params: stacked.Stacked
    lr: torch.Tensor  # 0-dim, on the device: changed in place, so a captured graph reads the new rate
    momentum: float = 0.0
    weight_decay: float = 0.0
    buffers: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, nets: list[nn.Module], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> "Group":
        params = {k: v.requires_grad_(True) for k, v in stacked.stack(nets).items()}
        device = next(iter(params.values())).device
        buffers = [torch.zeros_like(p) for p in params.values()] if momentum else []
        return cls(nets[0], params, torch.tensor(float(lr), device=device), momentum, weight_decay, buffers)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def state(self) -> list[torch.Tensor]:
        return [*self.params.values(), *self.buffers]

    def saved(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self.state()]

    @torch.no_grad()
    def restore(self, saved: list[torch.Tensor]) -> None:
        for t, v in zip(self.state(), saved, strict=True):
            t.copy_(v)

    def step(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> None:
        """One SGD step of every network k on (x[k], y[k]), each image's loss weighted by w[k] (K, B)
        where given; the update torch.optim.SGD makes (momentum buffer = gradient at the first step,
        weight decay added to the gradient)."""
        logits = stacked.forward(self.template, self.params, x)
        leaves = list(self.params.values())
        grads = list(torch.autograd.grad(group_loss(logits, y, w), leaves))
        with torch.no_grad():
            if self.weight_decay:
                torch._foreach_add_(grads, leaves, alpha=self.weight_decay)
            if self.momentum:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
                grads = self.buffers
            torch._foreach_sub_(leaves, torch._foreach_mul(grads, self.lr))


def group_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The sum over networks of each one's mean cross entropy (hard labels (K, B), or soft logits
    (K, B, C) whose softmax is the target), each image's weighted by ``weights`` (K, B) where given
    (``protocol.classification_loss``): network k's gradient is that of its own loss."""
    k, b, c = logits.shape
    if labels.is_floating_point():
        per_image = -(labels.float().softmax(-1) * logits.float().log_softmax(-1)).sum(-1)
    else:
        per_image = F.cross_entropy(logits.reshape(k * b, c).float(), labels.reshape(k * b), reduction="none").view(k, b)
    if weights is not None:
        per_image = per_image * weights
    return per_image.mean(1).sum()


def epoch_plan(generators: list[torch.Generator], n: int, batch: int, strategy: str, side: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each network's data order (K, n) and packed augmentation (K, n, PACKED) for one epoch, drawn
    from its generator as ``train_epoch`` draws them: the permutation, then a draw per minibatch."""
    perms, packs = [], []
    for g in generators:
        perms.append(torch.randperm(n, generator=g))
        if strategy:
            packs.append(torch.cat([pack(draw(strategy, min(batch, n - s), g), min(batch, n - s), side) for s in range(0, n, batch)]))
    packed = torch.stack(packs) if strategy else torch.empty(len(generators), n, PACKED)
    return torch.stack(perms), packed


class Trainer:
    """Epochs of a group on fixed data: ``images`` (K or 1, n, C, H, W), ``labels`` (K or 1, n[, C])
    and per-image loss ``weights`` (K or 1, n) or None (1: the same set for every network, expanded,
    not copied)."""

    def __init__(self, group: Group, images: torch.Tensor, labels: torch.Tensor, batch: int, strategy: str,
                 generators: list[torch.Generator], weights: torch.Tensor | None = None) -> None:
        k = group.size
        self.group, self.batch, self.strategy, self.generators = group, batch, strategy, generators
        self.images = images.expand(k, *images.shape[1:])
        self.labels = labels.expand(k, *labels.shape[1:])
        self.weights = None if weights is None else weights.expand(k, *weights.shape[1:])
        self.n = images.shape[1]
        device = images.device
        self.rows = torch.arange(k, device=device).unsqueeze(1)
        self.perm = torch.empty(k, self.n, dtype=torch.long, device=device)
        self.packed = torch.empty(k, self.n, PACKED, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.use_graph = device.type == "cuda"

    def plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        perm, packed = epoch_plan(self.generators, self.n, self.batch, self.strategy, tuple(self.images.shape[-2:]))
        if self.use_graph:
            perm, packed = perm.pin_memory(), packed.pin_memory()
        return perm, packed

    def epoch_body(self) -> None:
        """One epoch from the plan in ``self.perm`` / ``self.packed``: fixed shapes, no host sync."""
        for s in range(0, self.n, self.batch):
            idx = self.perm[:, s : s + self.batch]
            x = self.images[self.rows, idx]
            if self.strategy:
                x = apply_packed(x.flatten(0, 1), self.packed[:, s : s + self.batch].flatten(0, 1)).view_as(x)
            self.group.step(x, self.labels[self.rows, idx], None if self.weights is None else self.weights[self.rows, idx])

    def capture_or_run_eager(self) -> None:
        """Record the epoch as a CUDA graph: two warm-up epochs on a side stream, the state put back
        (warm-up trains nothing), then the capture. Where this torch or device cannot capture, eager
        epochs from here on, from the state put back (a failed capture trains nothing either)."""
        saved = self.group.saved()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.epoch_body()
            torch.cuda.current_stream().wait_stream(side)
            self.group.restore(saved)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.epoch_body()
        except RuntimeError as err:  # noqa: PERF203 - once per trainer
            warnings.warn(f"CUDA graph capture failed, training eagerly: {err}", stacklevel=2)
            self.graph, self.use_graph = None, False
            self.group.restore(saved)

    def train(self, epochs: int, lr_at: Callable[[int], float | None] = lambda e: None,
              before_epoch: EpochHook = nothing, after_epoch: EpochHook = nothing) -> None:
        """``epochs`` epochs; ``lr_at(e)`` gives a new rate to set before epoch e (or None);
        ``before_epoch`` may raise to stop; ``after_epoch`` sees the parameters after each epoch."""
        nxt = self.plan()
        for epoch in range(epochs):
            before_epoch(epoch)
            rate = lr_at(epoch)
            if rate is not None:
                self.group.lr.fill_(rate)
            self.perm.copy_(nxt[0], non_blocking=True)
            self.packed.copy_(nxt[1], non_blocking=True)
            if self.use_graph and self.graph is None:
                self.capture_or_run_eager()
            if self.graph is not None:
                self.graph.replay()
            else:
                self.epoch_body()
            if epoch + 1 < epochs:
                nxt = self.plan()  # on the CPU while the device runs this epoch
            after_epoch(epoch)


@torch.no_grad()
def logits_of(group: Group, x: torch.Tensor) -> torch.Tensor:
    """Every network's logits on the same images ``x`` (N, C, H, W): (K, N, classes), in passes of
    ``rows_per_pass`` images over all K networks together."""
    k = group.size

    def each(xb: torch.Tensor) -> torch.Tensor:  # (B, K, classes): in_passes joins along the first axis
        return stacked.forward(group.template, group.params, xb.unsqueeze(0).expand(k, *xb.shape)).transpose(0, 1)

    return in_passes(each, x, max(1, rows_per_pass(x.device, tuple(x.shape[2:])) // k)).transpose(0, 1)


@torch.no_grad()
def accuracies(group: Group, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Each network's test accuracy on (x, y), read back once."""
    correct = (logits_of(group, x).argmax(-1) == y.unsqueeze(0)).sum(1)
    return (correct.double() / x.shape[0]).tolist()


def memory_per_network(images_per_step: int, side: tuple[int, int], width: int, depth: int, bytes_per: int = 4) -> tuple[int, int]:
    """What one network of a group holds during a step, about: bytes of the activations a ConvNet
    keeps for its backward (convolution, norm and pooling outputs, each layer at its resolution, and
    their gradients), and the elements of its largest tensor (a convolution's output), which a group's K times must keep
    within the 32-bit indexing of the convolution kernels (100 ConvNet-128s on 256 28x28 images failed)."""
    h, w = side
    total, largest = 0, 0
    for _ in range(depth):
        total += 4 * width * (h + 2) * (w + 2)
        largest = max(largest, width * (h + 2) * (w + 2))
        h, w = max(h // 2, 1), max(w // 2, 1)
    return 2 * images_per_step * total * bytes_per, images_per_step * largest


def group_size(wanted: int, device: torch.device, per_network: tuple[int, int]) -> int:
    """How many networks to train at once on ``device``: all on a CPU; on CUDA as many as half the
    free memory holds (the other half for what else runs on the GPU) and 32-bit indexing allows."""
    if device.type != "cuda":
        return wanted
    nbytes, elements = per_network
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(wanted, int(0.5 * free // max(nbytes, 1)), (2**31 - 1) // max(elements, 1)))


def in_groups(count: int, size: int, train: Callable[[range], None], device: torch.device) -> None:
    """``train`` over ranges of at most ``size`` of ``count`` networks; on CUDA out-of-memory the
    range is retried in halves (its networks start afresh: they depend only on their seeds)."""
    start = 0
    while start < count:
        part = range(start, min(count, start + size))
        try:
            train(part)
        except torch.OutOfMemoryError:
            if size == 1 or device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            size = max(1, size // 2)
            continue
        start = part.stop
