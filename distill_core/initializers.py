"""Initial synthetic sets. Each initializer returns the chosen real indices (class-major) and a
score for every training image where it has one, so the app can draw them.

An initializer is a function ``fn(data, ipc, generator, cfg, cache_dir) -> InitResult`` registered
with ``@initializer(name, Config)``, ``Config`` an ``Options`` dataclass (its fields' metadata hold
help and limits); ``create(name, data, ipc, generator, cache_dir, **options)`` builds the config.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from distill_core.data.datasets import Data
from distill_core.data.sampling import random_subset
from distill_core.evaluation import defaults
from distill_core.features import FEATURES, features
from distill_core.methods import experts
from distill_core.nets.networks import NetConfig
from distill_core.options import Options, build, option
from distill_core.paths import cache_dir as default_cache_dir
from distill_core.registry import Registry
from distill_core.synthetic import InitResult

__all__ = ["INITIALIZERS", "InitResult", "check_ipc", "create", "initializer"]

Initializer = Callable[[Data, int, torch.Generator, Any, Path], InitResult]
INITIALIZERS: Registry[Initializer] = Registry("initializer")


@dataclass(frozen=True)
class NoOptions(Options):
    """An initializer that takes no options."""


def initializer(name: str, config: type[Options] = NoOptions) -> Callable[[Initializer], Initializer]:
    """Register ``fn`` under ``name`` with its options dataclass (``fn.Config``)."""

    def add(fn: Initializer) -> Initializer:
        fn.Config = config  # type: ignore[attr-defined]
        return INITIALIZERS.register(name)(fn)

    return add


def options_of(name: str, options: dict[str, Any]) -> Options:
    return build(INITIALIZERS.get(name).Config, options, f"initializer {name!r}")


def check_ipc(data: Data, ipc: int) -> None:
    smallest = min(data.class_counts())
    if ipc > smallest:
        name = data.class_names[data.class_counts().index(smallest)]
        raise ValueError(
            f"ipc={ipc} is larger than the {smallest} training images of class {name!r}; choose ipc <= {smallest}"
        )


def from_indices(data: Data, indices: torch.Tensor, **extra: Any) -> InitResult:
    indices = indices.to(data.x_train.device)
    return InitResult(data.x_train[indices].clone(), data.y_train[indices].clone(), indices, **extra)


def class_labels(data: Data, ipc: int) -> torch.Tensor:
    return torch.arange(data.num_classes, device=data.x_train.device).repeat_interleave(ipc)


@initializer("noise")
def noise(data: Data, ipc: int, generator: torch.Generator, cfg: NoOptions, cache_dir: Path) -> InitResult:
    """Gaussian noise in normalised pixel space."""
    shape = (data.num_classes * ipc, data.channels, *data.im_size)
    return InitResult(torch.randn(shape, generator=generator).to(data.x_train.device), class_labels(data, ipc))


@initializer("random")
def random(data: Data, ipc: int, generator: torch.Generator, cfg: NoOptions, cache_dir: Path) -> InitResult:
    """Real images drawn uniformly per class."""
    check_ipc(data, ipc)
    return from_indices(data, random_subset(data, ipc, generator))


# ---- selection in a feature space, per class ---------------------------------------------------
# Scores are per training image, (N_train,), on CPU; what they mean is in ``SCORE_MEANING``.

SCORE_MEANING = {
    "herding": "distance to the class mean in feature space (herding starts from the closest)",
    "kcenter": "distance to the nearest chosen centre (k-center picks the farthest next)",
    "kmeans": "distance to the image's own k-means centre (the nearest image to each centre is chosen)",
    "sensitivity": "k-means sensitivity s(p) (Bachem, Lucic, Krause 2017); sampling probability is s / sum(s)",
    "krr-sensitivity": "ridge leverage score (K (K + lambda I)^-1)_ii in the chosen kernel; sampling probability tau / sum(tau)",
}


@dataclass(frozen=True)
class FeatureOptions(Options):
    """Options of the initializers that select in a feature space (``distill_core.features``)."""

    features: Literal[FEATURES] = option("pixels", "space in which images are compared (see distill_core.features)", what="feature space")
    net: dict[str, Any] | None = option(None, "NetConfig fields of the feature network (empty: the dataset's)", app=False)
    train_steps: int = option(200, "SGD steps of the feature network on real images (features=trained)", min=1)

    def resolved(self, data: Data, ipc: int, iterations: int) -> "FeatureOptions":
        return self if self.net is not None else replace(self, net=asdict(defaults.net_for(data)))


def seed_from(generator: torch.Generator) -> int:
    """A seed for libraries that take one (scikit-learn), drawn from the run's generator."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def class_features(data: Data, generator: torch.Generator, cfg: FeatureOptions) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per class: (indices into x_train on CPU, features (n_c, D) float64)."""
    net = NetConfig(**cfg.net) if cfg.net is not None else None
    f = features(data, cfg.features, generator, net, cfg.train_steps).double()
    return [(idx.cpu(), f[idx.cpu()]) for idx in data.class_indices()]


