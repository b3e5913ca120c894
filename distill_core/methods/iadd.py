"""IADD: importance-aware adaptive dataset distillation (after Li et al., Neural Networks 2024).

The paper's full text and code are not available here; this is this project's reading of its
abstract ("automatically assigning importance weights to different network parameters during
distillation"), built on MTT.

Weights, one per parameter tensor l (L tensors): w = L · softmax(a), so they are positive, sum to L,
and w = 1 everywhere gives MTT's loss back. The images and α descend the weighted matching loss

    L_w = Σ_l w_l ||θ_N,l − θ*_{t+M},l||² / Σ_l w_l ||θ*_t,l − θ*_{t+M},l||²,

with the weights held fixed. The logits a are learned alongside, by SGD (with momentum) *ascending*

    J(a) = Σ_l p_l r̃_l + τ H(p),   p = softmax(a),   r̃_l = r_l / mean_k r_k,   r_l = num_l / den_l,

where r_l is tensor l's relative matching error in this iteration (how far the student ends from
the expert's target, relative to how far the expert moved). Why this shape:

* Importance follows where the synthetic set still fails: a tensor the student already matches
  (small r_l) loses weight, one it misses gains. Weights learned by *descending* L_w would drift
  onto the easiest tensor and switch the hard ones off; ascending L_w itself (a linear-fractional
  function, maximal at a vertex) piles everything on the hardest one. J has an interior optimum.
* The entropy term makes that optimum a tempered softmax, p ∝ exp(E[r̃_l] / τ): no tensor is ever
  dropped, none takes all the weight, and the spread is set by τ alone, because r̃ is normalised
  by the mean error (the weights do not sharpen as the overall loss falls).
* A tensor's r̃ can spike in one iteration (a window where the expert barely moved it); r̃ is
  clipped at ``error_clip`` and the ascent is slow (lr 0.2, momentum 0.5), so the weights follow
  the average error, not single draws (with momentum 0.9 such spikes made weights overshoot to 0).
* Tensors that barely move along the expert trajectory (a conv bias before instance norm has zero
  gradient, so its ratio is rounding noise) are held neutral (r̃ = 1); they add nothing to L_w.

The weights show per tensor in ``extras()`` as ``importance/<parameter name>`` (0-d each, in
parameter order), with a short history ``importance_history`` (K, L) and
``importance_history_iteration`` (K,) for the app's plot over time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill_core.methods.base import METHODS, Context, Declares
from distill_core.methods.mtt import MTT, MTTConfig
from distill_core.options import option


@dataclass(frozen=True)
class IADDConfig(MTTConfig):
    lr_weights: float = option(0.2, "ascent rate of the importance logits a", min=0)
    weight_momentum: float = option(0.5, "momentum of that ascent", min=0, max=0.999)
    temperature: float = option(1.0, "τ: weights tend to L · softmax(E[r̃] / τ); larger is flatter; positive so they cannot collapse", above=0)
    error_clip: float = option(3.0, "r̃ above this is clipped: one iteration's outlier must not swing the weights (> 1, the mean)", above=1)
    history_every: int = option(10, "iterations between rows of the weights' history", min=1)
    history_size: int = option(200, "rows kept; older rows are thinned, not dropped", min=2)


def relative_errors(num: torch.Tensor, den: torch.Tensor, still: float = 1e-6) -> torch.Tensor:
    """r̃ (L,): per tensor num/den over its mean across tensors. Tensors whose expert motion is below
    ``still`` of the total carry no information (their ratio is rounding noise) and get r̃ = 1."""
    moving = den > still * den.sum()
    r = torch.where(moving, num / torch.where(moving, den, torch.ones_like(den)), torch.zeros_like(num))
    mean = r.sum() / moving.sum().clamp_min(1)
    return torch.where(moving, r / mean.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(r))


class ImportanceWeights:
    """w = L · softmax(a) over named parameter tensors, a learned by ascent on J (module docstring)."""

    def __init__(
        self, names: list[str], device: torch.device, lr: float, momentum: float, temperature: float,
        history_every: int = 10, history_size: int = 200, error_clip: float = 3.0,
    ) -> None:
        self.names = list(names)
        self.logits = torch.zeros(len(names), device=device, requires_grad=True)
        self.opt = torch.optim.SGD([self.logits], lr=lr, momentum=momentum, maximize=True)
        self.temperature = temperature
        self.error_clip = error_clip
        self.history_every, self.history_size = history_every, history_size
        self.history = torch.empty(0, len(names), device=device)
        self.history_iteration = torch.empty(0, device=device)
        self.relative_error: torch.Tensor | None = None
        self.record(0)

    def weights(self) -> torch.Tensor:
        """(L,), positive, summing to L."""
        return len(self.names) * torch.softmax(self.logits.detach(), 0)

    def loss(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        """L_w for the images (weights fixed); keeps this iteration's relative errors for ``update``."""
        w = self.weights()
        with torch.no_grad():
            self.relative_error = relative_errors(num, den).clamp(max=self.error_clip)
        return (w * num).sum() / (w * den).sum()

    def objective(self, relative_error: torch.Tensor) -> torch.Tensor:
        """J(a) = Σ p r̃ + τ H(p)."""
        p = torch.softmax(self.logits, 0)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        return (p * relative_error).sum() + self.temperature * entropy

    def update(self) -> None:
        """One ascent step on J with the relative errors of the last ``loss`` call."""
        if self.relative_error is None:
            return
        self.opt.zero_grad(set_to_none=True)
        self.objective(self.relative_error).backward()
        self.opt.step()
        self.relative_error = None

    def record(self, iteration: int) -> None:
        if iteration % self.history_every:
            return
        w = self.weights().detach().unsqueeze(0)
        it = torch.tensor([float(iteration)], device=w.device)
        self.history = torch.cat([self.history, w])
        self.history_iteration = torch.cat([self.history_iteration, it])
        if self.history.shape[0] > self.history_size:
            # thin the older half, keep the recent half dense: the plot spans the whole run
            half = self.history_size // 2
            rows = self.history.shape[0]
            keep = torch.cat([torch.arange(0, rows - half, 2), torch.arange(rows - half, rows)]).to(self.history.device)
            self.history, self.history_iteration = self.history[keep], self.history_iteration[keep]

    def extras(self) -> dict[str, torch.Tensor]:
        w = self.weights().detach()
        out = {f"importance/{name}": w[i] for i, name in enumerate(self.names)}
        out["importance_history"] = self.history
        out["importance_history_iteration"] = self.history_iteration
        return out


@METHODS.register("iadd")
class IADD(MTT):
    Config = IADDConfig
    declares = Declares(
        experts=True, learned_lr=True, metrics=("loss", "lr_syn", "start_epoch", "weight_max", "weight_min"),
        extras=("importance/", "importance_history", "importance_history_iteration"), loop="tm step",
    )

    def __init__(self, ctx: Context, cfg: IADDConfig) -> None:
        super().__init__(ctx, cfg)
        cfg = self.cfg
        self.importance = ImportanceWeights(
            self.experts.names, ctx.device, cfg.lr_weights, cfg.weight_momentum, cfg.temperature,
            cfg.history_every, cfg.history_size, cfg.error_clip,
        )

    @property
    def layer_names(self) -> list[str]:
        return self.importance.names

    def loss_fn(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return self.importance.loss(num, den)

    def update(self, loss: torch.Tensor) -> None:
        super().update(loss)
        self.importance.update()

    def step(self) -> dict[str, torch.Tensor]:
        metrics = super().step()
        self.importance.record(self.iteration)
        w = self.importance.weights().detach()
        metrics["weight_max"] = w.max()
        metrics["weight_min"] = w.min()
        return metrics

    def extras(self) -> dict[str, torch.Tensor]:
        return self.importance.extras()
