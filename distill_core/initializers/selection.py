"""Selection in a feature space, per class: herding, k-center, k-means; and what every family that
selects in a feature space shares (``FeatureOptions``, ``class_features``, ``select_per_class``,
``sq_dists``, ``fit_kmeans``, ``seed_from``). Scores are per training image, (N_train,), on CPU;
each initializer registers what its scores mean.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from distill_core.data.datasets import Data
from distill_core.evaluation import defaults
from distill_core.initializers.base import check_ipc, from_indices, initializer
from distill_core.initializers.features import FEATURES, features
from distill_core.nets.networks import NetConfig
from distill_core.options import Options, option
from distill_core.synthetic import InitResult


@dataclass(frozen=True)
class FeatureOptions(Options):
    """Options of the initializers that select in a feature space (``initializers.features``)."""

    features: Literal[FEATURES] = option(
        "pixels", "space in which images are compared (see distill_core.initializers.features)", what="feature space"
    )
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


@initializer("herding", FeatureOptions, score_meaning="distance to the class mean in feature space (herding starts from the closest)")
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


@initializer("kcenter", FeatureOptions, score_meaning="distance to the nearest chosen centre (k-center picks the farthest next)")
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


@initializer("kmeans", FeatureOptions, score_meaning="distance to the image's own k-means centre (the nearest image to each centre is chosen)")
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
