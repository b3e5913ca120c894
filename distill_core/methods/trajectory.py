"""Trajectory matching, the part MTT, DATM and IADD share: an unrolled student and its gradient.

The student starts at an expert's parameters θ*_t and takes N SGD steps on synthetic minibatches,

    θ_{i+1} = θ_i − α ∇_θ ℓ(f_{θ_i}(aug_i(S[b_i])), y[b_i]),

through ``torch.func.functional_call`` with named parameter dicts. The matching loss compares θ_N
with the expert M epochs later, normalised by how far the expert itself moved:

    L = Σ_l ||θ_N,l − θ*_{t+M},l||² / Σ_l ||θ*_t,l − θ*_{t+M},l||²

(l runs over parameter tensors; the per-tensor numerators and denominators are returned separately
so that IADD can weight them). Its gradient reaches the images S, the step size α and soft labels y.

Two ways to compute the same gradient:

* ``constant_memory=False``: keep the autograd graph of all N steps (memory ~ N x activations).
* ``constant_memory=True`` (TESLA-style, Cui et al. 2023): a forward sweep without a graph that
  stores only θ_i, the minibatch indices and augmentation draws, then a backward sweep that walks
  the steps in reverse, rebuilding one step's graph at a time. With λ_i = ∂L/∂θ_i:

      ∂L/∂S += −α (∂g_i/∂S)ᵀ λ_{i+1},  ∂L/∂α += −⟨g_i, λ_{i+1}⟩,  λ_i = λ_{i+1} − α H_i λ_{i+1},

  all from one vector-Jacobian product of ⟨g_i, λ_{i+1}⟩ per step. TESLA's published form drops the
  H_i terms (the dependence of later student parameters on earlier images); this one keeps them,
  so it equals the plain unroll's gradient to float tolerance (a test checks it). Memory: one
  step's graph plus N copies of the parameters; time: about 1.5x the plain unroll.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from distill_core.data import augment
from distill_core.data.augment import AugParams
from distill_core.evaluation.protocol import classification_loss

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (num (L,), den (L,)) -> scalar


@dataclass(frozen=True)
class StudentBatch:
    """What one student step sees: which synthetic images, and the augmentation drawn for them."""

    index: torch.Tensor  # (b,) into the synthetic set
    aug: AugParams | None
    weights: torch.Tensor | None = None  # (b,) the drawn images' loss weights; None: the plain mean


def plan_batches(
    n: int, steps: int, batch: int, strategy: str, generator: torch.Generator, weights: torch.Tensor | None = None,
) -> list[StudentBatch]:
    """Minibatches for ``steps`` student steps: shuffled passes over the ``n`` synthetic images,
    each minibatch with its own DSA draw (MTT augments independently, not siamese). A pass's chunks
    are taken from its end, the short one first where ``batch`` does not divide ``n``, as the
    reference pops them (mtt-distillation distill.py:344-348, DATM DATM.py:510-514). ``weights``
    (n,): per-image loss weights (``synthetic.loss_weights``), each minibatch gets its images'."""
    batch = min(batch, n)
    out: list[StudentBatch] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=generator).split(batch))
        index = chunks.pop()
        w = None if weights is None else weights[index.to(weights.device)]
        out.append(StudentBatch(index, augment.draw(strategy, index.numel(), generator), w))
    return out


def student_loss(net: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, batch: StudentBatch) -> torch.Tensor:
    """ℓ(f_θ(aug(S[b])), y[b]); hard (int64) or soft (float logits) labels; the mean of the per-image
    losses times the batch's weights where it has them."""
    index = batch.index.to(images.device)
    x = augment.apply(images[index], batch.aug)
    return classification_loss(functional_call(net, params, (x,)), labels[index], batch.weights)


def unroll_step(
    net: nn.Module,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    batch: StudentBatch,
    create_graph: bool = True,
) -> Params:
    """θ − α ∇_θ ℓ: one student SGD step; with ``create_graph`` the result stays differentiable
    in the images, labels, α and θ."""
    loss = student_loss(net, params, images, labels, batch)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}


