"""Importance for a kernel ridge regression fit: ridge leverage scores per class (``krr-sensitivity``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from distill_core.data.datasets import Data
from distill_core.initializers.base import initializer
from distill_core.initializers.selection import FeatureOptions, select_per_class, sq_dists
from distill_core.initializers.sensitivity import distinct_importance_sample
from distill_core.options import option
from distill_core.synthetic import InitResult


def ridge_leverage(
    lam: float, kernel: torch.Tensor | None = None, phi: torch.Tensor | None = None
) -> torch.Tensor:
    """Ridge leverage scores tau_i = (K (K + lam I)^-1)_ii, from the kernel matrix ``kernel`` (n, n)
    or from features ``phi`` (n, D) with K = phi phi^T (then tau_i = phi_i^T (phi^T phi + lam I)^-1 phi_i,
    the same numbers at O(n D^2)). They sum to the effective degrees of freedom trace(K (K + lam I)^-1)."""
    if phi is not None and phi.shape[1] >= phi.shape[0]:
        kernel, phi = phi @ phi.T, None  # the n x n side is the smaller one
    if phi is not None:
        gram = phi.T @ phi
        sol = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), phi.T)  # (D, n)
        return (phi * sol.T).sum(1)
    assert kernel is not None
    evals, evecs = torch.linalg.eigh(kernel)
    evals = evals.clamp_min(0)
    return (evecs**2 @ (evals / (evals + lam))).clamp(0, 1)


def rbf_features(f: torch.Tensor, gamma: float, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Random Fourier features (Rahimi & Recht 2007) of exp(-gamma ||x - y||^2), (n, dim)."""
    w = torch.randn(f.shape[1], dim, generator=generator, dtype=f.dtype) * math.sqrt(2 * gamma)
    b = torch.rand(dim, generator=generator, dtype=f.dtype) * 2 * math.pi
    return math.sqrt(2.0 / dim) * torch.cos(f @ w + b)


def median_gamma(f: torch.Tensor, generator: torch.Generator, sample: int = 1000) -> float:
    """gamma = 1 / median squared distance (the median heuristic), on at most ``sample`` rows."""
    rows = f[torch.randperm(f.shape[0], generator=generator)[:sample]]
    d2 = sq_dists(rows, rows)
    off = d2[~torch.eye(rows.shape[0], dtype=torch.bool)]
    med = float(off.median()) if off.numel() else 1.0
    return 1.0 / med if med > 0 else 1.0


@dataclass(frozen=True)
class KRRSensitivityOptions(FeatureOptions):
    kernel: Literal["rbf", "linear"] = option("rbf", "rbf (median-heuristic bandwidth) or linear (K = f f^T)", what="kernel")
    ridge: float = option(0.1, "lambda, relative to the mean of diag(K)", above=0)
    exact_max: int = option(3000, "images per class up to which the rbf kernel is exact (random Fourier features beyond)", min=1)
    rff_dim: int = option(2048, "random Fourier features beyond exact_max", min=1)


@initializer(
    "krr-sensitivity",
    KRRSensitivityOptions,
    score_meaning="ridge leverage score (K (K + lambda I)^-1)_ii in the chosen kernel; sampling probability tau / sum(tau)",
    gives_weights=True,
)
def krr_sensitivity(data: Data, ipc: int, generator: torch.Generator, cfg: KRRSensitivityOptions, cache_dir: Path) -> InitResult:
    """Importance for a kernel ridge regression fit: ridge leverage scores per class, sampled like
    ``sensitivity`` (p = tau / sum(tau), ipc distinct images, Des Raj weights).

    Options: ``kernel`` "rbf" (default; median-heuristic bandwidth; exact up to ``exact_max`` images
    per class, random Fourier features of ``rff_dim`` beyond) or "linear" (K = f f^T; with
    ``features="embedding"`` this is the random-ConvNet kernel the ``krr`` method distils with);
    ``ridge``: lambda relative to the mean of diag(K) (default 0.1)."""

    def choose(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tau = ridge_leverage(*ridge_problem(f, cfg, generator))
        pick, w = distinct_importance_sample(tau.clamp_min(1e-12), ipc, generator)
        return pick, tau, w

    return select_per_class(data, ipc, generator, cfg, choose)


def ridge_problem(
    f: torch.Tensor, cfg: KRRSensitivityOptions, generator: torch.Generator
) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """The ridge problem of one class's features ``f`` (n, D) as ``ridge_leverage`` takes it:
    (lambda, kernel (n, n) or None, features phi (n, D') or None). linear: phi = f, lambda = ridge x
    mean ||f_i||^2; rbf: the exact kernel up to ``exact_max`` rows, random Fourier features beyond,
    lambda = ridge (diag(K) = 1)."""
    if cfg.kernel == "linear":
        return cfg.ridge * max(float((f * f).sum(1).mean()), 1e-12), None, f
    gamma = median_gamma(f, generator)
    if f.shape[0] <= cfg.exact_max:
        return cfg.ridge, torch.exp(-gamma * sq_dists(f, f)), None
    return cfg.ridge, None, rbf_features(f, gamma, cfg.rff_dim, generator)
