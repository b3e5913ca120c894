"""KRR: distillation through kernel ridge regression (KIP, Nguyen et al., ICLR 2021), with the
random-feature kernel of RFAD (Loo et al., NeurIPS 2022) computed in torch.

The synthetic set is the support set of a kernel ridge regression whose predictions on real batches
are fitted:

    loss = || y_T - K_TS (K_SS + lambda I)^-1 y_S ||^2 (mean over the real batch),

with K(x, x') = phi(x) . phi(x') and phi the concatenated embeddings of ``nets`` ConvNets freshly drawn
at every step (the same architecture as the run's), scaled by 1 / sqrt(nets D): a Monte Carlo estimate
of the network's NNGP kernel, as RFAD uses instead of KIP's JAX neural tangent kernel. lambda is
``reg`` times the mean of diag(K_SS). Targets are centred one-hot vectors. Images (and, with
``learn_labels``, the targets y_S) are learned with Adam; the synthetic set is then evaluated with the
standard protocol (networks trained on it). With ``learn_labels`` the labels handed to evaluation are
the learned targets times ``label_scale``, used as logits.

With ``syn_weights="coreset"`` the regression on the support set is weighted by the initial set's
coreset weights w (normalised to mean 1 within each class): minimising
sum_j w_j (y_j - f(s_j))^2 + lambda ||f||^2 gives K_TS (K_SS + lambda W^-1)^-1 y_S, so an image that
stands for more real images is fitted more tightly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from distill_core.data import augment
from distill_core.data.datasets import Data
from distill_core.methods import real
from distill_core.methods.base import METHODS, Context, Declares, Synthetic
from distill_core.methods.real import RealBatches
from distill_core.nets.networks import in_passes
from distill_core.options import Options, option
from distill_core.synthetic import SYN_WEIGHTS, SYN_WEIGHTS_HELP, loss_weights, required_weights


@dataclass(frozen=True)
class KRRConfig(Options):
    lr_img: float = option(0.01, "learning rate of the images (Adam)", above=0)
    lr_labels: float = option(0.01, "learning rate of the learned targets (Adam)", above=0)
    learn_labels: bool = option(False, "learn the regression targets of the synthetic images too")
    batch_real: int = option(50, "real images per class per step", min=1)
    nets: int = option(4, "random networks whose features make one step's kernel", min=1)
    reg: float = option(1e-3, "ridge, relative to the mean of diag(K_SS)", above=0)
    augment: bool = option(False, "DSA on the real batch and the synthetic set (independent draws)")
    label_scale: float = option(10.0, "learned targets -> evaluation logits", above=0)
    refresh_every: int = option(20, "importance sampling: steps between rescoring by the kernel fit's residual", min=1)
    score_pool: int = option(real.SCORE_POOL, real.POOL_HELP, min=0)
    weighting: Literal[real.WEIGHTINGS] = option("plain", real.WEIGHTING_HELP, what="weighting")
    syn_weights: Literal[SYN_WEIGHTS] = option("uniform", "the ridge regression on the synthetic set: " + SYN_WEIGHTS_HELP, what="syn_weights")


def targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Centred one-hot regression targets (n, C)."""
    return F.one_hot(labels, num_classes).float() - 1.0 / num_classes