def matching_terms(params_student: Params, params_start: Params, params_target: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """Per parameter tensor: ||θ_N − θ*_{t+M}||² and ||θ*_t − θ*_{t+M}||², each (L,)."""
    num = torch.stack([((params_student[k] - params_target[k]) ** 2).sum() for k in params_target])
    den = torch.stack([((params_start[k] - params_target[k]) ** 2).sum() for k in params_target])
    return num, den


def normalised_loss(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """MTT's loss: the student's distance to the target over the expert's own distance."""
    return num.sum() / den.sum()


def match(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr_syn: torch.Tensor,
    params_start: Params,
    params_target: Params,
    batches: list[StudentBatch],
    loss_fn: LossFn = normalised_loss,
    constant_memory: bool = False,
) -> torch.Tensor:
    """Unroll the student over ``batches`` from ``params_start`` and match ``params_target``.

    Accumulates ∂L/∂· into ``.grad`` of ``images`` (n, C, H, W), ``lr_syn`` (0-d), ``labels`` when
    they are learned (float, requires_grad) and every leaf ``loss_fn`` uses. Returns L (0-d, detached).
    """
    if constant_memory:
        return _match_constant_memory(net, images, labels, lr_syn, params_start, params_target, batches, loss_fn)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params_start.items()}
    for batch in batches:
        params = unroll_step(net, params, images, labels, lr_syn, batch, create_graph=True)
    loss = loss_fn(*matching_terms(params, params_start, params_target))
    loss.backward()
    return loss.detach()


def _match_constant_memory(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr_syn: torch.Tensor,
    params_start: Params,
    params_target: Params,
    batches: list[StudentBatch],
    loss_fn: LossFn,
) -> torch.Tensor:
    alpha = lr_syn.detach()
    images_const, labels_const = images.detach(), labels.detach()
    # forward sweep: no graph kept, only θ_0 .. θ_{N-1}
    thetas: list[Params] = []
    params = {k: v.detach() for k, v in params_start.items()}
    for batch in batches:
        thetas.append(params)
        leaf = {k: v.requires_grad_(True) for k, v in (_fresh(params)).items()}
        step = unroll_step(net, leaf, images_const, labels_const, alpha, batch, create_graph=False)
        params = {k: v.detach() for k, v in step.items()}
    # ∂L/∂θ_N, and the gradients of whatever loss_fn learns (IADD's weights)
    theta_n = _fresh(params)
    for v in theta_n.values():
        v.requires_grad_(True)
    loss = loss_fn(*matching_terms(theta_n, params_start, params_target))
    loss.backward()
    lam = {k: v.grad for k, v in theta_n.items()}
    # backward sweep: one step's graph at a time
    learn_labels = labels.requires_grad
    grad_images = torch.zeros_like(images_const)
    grad_labels = torch.zeros_like(labels_const) if learn_labels else None
    grad_alpha = torch.zeros_like(alpha)
    for batch, theta in zip(reversed(batches), reversed(thetas), strict=True):
        leaf = {k: v.requires_grad_(True) for k, v in _fresh(theta).items()}
        x_leaf = images_const.detach().requires_grad_(True)
        y_leaf = labels_const.detach().requires_grad_(True) if learn_labels else labels_const
        loss_i = student_loss(net, leaf, x_leaf, y_leaf, batch)
        g = torch.autograd.grad(loss_i, list(leaf.values()), create_graph=True)
        g_dot_lam = sum((gi * lam[k]).sum() for gi, k in zip(g, leaf, strict=True))
        wrt = [*leaf.values(), x_leaf] + ([y_leaf] if learn_labels else [])
        d = torch.autograd.grad(g_dot_lam, wrt, allow_unused=True)
        hvp, d_x = d[: len(leaf)], d[len(leaf)]
        grad_images -= alpha * d_x
        if learn_labels and d[-1] is not None:
            grad_labels -= alpha * d[-1]
        grad_alpha -= g_dot_lam.detach()
        lam = {k: lam[k] - alpha * (h if h is not None else 0.0) for k, h in zip(leaf, hvp, strict=True)}
    _accumulate(images, grad_images)
    _accumulate(lr_syn, grad_alpha)
    if learn_labels:
        _accumulate(labels, grad_labels)
    return loss.detach()


def _fresh(params: Params) -> Params:
    return {k: v.detach().clone() for k, v in params.items()}


def _accumulate(t: torch.Tensor, g: torch.Tensor) -> None:
    if not t.requires_grad:
        return
    t.grad = g.clone() if t.grad is None else t.grad + g


def step_where(ok: torch.Tensor, optimizers: list[torch.optim.Optimizer]) -> None:
    """``opt.step()`` for each optimizer, undone (parameters and momentum) where ``ok`` is False.

    Lets a method skip an update on a condition computed on the device (DATM's loss threshold)
    without a host sync: the step is taken and then selected with ``torch.where``.
    """
    saved = []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                buf = opt.state.get(p, {}).get("momentum_buffer")
                saved.append((opt, p, p.detach().clone(), None if buf is None else buf.clone()))
    for opt in optimizers:
        opt.step()
    with torch.no_grad():
        for opt, p, before, buf_before in saved:
            p.copy_(torch.where(ok, p, before))
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                # a skipped first step leaves a zero buffer, which SGD's next step treats like none
                buf.copy_(torch.where(ok, buf, buf_before if buf_before is not None else torch.zeros_like(buf)))


# ---- estimates, shown before a run -------------------------------------------------------------


@dataclass(frozen=True)
class UnrollEstimate:
    graph_bytes: int  # autograd memory of one matching iteration (unrolled graph or one step + stored θ's)
    params_bytes: int  # one copy of the student's parameters
    seconds_per_iteration: float

    def to_dict(self) -> dict[str, float]:
        return {
            "graph_bytes": self.graph_bytes,
            "params_bytes": self.params_bytes,
            "seconds_per_iteration": self.seconds_per_iteration,
        }


def saved_bytes_of_step(
    net: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor, batch: StudentBatch
) -> int:
    """Bytes autograd keeps for one differentiable student step (counted with saved-tensor hooks)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            seen[(id(t), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = unroll_step(net, params, images, labels, lr, batch, create_graph=True)
    # the step's outputs (θ_{i+1}) stay alive too
    return sum(seen.values()) + sum(v.numel() * v.element_size() for v in out.values())


def estimate_unroll(
    net: nn.Module,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch_syn: int,
    strategy: str,
    constant_memory: bool,
    trials: int = 3,
) -> UnrollEstimate:
    """Memory and time of one matching iteration, from one measured student step on the real shapes.

    ``params`` are the student's parameters, ``images`` (n, C, H, W) and ``labels`` the synthetic set
    (use requires_grad on them as the method will). Plain unroll: N x (one step's graph); constant
    memory: one step's graph plus N stored parameter copies.
    """
    gen = torch.Generator().manual_seed(0)
    n = images.shape[0]
    # copies, so that measuring never touches the caller's gradients
    x = images.detach().clone().requires_grad_(True)
    y = labels.detach().clone().requires_grad_(labels.requires_grad)
    lr = torch.tensor(0.01, device=images.device, requires_grad=True)
    p0 = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    batch = plan_batches(n, 1, batch_syn, strategy, gen)[0]
    per_step = saved_bytes_of_step(net, p0, x, y, lr, batch)
    params_bytes = sum(v.numel() * v.element_size() for v in params.values())
    graph = per_step + steps * params_bytes if constant_memory else steps * per_step
    # time: one-step unrolls, backward included, scaled to N steps; the fastest of a few trials,
    # since a busy machine only ever adds time
    batches = plan_batches(n, 1, batch_syn, strategy, gen)
    target = {k: v.detach() + 0.01 for k, v in params.items()}
    match(net, x, y, lr, params, target, batches, constant_memory=constant_memory)  # warm-up
    times = []
    for _ in range(trials):
        _sync(images.device)
        t0 = time.perf_counter()
        match(net, x, y, lr, params, target, batches, constant_memory=constant_memory)
        _sync(images.device)
        times.append(time.perf_counter() - t0)
    seconds = min(times) * steps
    return UnrollEstimate(int(graph), int(params_bytes), seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
