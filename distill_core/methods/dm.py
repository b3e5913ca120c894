"""DM: distribution matching (Zhao & Bilen, WACV 2023).

Each iteration samples a fresh, untrained network and matches, per class, the mean embedding of an
augmented real batch with that of the synthetic images (siamese augmentation). All classes go
through the network in one batched pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from distill_core import augment
from distill_core.config import EvalConfig
from distill_core.data import Data
from distill_core.evaluate import train_network
from distill_core.methods.base import METHODS, Context, Synthetic
from distill_core.sampling import ClassSampler


@dataclass(frozen=True)
class DMConfig:
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 64  # real images per class per step: on digits as good as 256 (see the issue note), a quarter of the cost
    refresh_every: int = 20  # importance sampling: iterations between weight refreshes

    def __post_init__(self) -> None:
        if not self.lr_img > 0:
            raise ValueError(f"lr_img must be positive, got {self.lr_img}")
        if self.batch_real < 1:
            raise ValueError(f"batch_real must be positive, got {self.batch_real}")


class RealBatches:
    """Per-class real batches for methods that draw them, uniform or importance-sampled.

    Importance sampling weighs a real image by its loss under "the current model" (the seed paper's
    training phase). Methods that train a network (DC/DSA) pass it; DM and KRR only ever see fresh,
    untrained networks, whose losses are noise, so with ``synthetic`` given the scorer is a fresh
    network trained on the current synthetic set for ``score_steps`` epochs of the evaluation protocol
    (one step each while the set fits a batch of 256): its high-loss real images are the ones the
    synthetic set does not yet explain. Uniform sampling draws exactly as before.
    """

    def __init__(
        self,
        ctx: Context,
        refresh_every: int,
        synthetic: Callable[[], Synthetic] | None = None,
        score_steps: int = 100,
    ) -> None:
        self.ctx = ctx
        self.sampler = ClassSampler(ctx.data, ctx.generator)
        self.refresh_every = refresh_every
        self.synthetic = synthetic
        self.score_steps = score_steps
        self.calls = 0

    @property
    def importance(self) -> bool:
        return self.ctx.sampling == "importance"

    def due(self) -> bool:
        return self.importance and self.refresh_every > 0 and self.calls % self.refresh_every == 0

    def sample(self, b: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(C, b) indices; with importance sampling, ``model`` (or the scorer) rescores the images when due."""
        if self.due():
            self.refresh(model)
        self.calls += 1
        return self.sampler.sample(b)

    def scorer(self) -> torch.nn.Module:
        """A fresh network trained briefly on the current synthetic set (a fresh one where none is given)."""
        net = self.ctx.fresh_net()
        if self.synthetic is None or self.score_steps < 1:
            return net
        syn = self.synthetic()
        cfg = EvalConfig(nets=1, epochs=self.score_steps)  # the evaluation protocol, shortened
        return train_network(net, syn.images.detach(), syn.labels.detach(), cfg, self.ctx.strategy, self.ctx.generator, syn.lr)

    def refresh(self, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Rescore every real image with ``model`` (None: the scorer); returns the weights (N,)."""
        net = model if model is not None else self.scorer()
        was_training = net.training
        weights = self.sampler.refresh(net)
        net.train(was_training)
        return weights

    def extras(self) -> dict[str, torch.Tensor]:
        w = self.sampler.weights
        return {} if w is None else {"sampling_weights": w}


@METHODS.register("dm")
class DM:
    Config = DMConfig
    draws_real_batches = True

    def __init__(self, ctx: Context, cfg: DMConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.images_syn = ctx.init.images.detach().clone().requires_grad_(True)
        self.labels_syn = ctx.init.labels.clone()
        self.opt = torch.optim.SGD([self.images_syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.real = RealBatches(ctx, cfg.refresh_every, self.synthetic)
        c, ipc = ctx.data.num_classes, ctx.ipc
        self.b = min(cfg.batch_real, self.real.sampler.max_batch())
        # synthetic image j of class c takes the augmentation drawn for real image j of class c
        self.param_index = (torch.arange(c).view(c, 1) * self.b + torch.arange(ipc).view(1, ipc) % self.b).flatten()

    @staticmethod
    def default_iterations(data: Data, ipc: int) -> int:
        return 400 if data.name == "digits" else 500

    def step(self) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        net = ctx.fresh_net()
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        idx = self.real.sample(self.b)  # (C, b)
        c = idx.shape[0]
        params = augment.draw(ctx.strategy, c * self.b, ctx.generator)
        with torch.no_grad():
            real = augment.apply(ctx.data.x_train[idx.flatten()], params)
            mean_real = net.embed(real).view(c, self.b, -1).mean(1)
        syn = augment.apply(self.images_syn, params, self.param_index)
        mean_syn = net.embed(syn).view(c, ctx.ipc, -1).mean(1)
        loss = ((mean_real - mean_syn) ** 2).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def synthetic(self) -> Synthetic:
        return Synthetic(self.images_syn.detach(), self.labels_syn)

    def extras(self) -> dict[str, torch.Tensor]:
        return self.real.extras()
