"""Real batches per class: uniform, or importance-sampled by relative per-sample loss.

The seed paper's training phase: a real image is drawn with probability proportional to its loss
under the current model, normalised within its class, refreshed every few iterations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.data import Data


def random_subset(data: Data, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """``ipc`` random training indices per class, class-major, shape (C * ipc,)."""
    picks = []
    for idx in data.class_indices():
        if len(idx) < ipc:
            raise ValueError(f"a class has only {len(idx)} training images, fewer than ipc={ipc}")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:ipc].to(idx.device)])
    return torch.cat(picks)


class ClassSampler:
    """Draws ``b`` training indices for every class at once, as a (C, b) tensor."""

    def __init__(self, data: Data, generator: torch.Generator) -> None:
        self.data = data
        self.generator = generator
        self.class_idx = [idx.cpu() for idx in data.class_indices()]
        self.weights: torch.Tensor | None = None  # (N,) sampling probability within each class

    def max_batch(self) -> int:
        return min(len(i) for i in self.class_idx)

    def sample(self, b: int) -> torch.Tensor:
        b = min(b, self.max_batch())
        rows = []
        for idx in self.class_idx:
            if self.weights is None:
                pick = torch.randperm(len(idx), generator=self.generator)[:b]
            else:
                pick = torch.multinomial(self.weights[idx], b, replacement=False, generator=self.generator)
            rows.append(idx[pick])
        return torch.stack(rows).to(self.data.x_train.device)

    @torch.no_grad()
    def refresh(self, net: nn.Module, batch: int = 4096) -> torch.Tensor:
        """Set sampling weights from the per-sample loss of ``net``; returns them, (N,) on CPU."""
        x, y = self.data.x_train, self.data.y_train
        net.eval()
        losses = torch.cat([
            F.cross_entropy(net(x[s : s + batch]), y[s : s + batch], reduction="none")
            for s in range(0, x.shape[0], batch)
        ]).cpu()
        weights = torch.empty_like(losses)
        for idx in self.class_idx:
            # a floor keeps every image reachable once the model fits it
            rel = losses[idx] + 1e-3 * losses[idx].mean() + 1e-8
            weights[idx] = rel / rel.sum()
        self.weights = weights
        return weights