def krr_predict(
    phi_s: torch.Tensor, phi_t: torch.Tensor, y_s: torch.Tensor, reg: float, weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """K_TS (K_SS + lambda I)^-1 y_S with K = phi phi^T and lambda = reg * mean(diag K_SS); with
    ``weights`` w (n_S,), the weighted ridge regression's K_TS (K_SS + lambda W^-1)^-1 y_S.

    phi_s: (n_S, D), phi_t: (n_T, D), y_s: (n_S, C) -> (n_T, C)."""
    k_ss = phi_s @ phi_s.T
    k_ts = phi_t @ phi_s.T
    lam = reg * k_ss.diagonal().mean().detach()
    ridge = torch.ones(k_ss.shape[0], device=k_ss.device, dtype=k_ss.dtype) if weights is None else 1.0 / weights.to(k_ss.dtype)
    return k_ts @ torch.linalg.solve(k_ss + torch.diag(lam * ridge), y_s)


@METHODS.register("krr")
class KRR:
    Config = KRRConfig
    declares = Declares(real_batches=True, soft_labels=True, metrics=("loss", "krr_accuracy"), extras=real.EXTRAS)

    def __init__(self, ctx: Context, cfg: KRRConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        c = ctx.data.num_classes
        self.images_syn = ctx.init.images.detach().clone().requires_grad_(True)
        self.labels_syn = ctx.init.labels.clone()
        self.targets_syn = targets(self.labels_syn, c).requires_grad_(cfg.learn_labels)
        groups = [{"params": [self.images_syn], "lr": cfg.lr_img}]
        if cfg.learn_labels:
            groups.append({"params": [self.targets_syn], "lr": cfg.lr_labels})
        self.opt = torch.optim.Adam(groups)
        self.real = RealBatches(ctx, cfg.refresh_every, score=self.residuals, pool=cfg.score_pool, weighting=cfg.weighting)
        self.b = min(cfg.batch_real, self.real.sampler.max_batch())
        self.labels_real = torch.arange(c, device=ctx.device).repeat_interleave(self.b)
        self.targets_real = targets(self.labels_real, c)
        self.fit_weights = None  # (n,) the support set's regression weights, of mean 1 per class; None: unweighted
        if cfg.syn_weights == "coreset":
            self.fit_weights = loss_weights(required_weights(ctx.init.weights, "KRR"), self.labels_syn).to(ctx.device)

    @staticmethod
    def default_iterations(data: Data, ipc: int) -> int:
        if data.name == "digits":  # IPC 1: 93% after 300; IPC 10: 97.3% after 300, 97.6-97.9% after 600
            return 300 if ipc < 5 else 600
        return 1000

    def kernel_nets(self) -> list[torch.nn.Module]:
        """``nets`` freshly drawn networks: one draw of the random-feature kernel."""
        nets = []
        for _ in range(self.cfg.nets):
            net = self.ctx.fresh_net()
            net.train()  # instance norm behaves alike in both modes; batch norm uses the batch
            for p in net.parameters():
                p.requires_grad_(False)
            nets.append(net)
        return nets

    def phi(self, nets: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
        """The kernel's feature map: the nets' embeddings, concatenated, scaled by 1 / sqrt(nets D)."""
        phis = [net.embed(x) for net in nets]
        return torch.cat(phis, 1) / math.sqrt(len(nets) * phis[0].shape[1])

    def features(self, real: torch.Tensor, syn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random-network features of the real batch (no graph) and the synthetic set (with graph)."""
        nets = self.kernel_nets()
        with torch.no_grad():
            phi_t = self.phi(nets, real)
        return phi_t, self.phi(nets, syn)

    @torch.no_grad()
    def residuals(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of the real images ``indices`` (default: all, (N,)) under the current kernel fit,
        || y_i - K_iS (K_SS + lambda I)^-1 y_S ||^2: the regression loss this method minimises, so
        importance sampling draws the real images the synthetic set fits worst (one fresh draw of the
        kernel, like a step)."""
        nets = self.kernel_nets()
        phi_s = self.phi(nets, self.images_syn)
        x, y = self.ctx.data.x_train, self.ctx.data.y_train
        if indices is not None:
            x, y = x[indices.to(x.device)], y[indices.to(y.device)]
        c = self.ctx.data.num_classes
        fit = in_passes(lambda xb: krr_predict(phi_s, self.phi(nets, xb), self.targets_syn, self.cfg.reg, self.fit_weights), x)
        return ((fit - targets(y, c)) ** 2).sum(1)

    def step(self) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        drawn = self.real.sample(self.b)  # (C, b)
        w = self.real.weights(drawn)  # (C, b) importance weights of the real residuals, or None: their mean
        idx = drawn.flatten()  # class-major (C * b,)
        real, syn = ctx.data.x_train[idx], self.images_syn
        if self.cfg.augment and ctx.strategy:
            real = augment.augment(real, ctx.strategy, ctx.generator)
            syn = augment.augment(syn, ctx.strategy, ctx.generator)
        phi_t, phi_s = self.features(real, syn)
        pred = krr_predict(phi_s, phi_t, self.targets_syn, self.cfg.reg, self.fit_weights)
        per_image = ((pred - self.targets_real) ** 2).sum(1)
        loss = per_image.mean() if w is None else (per_image * w.flatten()).sum() / w.shape[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        acc = (pred.detach().argmax(1) == self.labels_real).float().mean()
        return {"loss": loss.detach(), "krr_accuracy": acc}

    def synthetic(self) -> Synthetic:
        if self.cfg.learn_labels:
            return Synthetic(self.images_syn.detach(), self.targets_syn.detach() * self.cfg.label_scale, weights=self.ctx.init.weights)
        return Synthetic(self.images_syn.detach(), self.labels_syn, weights=self.ctx.init.weights)

    def extras(self) -> dict[str, torch.Tensor]:
        return self.real.extras()
