"""DM: distribution matching (Zhao & Bilen, WACV 2023).

Each iteration samples a fresh, untrained network and matches, per class, the mean embedding of an
augmented real batch with that of the synthetic images. Augmentation is siamese as in the reference
code: per class one transform (one DSA family, one parameter set, ``augment.siamese``) applies to the
class's whole real batch and to all its synthetic images. All classes then go through the network in
one batched pass.

With ``syn_weights="coreset"`` the synthetic side of the match is the weighted mean of the class's
embeddings, sum_j w_j f(s_j) / sum_j w_j, with the coreset weights of the initial set (``sensitivity``,
``krr-sensitivity``): the estimate of the class's mean that the weighted sample was drawn to give.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from distill_core.data import augment
from distill_core.data.datasets import Data
from distill_core.methods import real
from distill_core.methods.base import METHODS, Context, Declares, Synthetic
from distill_core.methods.real import RealBatches
from distill_core.nets.networks import in_passes
from distill_core.nets.precision import compiled
from distill_core.options import Options, option
from distill_core.synthetic import SYN_WEIGHTS, SYN_WEIGHTS_HELP, class_mean_weights, required_weights


@dataclass(frozen=True)
class DMConfig(Options):
    lr_img: float = option(1.0, "learning rate of the images (SGD)", above=0)
    momentum: float = option(0.5, "momentum of the images' SGD", min=0, max=0.999)
    batch_real: int = option(64, "real images per class per step: on digits as good as 256, a quarter of the cost", min=1)
    refresh_every: int = option(20, "importance sampling: iterations between weight refreshes (0: never)", min=0)
    score_pool: int = option(real.SCORE_POOL, real.POOL_HELP, min=0)
    weighting: Literal[real.WEIGHTINGS] = option("plain", real.WEIGHTING_HELP, what="weighting")
    syn_weights: Literal[SYN_WEIGHTS] = option("uniform", "the synthetic mean of a class: " + SYN_WEIGHTS_HELP, what="syn_weights")


@METHODS.register("dm")
class DM:
    Config = DMConfig
    declares = Declares(real_batches=True, extras=real.EXTRAS, loop="dm step")

    def __init__(self, ctx: Context, cfg: DMConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.images_syn = ctx.init.images.detach().clone().requires_grad_(True)
        self.labels_syn = ctx.init.labels.clone()
        self.opt = torch.optim.SGD([self.images_syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.real = RealBatches(ctx, cfg.refresh_every, self.synthetic, pool=cfg.score_pool, weighting=cfg.weighting)
        self.b = min(cfg.batch_real, self.real.sampler.max_batch())
        self.mean_weights = None  # (C, ipc) weights of the synthetic mean, each row summing to 1; None: the plain mean
        if cfg.syn_weights == "coreset":
            self.mean_weights = class_mean_weights(required_weights(ctx.init.weights, "DM"), ctx.data.num_classes).to(ctx.device)

    @staticmethod
    def default_iterations(data: Data, ipc: int) -> int:
        return 400 if data.name == "digits" else 500

    def step(self) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        net = compiled(ctx.fresh_net())
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        idx = self.real.sample(self.b)  # (C, b)
        w = self.real.weights(idx)  # (C, b) importance weights, or None: the plain mean
        c = idx.shape[0]
        real, syn = self.augment(ctx.data.x_train[idx.flatten()], self.images_syn, c)
        with torch.no_grad():
            emb_real = in_passes(net.embed, real).view(c, self.b, -1)
            mean_real = emb_real.mean(1) if w is None else (w.unsqueeze(-1) * emb_real).sum(1)
        emb_syn = net.embed(syn).view(c, ctx.ipc, -1)
        mean_syn = emb_syn.mean(1) if self.mean_weights is None else (self.mean_weights.unsqueeze(-1) * emb_syn).sum(1)
        loss = ((mean_real - mean_syn) ** 2).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def augment(self, real: torch.Tensor, syn: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Siamese DSA, one transform per class; real (C b, ...) and syn (C ipc, ...), class-major."""
        if not self.ctx.strategy:
            return real, syn
        pairs = [
            augment.siamese(self.ctx.strategy, self.ctx.generator, r, s)
            for r, s in zip(real.split(self.b), syn.split(self.ctx.ipc), strict=True)
        ]
        return torch.cat([r for r, _ in pairs]), torch.cat([s for _, s in pairs])

    def synthetic(self) -> Synthetic:
        return Synthetic(self.images_syn.detach(), self.labels_syn, weights=self.ctx.init.weights)

    def extras(self) -> dict[str, torch.Tensor]:
        return self.real.extras()
