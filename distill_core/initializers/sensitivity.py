"""Sensitivity sampling for the k-means loss per class, and the importance samples (with their
coreset weights) that it and ``leverage`` draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from distill_core.data.datasets import Data
from distill_core.initializers.base import initializer
from distill_core.initializers.selection import FeatureOptions, fit_kmeans, seed_from, select_per_class, sq_dists
from distill_core.options import option
from distill_core.synthetic import InitResult


def kmeans_sensitivity(d2: torch.Tensor, assign: torch.Tensor, k: int) -> torch.Tensor:
    """Upper bound on each point's k-means sensitivity (Bachem, Lucic, Krause 2017, "Practical coreset
    constructions"), given squared distances ``d2`` (n,) to the nearest of the centres B and the index
    ``assign`` (n,) of that centre:

        s(p) = a d(p,B)^2 / c + 2a sum_{q in B_p} d(q,B)^2 / (|B_p| c) + 4n / |B_p|,  a = 16 (log k + 2),

    with c the mean of d(., B)^2 over the n points and B_p the cluster of p. Sums to n (3a + 4 k')
    where k' is the number of non-empty clusters."""
    n = d2.shape[0]
    alpha = 16 * (math.log(k) + 2)
    c_bar = d2.mean().clamp_min(torch.finfo(d2.dtype).tiny)  # all points on their centres: only the last term counts
    size = torch.bincount(assign, minlength=k).to(d2.dtype)[assign]
    cluster_cost = torch.zeros(k, dtype=d2.dtype).index_add_(0, assign, d2)[assign]
    return alpha * d2 / c_bar + 2 * alpha * cluster_cost / (size * c_bar) + 4 * n / size


def importance_sample(s: torch.Tensor, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` i.i.d. draws (with replacement) of the n rows with p_i = s_i / sum(s), and each draw's
    coreset weight 1 / (m p_i): for every fixed function g, sum_j w_j g(x_j) is an unbiased estimate of
    sum_i g(x_i) (Hansen-Hurwitz), the sampling the coreset theorems are proved for. A row drawn twice
    appears twice (its weights add up). Returns draws (m,) and weights (m,) float64."""
    p = s.double() / s.double().sum()
    pick = torch.multinomial(p, m, replacement=True, generator=generator)
    return pick, 1.0 / (m * p[pick])


def distinct_importance_sample(s: torch.Tensor, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` distinct rows by successive sampling (each next row drawn with probability proportional to
    s among the rows not yet drawn; m <= n) and Des Raj's (1956) weights, which make sum_j w_j g(x_j)
    an unbiased estimate of sum_i g(x_i) for every fixed g, as i.i.d. draws with weights 1 / (m p) do
    (1 / (m p) would be wrong here: a row cannot be drawn twice). With P_j the probability mass of
    the first j - 1 rows drawn, draw j (1-based) of row i gets

        w_j = ((1 - P_j) / p_i + (m - j)) / m,

    the average over j of the estimates t_j = (sum of the earlier draws) + g(x_ij) (1 - P_j) / p_ij,
    each unbiased. The initial synthetic set holds no image twice, so the initializers draw this way.
    Returns the rows in draw order (m,) and their weights (m,) float64."""
    p = s.double() / s.double().sum()
    # Efraimidis-Spirakis: sorting Exp(1) / p_i gives the successive-sampling order
    keys = -torch.log1p(-torch.rand(p.shape[0], generator=generator, dtype=torch.float64)) / p
    pick = keys.argsort()[:m]
    before = torch.cat([p.new_zeros(1), p[pick].cumsum(0)[:-1]]).clamp_max(1.0)  # P_j
    j = torch.arange(1, m + 1, dtype=torch.float64)
    return pick, ((1 - before) / p[pick] + (m - j)) / m


SENSITIVITY_MIN_K = 10  # clusters per class at least: about the number of distinct styles a class shows


def sensitivity_k(ipc: int) -> int:
    """k of the k-means problem whose cost sensitivity sampling preserves: max(ipc, 10), so the bound
    describes a class's modes even at IPC 1 (k = ipc = 1 would be one centre: no structure at all)."""
    return max(ipc, SENSITIVITY_MIN_K)


@dataclass(frozen=True)
class SensitivityOptions(FeatureOptions):
    k: int | None = option(
        None, f"clusters per class whose k-means cost the sampling preserves (empty: max(ipc, {SENSITIVITY_MIN_K}))", min=1
    )
    lloyd: bool = option(False, "refine the k-means++ centres with Lloyd steps")

    def resolved(self, data: Data, ipc: int, iterations: int) -> "SensitivityOptions":
        return replace(super().resolved(data, ipc, iterations), k=self.k or sensitivity_k(ipc))


def sensitivity_scores(f: torch.Tensor, k: int, seed: int, lloyd: bool = False) -> torch.Tensor:
    """``kmeans_sensitivity`` of the rows of ``f`` (n, D) for the centres B: k-means++ seeding with
    ``seed`` (Lloyd-refined where ``lloyd``), k capped at n."""
    from sklearn.cluster import kmeans_plusplus  # scikit-learn's import takes seconds: only where it is used

    k = max(1, min(k, f.shape[0]))
    if lloyd:
        centres, _ = fit_kmeans(f, k, seed)
    else:
        centres = torch.from_numpy(kmeans_plusplus(f.numpy(), n_clusters=k, random_state=seed)[0]).double()
    d2, assign = sq_dists(f, centres).min(1)
    return kmeans_sensitivity(d2, assign, k)


@initializer(
    "sensitivity",
    SensitivityOptions,
    score_meaning="k-means sensitivity s(p) (Bachem, Lucic, Krause 2017); sampling probability is s / sum(s)",
    gives_weights=True,
)
def sensitivity(data: Data, ipc: int, generator: torch.Generator, cfg: SensitivityOptions, cache_dir: Path) -> InitResult:
    """Sensitivity sampling for the k-means loss per class (Tukan, Maalouf, Osadchy 2023, with the bound
    of Bachem, Lucic, Krause 2017): centres B by k-means++ seeding (k = ``k`` option, default
    max(ipc, 10), ``sensitivity_k``; the bound's a = 16 (log k + 2) is the k-means++ guarantee),
    ``lloyd=True`` refines B with Lloyd steps. Draws ipc distinct images with p = s / sum(s) by
    successive sampling (``distinct_importance_sample``); ``InitResult.weights`` holds their Des Raj
    coreset weights (unbiased for the class's k-means cost against any centres). ``python -m
    distill_core coreset`` measures how well such weighted samples preserve the cost."""

    def choose(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = sensitivity_scores(f, cfg.k or sensitivity_k(ipc), seed_from(generator), cfg.lloyd)
        pick, w = distinct_importance_sample(s, ipc, generator)
        return pick, s, w

    return select_per_class(data, ipc, generator, cfg, choose)
