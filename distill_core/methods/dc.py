"""DC: gradient matching (Zhao, Mopuri & Bilen, ICLR 2021) and DSA, the same with differentiable
siamese augmentation (Zhao & Bilen, ICML 2021).

One ``step()`` is one outer loop of the paper: a fresh network; then ``outer_loop`` times (the
reference code's name; the paper's inner loop T): for every class, the gradient of the classification
loss on a real batch of that class and on the synthetic images of that class, matched layer by layer
with sum over output nodes of (1 - cos); one SGD step on the images; then ``inner_loop`` epochs of
the network on the synthetic set. Reference loops (image updates, network epochs): IPC 1 (1, 1),
IPC 10 (10, 50), IPC 50 (50, 10).

As in the reference, only weights with an output-node structure (conv and linear weights) are
matched; biases and normalisation parameters are not. Real gradients (no graph needed) come from one
forward/backward per class, which measured fastest on CPU. The synthetic gradients, whose graph the
image update backpropagates through, come from one batched forward over all classes: instance norm
is per sample, so each image's output gradient is that of its own class's loss, and per-class weight
gradients are segment sums of per-sample outer products (unfolded patches for convolutions).
Networks whose samples interact (batch norm) fall back to one pass per class.

With ``syn_weights="coreset"`` the synthetic side of a class's match is the gradient of the weighted
mean of its images' losses, sum_j w_j l_j / sum_j w_j, with the coreset weights of the initial set
(``sensitivity``, ``krr-sensitivity``), and the network's epochs on the synthetic set weigh each
image's loss alike (normalised to mean 1 within its class), as the evaluation's weighted loss does.

DSA (``augment=True``, registered as ``dsa``) draws one transformation per class and applies it to
that class's real batch and synthetic images alike (the reference's siamese draw), and augments the
network's training batches on the synthetic set.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.data import augment
from distill_core.data.datasets import Data
from distill_core.evaluation.protocol import train_epoch
from distill_core.methods import real
from distill_core.methods.base import METHODS, Context, Declares, Synthetic
from distill_core.methods.real import RealBatches
from distill_core.options import Options, option
from distill_core.synthetic import SYN_WEIGHTS, SYN_WEIGHTS_HELP, class_mean_weights, loss_weights, required_weights

# the reference code's (outer_loop, inner_loop) per IPC; IPCs in between take the next one up
LOOPS = ((1, 1, 1), (10, 10, 50), (20, 20, 25), (30, 30, 20), (40, 40, 15), (50, 50, 10))


def reference_loops(ipc: int) -> tuple[int, int]:
    for top, outer, inner in LOOPS:
        if ipc <= top:
            return outer, inner
    return 50, 10


@dataclass(frozen=True)
class DCConfig(Options):
    lr_img: float = option(0.1, "learning rate of the images (SGD)", above=0)
    momentum: float = option(0.5, "momentum of the images' SGD", min=0, max=0.999)
    lr_net: float = option(0.01, "learning rate of the network trained on the synthetic set", above=0)
    momentum_net: float = option(0.0, "momentum of that network's SGD (the reference's main.py: none)", min=0, max=0.999)
    batch_real: int = option(64, "real images per class per matching (reference 256; 64 matched it on digits and FMNIST at 4x less cost)", min=1)
    batch_train: int = option(256, "network minibatch on the synthetic set", min=1)
    outer_loop: int | None = option(None, "image updates per network (empty: the reference's for the IPC)", min=1)
    inner_loop: int | None = option(None, "network epochs on the synthetic set between them (empty: the reference's)", min=0)
    augment: bool = option(False, "siamese augmentation inside the matching: DSA")
    refresh_every: int = option(10, "importance sampling: networks (steps) between rescoring the real images", min=1)
    score_steps: int = option(100, "importance sampling: epochs of the scorer on the synthetic set (DC IPC 1)", min=0)
    score_pool: int = option(real.SCORE_POOL, real.POOL_HELP, min=0)
    weighting: Literal[real.WEIGHTINGS] = option("plain", real.WEIGHTING_HELP, what="weighting")
    syn_weights: Literal[SYN_WEIGHTS] = option(
        "uniform", "the synthetic gradient of a class and the inner network's training loss: " + SYN_WEIGHTS_HELP, what="syn_weights"
    )

    def resolved(self, data: Data, ipc: int, iterations: int) -> "DCConfig":
        outer, inner = reference_loops(ipc)
        return replace(
            self,
            outer_loop=outer if self.outer_loop is None else self.outer_loop,
            inner_loop=inner if self.inner_loop is None else self.inner_loop,
        )


@dataclass(frozen=True)
class DSAConfig(DCConfig):
    augment: bool = option(True, "siamese augmentation inside the matching: DSA")


def matched_layers(net: nn.Module) -> list[nn.Module]:
    """Modules whose weights are matched: every convolution and linear layer, in forward order."""
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def separable(net: nn.Module, layers: list[nn.Module]) -> bool:
    """True when each sample's output depends on that sample alone and every matched weight is a
    plain convolution or linear weight (the batched per-class gradient then applies)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return False
    if any(isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros") for m in layers):
        return False
    matched = {id(m.weight) for m in layers}
    return all(id(p) in matched for p in net.parameters() if p.ndim > 1)


def class_gradients_loop(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[nn.Module], create_graph: bool = False,
    sample_weights: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Per-class gradients of the mean cross entropy wrt each matched weight, one pass per class;
    with ``sample_weights`` (C, n), of the weighted sum Σ_i w_ci ℓ_ci instead of the mean.

    x: (C, n, ch, H, W), y: (C, n) -> list of (C, *weight.shape)."""
    weights = [m.weight for m in layers]
    per_class = []
    for c in range(x.shape[0]):
        if sample_weights is None:
            loss = F.cross_entropy(net(x[c]), y[c])
        else:
            loss = (F.cross_entropy(net(x[c]), y[c], reduction="none") * sample_weights[c]).sum()
        per_class.append(torch.autograd.grad(loss, weights, create_graph=create_graph))
    return [torch.stack(gs) for gs in zip(*per_class, strict=True)]


def class_gradients_batched(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[nn.Module], create_graph: bool = False,
    sample_weights: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The same as ``class_gradients_loop`` from one batched forward (needs ``separable(net)``).

    With L = sum_c mean_{i in c} loss_i (or sum_c sum_i w_ci loss_ci) and samples independent,
    dL/d(out_i) is the gradient of class c's loss alone; a weight's gradient is a sum over samples,
    so summing per class gives the per-class gradients."""
    c, n = x.shape[:2]
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        seen[m] = (args[0], out)
        return out.clone()  # the next layer gets a copy: an in-place ReLU must not overwrite the kept output

    hooks = [m.register_forward_hook(keep) for m in layers]
    try:
        logits = net(x.flatten(0, 1))
    finally:
        for h in hooks:
            h.remove()
    per_sample = F.cross_entropy(logits, y.flatten(), reduction="none").view(c, n)
    loss = per_sample.mean(1).sum() if sample_weights is None else (per_sample * sample_weights).sum()
    deltas = torch.autograd.grad(loss, [seen[m][1] for m in layers], create_graph=create_graph)
    grads = []
    for m, delta in zip(layers, deltas, strict=True):
        inp = seen[m][0]
        if isinstance(m, nn.Conv2d):
            cols = F.unfold(inp, m.kernel_size, m.dilation, m.padding, m.stride)  # (c n, in k k, L)
            delta = delta.flatten(2)  # (c n, out, L)
            g = torch.einsum("cnol,cnkl->cok", delta.reshape(c, n, *delta.shape[1:]), cols.reshape(c, n, *cols.shape[1:]))
        else:
            g = torch.einsum("cno,cni->coi", delta.reshape(c, n, -1), inp.reshape(c, n, -1))
        grads.append(g.reshape(c, *m.weight.shape))
    return grads


def gradient_distance(g_real: list[torch.Tensor], g_syn: list[torch.Tensor]) -> torch.Tensor:
    """sum over layers, classes and output nodes of 1 - cos(g_real, g_syn); each g is (C, out, ...)."""
    total = g_syn[0].new_zeros(())
    for gr, gs in zip(g_real, g_syn, strict=True):
        gr, gs = gr.flatten(2), gs.flatten(2)  # (C, out, fan_in)
        cos = (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


@METHODS.register("dc")
class DC:
    Config = DCConfig
    declares = Declares(real_batches=True, extras=real.EXTRAS, loop="dsa outer")

    def __init__(self, ctx: Context, cfg: DCConfig) -> None:
        cfg = ctx.options(cfg)
        self.ctx, self.cfg = ctx, cfg
        self.images_syn = ctx.init.images.detach().clone().requires_grad_(True)
        self.labels_syn = ctx.init.labels.clone()
        self.opt = torch.optim.SGD([self.images_syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.outer_loop, self.inner_loop = cfg.outer_loop, cfg.inner_loop
        self.strategy = ctx.strategy if cfg.augment else ""
        # DC picks when to rescore (after the network has trained on S), so no automatic refresh
        self.real = RealBatches(ctx, 0, self.synthetic, cfg.score_steps, pool=cfg.score_pool, weighting=cfg.weighting)
        self.b = min(cfg.batch_real, self.real.sampler.max_batch())
        c = ctx.data.num_classes
        self.labels_real = torch.arange(c, device=ctx.device).view(c, 1).expand(c, self.b)
        self.labels_class = self.labels_syn.view(c, ctx.ipc)
        self.steps = 0
        self.mean_weights = self.train_weights = None  # (C, ipc) summing to 1 per class, (n,) of mean 1; None: plain
        if cfg.syn_weights == "coreset":
            w = required_weights(ctx.init.weights, type(self).__name__)
            self.mean_weights = class_mean_weights(w, c).to(ctx.device)
            self.train_weights = loss_weights(w, self.labels_syn).to(ctx.device)

    @staticmethod
    def default_iterations(data: Data, ipc: int) -> int:
        # networks (steps), each with outer_loop image updates: the reference's 1000 reach their accuracy
        # far sooner (digits IPC 1: 93% after 100, IPC 10: 98% after 10; Fashion-MNIST DSA IPC 1: 70.2%
        # after 120, about 3 CPU-seconds a step)
        outer, _ = reference_loops(ipc)
        return max(4, 200 // outer)

    def siamese(self, real: torch.Tensor, syn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One transformation per class, the same for its real batch and its synthetic images."""
        if not self.strategy:
            return real, syn
        pairs = [augment.siamese(self.strategy, self.ctx.generator, r, s) for r, s in zip(real, syn, strict=True)]
        return torch.stack([r for r, _ in pairs]), torch.stack([s for _, s in pairs])

    def match(self, net: nn.Module, layers: list[nn.Module], batched: bool) -> torch.Tensor:
        ctx = self.ctx
        c = ctx.data.num_classes
        idx = self.real.sample(self.b)  # (C, b)
        w = self.real.weights(idx)  # (C, b) importance weights of the real losses, or None: their mean
        real = ctx.data.x_train[idx.flatten()].view(c, self.b, *self.images_syn.shape[1:])
        syn = self.images_syn.view(c, ctx.ipc, *self.images_syn.shape[1:])
        real, syn = self.siamese(real, syn)
        g_real = [g.detach() for g in class_gradients_loop(net, real, self.labels_real, layers, sample_weights=w)]
        grads = class_gradients_batched if batched else class_gradients_loop
        g_syn = grads(net, syn, self.labels_class, layers, create_graph=True, sample_weights=self.mean_weights)
        return gradient_distance(g_real, g_syn)

    def train_net(self, net: nn.Module, opt: torch.optim.Optimizer) -> None:
        """``inner_loop`` epochs of the network on the (detached) synthetic set."""
        for _ in range(self.inner_loop):
            train_epoch(
                net, opt, self.images_syn.detach(), self.labels_syn, self.cfg.batch_train, self.strategy, self.ctx.generator,
                weights=self.train_weights,
            )

    def step(self) -> dict[str, torch.Tensor]:
        ctx, cfg = self.ctx, self.cfg
        net = ctx.fresh_net()
        net.train()
        layers = matched_layers(net)
        batched = separable(net, layers)
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=cfg.momentum_net)
        total = torch.zeros((), device=ctx.device)
        for ol in range(self.outer_loop):
            if self.real.importance and ol == self.outer_loop - 1 and self.steps % cfg.refresh_every == 0:
                # the network is now the one most trained on S; an untrained one (IPC 1) says nothing
                self.real.refresh(net if ol > 0 else None)
            loss = self.match(net, layers, batched)
            # only the images need the gradient; backward() would also fill the network's
            self.images_syn.grad = torch.autograd.grad(loss, self.images_syn)[0]
            self.opt.step()
            total = total + loss.detach()
            if ol == self.outer_loop - 1:
                break
            self.train_net(net, opt_net)
        self.steps += 1
        return {"loss": total / (ctx.data.num_classes * self.outer_loop)}

    def synthetic(self) -> Synthetic:
        return Synthetic(self.images_syn.detach(), self.labels_syn, weights=self.ctx.init.weights)

    def extras(self) -> dict[str, torch.Tensor]:
        return self.real.extras()


# DSA is DC with siamese augmentation switched on by its config's default: a variant, not a copy
METHODS.register("dsa")(type("DSA", (DC,), {"Config": DSAConfig, "__doc__": "DC with differentiable siamese augmentation."}))
