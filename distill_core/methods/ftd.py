"""FTD's expert training (Du et al., CVPR 2023, "Minimizing the accumulated trajectory error"), the
recipe DATM's authors train their experts with: SGD whose gradient is GSAM's (Zhuang et al., ICLR
2022), a sharpness-aware gradient, for flatter expert trajectories, along which (FTD's argument) a
student's errors accumulate less. This is this project's reading of NUS-HPC-AI-Lab/DATM ``buffer/
buffer_FTD.py`` with its ``buffer/gsam/`` package and ``utils/utils_gsam.py``'s ``epoch``, run with the
README's command line (``README.md:31``); none of their code is copied.

One step on a minibatch (x, y), already augmented once (utils_gsam.py:394-396: both passes see the
same augmented images), parameters w (lists over the network's parameter tensors):

1. g = ∇L(w) (gsam.py:162);
2. ASAM's adaptive perturbation (``adaptive`` is on: buffer_FTD.py:147, the README does not pass it):
   e = g · ρ / (‖|w| ⊙ g‖ + ε) ⊙ w², w ← w + e (gsam.py:41-53, 102-112);
3. g' = ∇L(w + e) (gsam.py:171);
4. GSAM's decomposition: the part of g orthogonal to g', g⊥ = g − cos(g, g') ‖g‖ g' / (‖g'‖ + ε),
   with cos = ⟨g, g'⟩ / (‖g'‖ ‖g‖ + ε), and d = g' − α g⊥ (gsam.py:63-85);
5. w ← w − e (gsam.py:56-60), then the base SGD step w ← w − lr · d (gsam.py:183), no momentum, no
   weight decay.

The learning rate and ρ stay constant over the whole training (buffer_FTD.py:84: StepLR with gamma
1; buffer_FTD.py:85-86 and gsam/scheduler.py:36-39: ρ follows the lr between rho_min and rho_max,
equal here), so an expert's first E epochs do not depend on how long it trains in all, as with plain
SGD (the expert cache relies on it).

Fidelity (checked outside the repository, not a test: the reference needs its own package layout
and stubs for imports it does not use here): the reference's ``GSAM`` and ``ProportionScheduler``
(their ``buffer/gsam`` package imported as is), built as buffer_FTD.py:81-88 builds them and driven by
their ``utils_gsam.epoch`` one minibatch at a time, against ``GSAM.step`` here, from the same weights
and the same DSA-augmented minibatches (64 random CIFAR-shaped images each) on CPU, fp32: after each
of 5 steps the largest absolute difference of any parameter is 0.0 (bit-identical), on this
project's ConvNet and on the reference's ``networks.ConvNet`` (width 32, depth 3, instance norm), at
the README's lr 0.01, ρ 0.01, α 0.3, at lr 0.5, ρ 0.5 (a large perturbation), and with ``adaptive``
off at ρ 0.05. Plain SGD from the same start is 2.3e-5 to 3.6e-5 away from FTD after one to five
steps at the README's settings (0.02 to 0.2 at lr 0.5, ρ 0.5): the recipe is not a no-op.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

# README.md:31 (buffer_FTD.py --rho_max=0.01 --rho_min=0.01): the perturbation radius ρ; with rho_min ==
# rho_max and a constant lr, ProportionScheduler gives rho_max at every step (gsam/scheduler.py:36-39)
RHO = 0.01
# README.md:31 --alpha=0.3 (buffer_FTD.py:146 defaults to 0.4): GSAM's weight on the orthogonal part
ALPHA = 0.3
# buffer_FTD.py:147 default True (type=bool; README.md:31 does not pass it): ASAM's |w|-scaled perturbation
ADAPTIVE = True
# gsam/gsam.py:7 perturb_eps=1e-12: guards the divisions by gradient norms
EPS = 1e-12
# README.md:31 --mom=0. (buffer_FTD.py:140), buffer_FTD.py:141 --l2 default 0 (the README does not
# pass it): the base SGD of buffer_FTD.py:81 has neither momentum nor weight decay
MOMENTUM = 0.0
WEIGHT_DECAY = 0.0
# what an expert cache keys on besides the recipe's name, so a change here never reuses old experts
SETTINGS = {"rho": RHO, "alpha": ALPHA, "adaptive": ADAPTIVE, "eps": EPS, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of a list of tensors as the reference takes it: the norm of their norms (gsam.py:105-111)."""
    return torch.norm(torch.stack([t.norm(p=2) for t in tensors]), p=2)


class GSAM:
    """The optimizer of an FTD expert: ``step(closure)`` takes one GSAM step on parameters ``params``
    (see the module docstring); ``closure()``, as torch's optimizers take it, clears the gradients,
    computes the loss at the current parameters on one fixed minibatch, backpropagates it and returns
    it, and is called twice. The base SGD is ``torch.optim.SGD`` (lr, momentum 0, weight
    decay 0), as buffer_FTD.py:81 builds it."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, rho: float = RHO, alpha: float = ALPHA,
                 adaptive: bool = ADAPTIVE) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.base = torch.optim.SGD(self.params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.rho, self.alpha, self.adaptive = rho, alpha, adaptive

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @staticmethod
    def _grads(closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            return closure().detach()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One GSAM step; returns the loss at the unperturbed parameters (no host sync)."""
        value = self._grads(closure)
        params = [p for p in self.params if p.grad is not None]
        g = [p.grad.clone() for p in params]  # gsam.py:48 old_g
        scaled = [(p.abs() * p.grad) if self.adaptive else p.grad for p in params]
        scale = self.rho / (_norm(scaled) + EPS)
        e = []
        for p in params:
            e_w = p.grad * scale.to(p)
            if self.adaptive:
                e_w *= torch.pow(p, 2)
            p.add_(e_w)
            e.append(e_w)
        self._grads(closure)  # g' at w + e, into p.grad
        g2 = [p.grad for p in params]
        inner = sum(torch.sum(a * b) for a, b in zip(g, g2, strict=True))
        norm_new, norm_old = _norm(g2), _norm(g)
        cosine = inner / (norm_new * norm_old + EPS)
        for p, old in zip(params, g, strict=True):
            vertical = old - cosine * norm_old * p.grad / (norm_new + EPS)
            p.grad.add_(vertical, alpha=-self.alpha)
        for p, e_w in zip(params, e, strict=True):
            p.sub_(e_w)
        self.base.step()
        return value

