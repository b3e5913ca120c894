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
    """Draws ``b`` training indices for every class at once, as a (C, b) tensor.

    Uniform: ``b`` distinct images per class (a random permutation, as the reference code draws).
    Importance: ``b`` independent draws with replacement, image i of class c with probability
    p_i = l_i / sum_{j in c} l_j, l the per-image loss of the last refresh. Without replacement the
    emphasis dilutes as ``b`` nears the class size (every image gets drawn anyway); with replacement a
    batch's expected loss is sum_i p_i l_i, the mean of l under p.
    """

    def __init__(self, data: Data, generator: torch.Generator) -> None:
        self.data = data
        self.generator = generator
        self.class_idx = [idx.cpu() for idx in data.class_indices()]
        self.weights: torch.Tensor | None = None  # (N,) sampling probability within each class
        self.losses: torch.Tensor | None = None  # (N,) per-image loss at the last refresh
        self.drawn = (0.0, 0)  # since the last refresh: the drawn images' summed loss, and their number
        self.batch_loss: list[tuple[float, float]] = []  # per refresh period: (drawn batches' mean loss, uniform's)

    def max_batch(self) -> int:
        return min(len(i) for i in self.class_idx)

    def sample(self, b: int) -> torch.Tensor:
        b = min(b, self.max_batch())
        rows = []
        for idx in self.class_idx:
            if self.weights is None:
                pick = torch.randperm(len(idx), generator=self.generator)[:b]
            else:
                pick = torch.multinomial(self.weights[idx], b, replacement=True, generator=self.generator)
            rows.append(idx[pick])
        drawn = torch.stack(rows)
        if self.losses is not None:
            total, n = self.drawn
            self.drawn = (total + float(self.losses[drawn].sum()), n + drawn.numel())
        return drawn.to(self.data.x_train.device)

    def uniform_loss(self) -> float:
        """The mean loss a uniform batch has in expectation: the mean of the class means."""
        assert self.losses is not None
        return float(torch.stack([self.losses[idx].mean() for idx in self.class_idx]).mean())

    def period_loss(self) -> tuple[float, float] | None:
        """The mean loss of what was drawn since the last refresh, beside a uniform batch's."""
        total, n = self.drawn
        if self.losses is None or n == 0:
            return None
        return total / n, self.uniform_loss()

    def close_period(self) -> None:
        period = self.period_loss()
        if period is not None:
            self.batch_loss.append(period)
        self.drawn = (0.0, 0)

    def set_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Sampling weights from per-image losses (N,); returns the weights, (N,) on CPU."""
        self.close_period()
        losses = losses.detach().float().cpu()
        weights = torch.empty_like(losses)
        for idx in self.class_idx:
            # a floor keeps every image reachable once the model fits it
            rel = losses[idx] + 1e-3 * losses[idx].mean() + 1e-8
            weights[idx] = rel / rel.sum()
        self.losses, self.weights = losses, weights
        return weights

    @torch.no_grad()
    def refresh(self, net: nn.Module, batch: int = 4096) -> torch.Tensor:
        """Set sampling weights from the per-sample cross-entropy of ``net``; returns them, (N,) on CPU."""
        x, y = self.data.x_train, self.data.y_train
        net.eval()
        losses = torch.cat([
            F.cross_entropy(net(x[s : s + batch]).float(), y[s : s + batch], reduction="none")
            for s in range(0, x.shape[0], batch)
        ])
        return self.set_losses(losses)

    def batch_loss_history(self) -> torch.Tensor | None:
        """(periods, 2): per refresh period, the drawn batches' mean loss and a uniform batch's."""
        rows = self.batch_loss + [p for p in [self.period_loss()] if p is not None]
        return torch.tensor(rows) if rows else None
