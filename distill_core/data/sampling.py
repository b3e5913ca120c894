"""Real batches per class: uniform, or importance-sampled by relative per-sample loss.

The seed paper's training phase: a real image is drawn with probability proportional to its loss
under the current model, normalised within its class, refreshed every few iterations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.data.datasets import Data


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

    A refresh may score only a pool: a fresh uniform draw of P images per class (``draw_pool``). The
    draws then come from the pool, by loss, until the next refresh, so an image's chance over many
    refreshes stays proportional to its loss, at P / N_c of the scoring cost (on Fashion-MNIST,
    scoring all 60,000 images took most of a run's time).
    """

    def __init__(self, data: Data, generator: torch.Generator) -> None:
        self.data = data
        self.generator = generator
        self.class_idx = [idx.cpu() for idx in data.class_indices()]
        self.pools: list[torch.Tensor] | None = None  # per class: the images scored at the last refresh
        self.pool_p: list[torch.Tensor] = []  # per class: their sampling probabilities
        self.weights: torch.Tensor | None = None  # (N,) sampling probability within each class (0: not scored)
        self.losses: torch.Tensor | None = None  # (N,) per-image loss at the last refresh (NaN: not scored)
        self.drawn = (0.0, 0)  # since the last refresh: the drawn images' summed loss, and their number
        self.batch_loss: list[tuple[float, float]] = []  # per refresh period: (drawn batches' mean loss, uniform's)

    def max_batch(self) -> int:
        return min(len(i) for i in self.class_idx)

    def draw_pool(self, size: int) -> list[torch.Tensor]:
        """Per class, ``size`` distinct random training indices (every image where ``size`` is 0 or at
        least the class's size)."""
        return [
            idx if size <= 0 or size >= len(idx) else idx[torch.randperm(len(idx), generator=self.generator)[:size]]
            for idx in self.class_idx
        ]

    def sample(self, b: int) -> torch.Tensor:
        b = min(b, self.max_batch())
        rows = []
        for c, idx in enumerate(self.class_idx):
            if self.pools is None:
                rows.append(idx[torch.randperm(len(idx), generator=self.generator)[:b]])
            else:
                pick = torch.multinomial(self.pool_p[c], b, replacement=True, generator=self.generator)
                rows.append(self.pools[c][pick])
        drawn = torch.stack(rows)
        if self.losses is not None:
            total, n = self.drawn
            self.drawn = (total + float(self.losses[drawn].sum()), n + drawn.numel())
        return drawn.to(self.data.x_train.device)

    def uniform_loss(self) -> float:
        """The mean loss a uniform batch has in expectation: the mean of the class means (over the
        scored pools, an unbiased estimate of it)."""
        assert self.pools is not None and self.losses is not None
        return float(torch.stack([self.losses[pool].mean() for pool in self.pools]).mean())

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

    def set_losses(self, losses: torch.Tensor, pools: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Sampling weights from per-image losses: of every image (N,), or of the images of ``pools``
        (per class, indices), concatenated in that order. Returns the weights, (N,) on CPU, 0 for an
        image not scored."""
        self.close_period()
        pools = self.class_idx if pools is None else [p.cpu() for p in pools]
        losses = losses.detach().float().cpu()
        if pools is self.class_idx:
            losses = torch.cat([losses[idx] for idx in pools])
        n = self.data.x_train.shape[0]
        self.weights, self.losses = torch.zeros(n), torch.full((n,), float("nan"))
        self.pool_p = []
        for idx, loss in zip(pools, losses.split([len(p) for p in pools]), strict=True):
            # a floor keeps every image reachable once the model fits it
            rel = loss + 1e-3 * loss.mean() + 1e-8
            p = rel / rel.sum()
            self.weights[idx], self.losses[idx] = p, loss
            self.pool_p.append(p)
        self.pools = pools
        return self.weights

    @torch.no_grad()
    def refresh(self, net: nn.Module, pool: int = 0, batch: int = 4096) -> torch.Tensor:
        """Set sampling weights from the per-sample cross-entropy of ``net`` on a pool of ``pool``
        images per class (0: every image); returns the weights, (N,) on CPU."""
        pools = self.draw_pool(pool)
        scored = torch.cat(pools).to(self.data.x_train.device)
        x, y = self.data.x_train[scored], self.data.y_train[scored]
        net.eval()
        losses = torch.cat([
            F.cross_entropy(net(x[s : s + batch]).float(), y[s : s + batch], reduction="none")
            for s in range(0, x.shape[0], batch)
        ])
        return self.set_losses(losses, pools)

    def batch_weights(self, drawn: torch.Tensor) -> torch.Tensor:
        """(C, b) weights that make a draw of ``sample`` an estimate of each class's plain mean:
        image i drawn with probability p_i among the n images it was drawn from (the pool, or the
        whole class when every image was scored) weighs 1/(n p_i), self-normalised within its class's
        row (so n cancels, and the weights of a row sum to one). Σ_i w_i f(x_i) then estimates the
        mean of f over the class (over the pool, itself a uniform random part of the class), where
        the plain mean of the draws leans towards high-loss images. Before any refresh the draws are
        uniform and every image weighs 1/b. Call it for the draw just made: a refresh changes p."""
        if self.weights is None:
            return torch.full(drawn.shape, 1.0 / drawn.shape[1], device=drawn.device)
        inverse = 1.0 / self.weights[drawn.cpu()]
        return (inverse / inverse.sum(1, keepdim=True)).to(drawn.device)

    def batch_loss_history(self) -> torch.Tensor | None:
        """(periods, 2): per refresh period, the drawn batches' mean loss and a uniform batch's."""
        rows = self.batch_loss + [p for p in [self.period_loss()] if p is not None]
        return torch.tensor(rows) if rows else None