def sq_dists(f: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared distances (n, k) between rows of ``f`` (n, D) and ``centres`` (k, D), clamped at 0."""
    return ((f * f).sum(1, keepdim=True) - 2 * f @ centres.T + (centres * centres).sum(1)).clamp_min(0)


def assemble(
    data: Data, picks: list[torch.Tensor], scores: torch.Tensor, weights: list[torch.Tensor] | None = None
) -> InitResult:
    """Class-major indices from per-class picks; scores (N_train,) float32."""
    indices = torch.cat(picks)
    w = None if weights is None else torch.cat(weights).float().to(data.x_train.device)
    return from_indices(data, indices, scores=scores.float(), weights=w)


# choose(f) for one class's features f (n_c, D) -> (picks (ipc,) into f, scores (n_c,), coreset weights or None)
Chooser = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def select_per_class(data: Data, ipc: int, generator: torch.Generator, cfg: FeatureOptions, choose: Chooser) -> InitResult:
    """Check ``ipc``, run ``choose`` on each class's features, assemble the result."""
    check_ipc(data, ipc)
    scores = torch.zeros(data.x_train.shape[0], dtype=torch.float64)
    picks, weights = [], []
    for idx, f in class_features(data, generator, cfg):
        chosen, class_scores, w = choose(f)
        scores[idx] = class_scores
        picks.append(idx[chosen])
        weights.append(w)
    return assemble(data, picks, scores, None if weights[0] is None else weights)


def herd(f: torch.Tensor, m: int) -> torch.Tensor:
    """Greedy mean matching: pick ``m`` rows of ``f`` whose running mean stays closest to the mean."""
    mu = f.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(f.shape[0], dtype=torch.bool)
    order = []
    for t in range(m):
        # the mean of the picks plus candidate i is (total + f_i) / (t + 1); compare with mu
        d = ((f - ((t + 1) * mu - total)) ** 2).sum(1)
        d[taken] = float("inf")
        i = int(d.argmin())
        order.append(i)
        taken[i] = True
        total += f[i]
    return torch.tensor(order, dtype=torch.long)


@initializer("herding", FeatureOptions)
def herding(data: Data, ipc: int, generator: torch.Generator, cfg: FeatureOptions, cache_dir: Path) -> InitResult:
    """Herding (Welling 2009; the DC-bench baseline): greedy mean matching per class."""
    return select_per_class(data, ipc, generator, cfg, lambda f: (herd(f, ipc), (f - f.mean(0)).norm(dim=1), None))


def k_center(f: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-center (Sener & Savarese 2018), starting from the row nearest the mean.

    Returns the picks (m,) and each row's distance to its nearest pick (n,)."""
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    picks = [first]
    nearest = sq_dists(f, f[first : first + 1]).squeeze(1)
    for _ in range(m - 1):
        i = int(nearest.argmax())
        picks.append(i)
        nearest = torch.minimum(nearest, sq_dists(f, f[i : i + 1]).squeeze(1))
    return torch.tensor(picks, dtype=torch.long), nearest.sqrt()


@initializer("kcenter", FeatureOptions)
def kcenter(data: Data, ipc: int, generator: torch.Generator, cfg: FeatureOptions, cache_dir: Path) -> InitResult:
    """Greedy k-center per class: each next image is the one farthest from those chosen."""
    return select_per_class(data, ipc, generator, cfg, lambda f: (*k_center(f, ipc), None))


def fit_kmeans(f: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn k-means (k-means++ seeding, Lloyd); returns centres (k, D) and labels (n,)."""
    from sklearn.cluster import KMeans  # scikit-learn's import takes seconds: only where it is used
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k: still usable
        km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(f.numpy())
    return torch.from_numpy(km.cluster_centers_).double(), torch.from_numpy(km.labels_).long()


@initializer("kmeans", FeatureOptions)
def kmeans(data: Data, ipc: int, generator: torch.Generator, cfg: FeatureOptions, cache_dir: Path) -> InitResult:
    """Per class, the real images nearest the ``ipc`` k-means centres (one distinct image per centre)."""

    def choose(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        centres, labels = fit_kmeans(f, ipc, seed_from(generator))
        d2 = sq_dists(f, centres)  # (n, k)
        taken = torch.zeros(f.shape[0], dtype=torch.bool)
        chosen = []
        for j in range(ipc):
            col = d2[:, j].clone()
            col[taken] = float("inf")
            i = int(col.argmin())
            taken[i] = True
            chosen.append(i)
        return torch.tensor(chosen, dtype=torch.long), d2.gather(1, labels.view(-1, 1)).squeeze(1).sqrt(), None

    return select_per_class(data, ipc, generator, cfg, choose)


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


@initializer("sensitivity", SensitivityOptions)
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


@initializer("krr-sensitivity", KRRSensitivityOptions)
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


@dataclass(frozen=True)
class CorrectOptions(Options):
    """The experts of trajectory matching whose predictions decide what is "correct"."""

    experts: int = option(1, "experts whose predictions count (DATM uses 1)", min=1)
    net: dict[str, Any] | None = option(None, "NetConfig fields of the experts (empty: the dataset's network)", app=False)
    strategy: str | None = option(None, "the experts' augmentation (empty: the dataset's DSA)", app=False)
    expert_epochs: int | None = option(None, "epochs each expert trains (empty: the dataset's expert default)", min=1)
    expert_batch: int | None = option(None, "the experts' minibatch (empty: the dataset's expert default)", min=1)
    expert_seed: int | None = option(None, "seed of the experts (empty: the dataset's expert default)")

    def resolved(self, data: Data, ipc: int, iterations: int) -> "CorrectOptions":
        spec = experts.default_spec(data)
        return replace(
            self,
            net=self.net if self.net is not None else asdict(defaults.net_for(data)),
            strategy=self.strategy if self.strategy is not None else defaults.strategy_for(data),
            expert_epochs=self.expert_epochs or spec.epochs,
            expert_batch=self.expert_batch or spec.batch,
            expert_seed=spec.seed if self.expert_seed is None else self.expert_seed,
        )


@initializer("correct", CorrectOptions)
def correct(data: Data, ipc: int, generator: torch.Generator, cfg: CorrectOptions, cache_dir: Path) -> InitResult:
    """Real images that trained experts classify correctly (DATM's initialisation), drawn uniformly
    per class; score of every training image: the experts' mean softmax probability of its label.

    The experts are those of trajectory matching (``distill_core.methods.experts``): the first ``experts``
    (default 1, as DATM) of the cache under ``cache_dir`` for the network ``net`` and augmentation
    ``strategy`` (default: the dataset's) and the default expert spec (override with
    ``expert_epochs``, ``expert_batch``, ``expert_seed``). Missing experts are trained and cached, so
    a following mtt/datm/iadd run with the same network reuses them."""
    spec = replace(
        experts.default_spec(data), count=cfg.experts, epochs=cfg.expert_epochs, batch=cfg.expert_batch, seed=cfg.expert_seed
    )
    trained = experts.load_or_train(data, NetConfig(**cfg.net), cfg.strategy, spec, cache_dir)
    return correct_from_logits(data, ipc, generator, torch.stack(trained.logits))


def correct_from_logits(data: Data, ipc: int, generator: torch.Generator, per_expert: torch.Tensor) -> InitResult:
    """``correct``'s choice given expert logits on ``data.x_train``, (E, N_train, C) or (N_train, C).
    A class with fewer than ipc correctly classified images is topped up with its highest-scoring others."""
    check_ipc(data, ipc)
    per_expert = torch.as_tensor(per_expert).float().cpu()
    per_expert = per_expert.unsqueeze(0) if per_expert.dim() == 2 else per_expert
    y = data.y_train.cpu()
    if per_expert.shape[1:] != (y.shape[0], data.num_classes):
        raise ValueError(f"logits must be (N_train, C) = ({y.shape[0]}, {data.num_classes}), got {tuple(per_expert.shape[1:])}")
    scores = per_expert.softmax(2)[:, torch.arange(y.shape[0]), y].mean(0)  # (N,)
    right = (per_expert.argmax(2) == y.view(1, -1)).all(0)
    picks = []
    for c in range(data.num_classes):
        pool = torch.nonzero(right & (y == c)).flatten()
        chosen = pool[torch.randperm(pool.numel(), generator=generator)[:ipc]]
        if chosen.numel() < ipc:
            rest = torch.nonzero(~right & (y == c)).flatten()
            chosen = torch.cat([chosen, rest[scores[rest].argsort(descending=True)[: ipc - chosen.numel()]]])
        picks.append(chosen)
    return from_indices(data, torch.cat(picks), scores=scores)


def create(
    name: str, data: Data, ipc: int, generator: torch.Generator, cache_dir: Path | str | None = None, **options: Any
) -> InitResult:
    """Run initializer ``name`` with ``options`` (its ``Config``'s fields, automatic ones filled for
    ``data`` and ``ipc``) on ``data``."""
    cfg = options_of(name, options).resolved(data, ipc, 0)
    return INITIALIZERS.get(name)(data, ipc, generator, cfg, Path(cache_dir) if cache_dir is not None else default_cache_dir())
