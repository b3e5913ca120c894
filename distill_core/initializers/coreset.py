"""The coreset experiment: how well a small weighted sample of a class stands in for the whole class.

Sensitivity sampling (``initializers.sensitivity``) promises a *coreset*: m images drawn with
probability p_i proportional to their sensitivity and weighted 1 / (m p_i) have a weighted k-means
cost within a factor (1 +- eps) of the full class's cost, *for every set Q of k centres at once*,
with eps shrinking like 1 / sqrt(m) (Bachem, Lucic, Krause 2017). Uniform sampling (weights n / m)
promises no such thing: a few far-away images carry much of the cost, and a uniform sample misses
them. This module measures both.

k-means (``init="sensitivity"``). Per class, in the initializer's feature space (default pixels):

- the sensitivity scores s come from the initializer's own code (``sensitivity_scores``: k-means++
  centres B drawn from the seed, k = the ``k`` option, default ``sensitivity_k``: 10 at IPC 1);
- the evaluation centres Q are ``q_sets`` sets of k centres drawn with a *separate* seed: Q_1, the
  Lloyd k-means solution (the centres one cares about), and Q_2..Q_R, k-means++ seedings (other,
  worse solutions). The guarantee is for every Q; R sets sample that "every";
- cost(Q) = sum_i min_{q in Q} ||x_i - q||^2 over the class; a sample's cost is sum_j w_j min_q ||x_j - q||^2.

With several classes, costs are summed over the classes (one Q_r per class, the same r), so the
error is that of the whole dataset's per-class k-means cost. Per draw, relative error =
|cost_sample(Q) - cost_full(Q)| / cost_full(Q); ``worst`` is its maximum over the R sets of Q (the
coreset's eps), ``typical`` its mean over them. For the i.i.d. schemes the relative standard error of
the sample's cost is also known exactly (``iid_relative_std``, no draws): ``*_exact_rse``, worst over Q.

Kernel ridge regression (``init="krr-sensitivity"``). Ridge leverage-score sampling promises a
spectral approximation: with features phi (K = phi phi^T, the initializer's kernel and lambda,
``leverage.ridge_problem``) and the sample's diagonal weights W,

    (1 - eps) (phi^T phi + lambda I)  <=  phi^T W phi + lambda I  <=  (1 + eps) (phi^T phi + lambda I),

i.e. for *every* function f = phi beta of the kernel's space at once,
|sum_j w_j f(x_j)^2 - sum_i f(x_i)^2| <= eps (sum_i f(x_i)^2 + lambda ||f||^2): the data term of the
kernel ridge objective is kept to a relative error eps (Alaoui & Mahoney 2015; Cohen, Musco, Musco
2017). The measured quantity, ``worst``, is the smallest such eps,
||(phi^T phi + lambda I)^-1/2 (phi^T W phi - phi^T phi) (phi^T phi + lambda I)^-1/2||_2. With several
classes the kernel is block-diagonal (one block per class), so eps is the largest over the classes.
``typical`` reads the same relative error at fixed functions: the 10 leading principal functions of
each class's kernel, mean over them and the classes. eps is small only once m is well above the
effective degrees of freedom d_eff = sum of the leverage scores (reported): below it, a sample cannot
span the functions the full data pins down.

Three schemes, each over ``draws`` draws per m (m images per class):

- ``importance``: m i.i.d. draws with p = s / sum(s), weights 1 / (m p) (the theorem's sampling);
- ``uniform``: m i.i.d. uniform draws, weights n / m;
- ``distinct``: the initializer's own draw, m distinct images by successive sampling with Des Raj
  weights (``sensitivity.distinct_importance_sample``); only for m <= n (null beyond).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distill_core.data.datasets import Data
from distill_core.initializers import options_of
from distill_core.initializers.leverage import ridge_problem
from distill_core.initializers.selection import class_features, fit_kmeans, seed_from, sq_dists
from distill_core.initializers.sensitivity import distinct_importance_sample, importance_sample, sensitivity_scores

DEFAULT_MS = (5, 10, 20, 50, 100, 200)
SCHEMES = ("importance", "uniform", "distinct")
COSTS = ("sensitivity", "krr-sensitivity")  # the initializers whose promise this measures
QUANTITY = {
    "sensitivity": "relative error |cost_sample(Q) - cost_full(Q)| / cost_full(Q) of the k-means cost, "
    "worst over the evaluation centre sets Q (typical: mean over them)",
    "krr-sensitivity": "spectral relative error eps of the ridge-regularised Gram matrix: the largest "
    "|sum_j w_j f(x_j)^2 - sum_i f(x_i)^2| / (sum_i f(x_i)^2 + lambda ||f||^2) over all functions f of the kernel "
    "(typical: mean of that error at the 10 leading principal functions of each class's kernel)",
}
# draw(scores (n,), m, generator) -> (rows (m,), weights (m,)); None where the scheme cannot draw m
Draw = Callable[[torch.Tensor, int, torch.Generator], "tuple[torch.Tensor, torch.Tensor] | None"]


def uniform_sample(s: torch.Tensor, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` i.i.d. uniform draws of the n rows, weights n / m (``s`` only gives n)."""
    n = s.shape[0]
    return torch.randint(n, (m,), generator=generator), torch.full((m,), n / m, dtype=torch.float64)


def distinct_sample(s: torch.Tensor, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    return distinct_importance_sample(s, m, generator) if m <= s.shape[0] else None


DRAWS: dict[str, Draw] = {"importance": importance_sample, "uniform": uniform_sample, "distinct": distinct_sample}


# ---- k-means -----------------------------------------------------------------------------------

def evaluation_centres(f: torch.Tensor, k: int, q_sets: int, seed: int) -> list[torch.Tensor]:
    """Q_1 = the Lloyd k-means solution, Q_2..Q_R = k-means++ seedings; each (k, D), k capped at n."""
    from sklearn.cluster import kmeans_plusplus  # scikit-learn's import takes seconds: only where it is used

    k = max(1, min(k, f.shape[0]))
    qs = [fit_kmeans(f, k, seed)[0]]
    for r in range(1, q_sets):
        qs.append(torch.from_numpy(kmeans_plusplus(f.numpy(), n_clusters=k, random_state=seed + r)[0]).double())
    return qs


def point_costs(f: torch.Tensor, qs: list[torch.Tensor]) -> torch.Tensor:
    """min_{q in Q_r} ||f_i - q||^2 for every row i and centre set r: (n, R) float64."""
    return torch.stack([sq_dists(f, q).min(1).values for q in qs], 1)


def kmeans_class(f: torch.Tensor, k: int, lloyd: bool, q_sets: int, seeds: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One class: sensitivity scores (n,) for centres B from seeds[0], and point costs (n, R) against
    evaluation centres from seeds[1]."""
    return sensitivity_scores(f, k, seeds[0], lloyd), point_costs(f, evaluation_centres(f, k, q_sets, seeds[1]))


def iid_relative_std(costs: list[torch.Tensor], probs: list[torch.Tensor], m: int) -> float:
    """Exact relative standard error of an i.i.d. weighted sample's cost, worst over the Q sets:
    per class Var = (sum_i c_i^2 / p_i - C^2) / m (Hansen-Hurwitz), summed over the classes (drawn
    independently), over the summed full cost. ``costs`` per class (n, R), ``probs`` per class (n,).
    The ratio of two schemes' values does not depend on m: sampling by sensitivity beats uniform by
    the same factor at every m, and draws only blur that factor with noise."""
    var = sum(((c**2) / p[:, None]).sum(0) - c.sum(0) ** 2 for c, p in zip(costs, probs, strict=True)) / m
    full = sum(c.sum(0) for c in costs)
    return float((var.clamp_min(0).sqrt() / full).max())


def kmeans_errors(estimate: torch.Tensor, full: torch.Tensor) -> tuple[float, float]:
    """(worst, mean) over the Q sets of |estimate - full| / full, both (R,)."""
    rel = (estimate - full).abs() / full.clamp_min(torch.finfo(full.dtype).tiny)
    return float(rel.max()), float(rel.mean())


# ---- kernel ridge regression ---------------------------------------------------------------------

def whitened_features(lam: float, kernel: torch.Tensor | None = None, phi: torch.Tensor | None = None) -> torch.Tensor:
    """psi (n, D') with psi^T psi = M^-1/2 phi^T phi M^-1/2, M = phi^T phi + lam I, from the kernel (n, n)
    (phi = U Lambda^1/2 from K = U Lambda U^T) or from features phi (n, D); its squared row norms are the
    ridge leverage scores (``leverage.ridge_leverage``), and psi^T (W - I) psi is the spectral error."""
    if phi is not None and phi.shape[1] >= phi.shape[0]:
        kernel, phi = phi @ phi.T, None  # the n x n side is the smaller one (as ridge_leverage)
    if phi is not None:
        evals, evecs = torch.linalg.eigh(phi.T @ phi + lam * torch.eye(phi.shape[1], dtype=phi.dtype))
        return phi @ (evecs * evals.clamp_min(lam).rsqrt()) @ evecs.T
    assert kernel is not None
    evals, evecs = torch.linalg.eigh(kernel)
    evals = evals.clamp_min(0)
    return evecs * (evals / (evals + lam)).sqrt()


def spectral_error(psi: torch.Tensor, gram: torch.Tensor, rows: torch.Tensor, w: torch.Tensor) -> float:
    """||psi_S^T diag(w) psi_S - psi^T psi||_2 for the sampled ``rows`` (m,) with weights ``w`` (m,);
    ``gram`` = psi^T psi (D', D'). Large D' by Lanczos on the operator (never forming the difference)."""
    ps = psi[rows]
    if gram.shape[0] <= 400:
        return float(torch.linalg.eigvalsh(ps.T @ (w[:, None] * ps) - gram).abs().max())
    from scipy.sparse.linalg import LinearOperator, eigsh

    a, wn, g = ps.numpy(), w.numpy(), gram.numpy()
    op = LinearOperator(g.shape, matvec=lambda v: a.T @ (wn * (a @ v)) - g @ v, dtype=np.float64)
    return float(abs(eigsh(op, k=1, which="LM", return_eigenvectors=False)[0]))


PRINCIPAL = 10  # leading principal functions of a class's kernel at which the typical error is read


def principal_projections(psi: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """psi v_r (n, r) and v_r^T gram v_r (r,) for the ``PRINCIPAL`` leading eigenvectors v_r of gram:
    the kernel's leading principal functions f_r in whitened coordinates (sum_i f_r(x_i)^2 + lambda
    ||f_r||^2 = 1)."""
    evals, evecs = torch.linalg.eigh(gram)
    top = evecs[:, -PRINCIPAL:]
    return psi @ top, evals[-PRINCIPAL:]


def principal_error(proj: torch.Tensor, evals: torch.Tensor, rows: torch.Tensor, w: torch.Tensor) -> float:
    """Mean over the leading principal functions f_r of |sum_j w_j f_r(x_j)^2 - sum_i f_r(x_i)^2| /
    (sum_i f_r(x_i)^2 + lambda ||f_r||^2): the error of the data term at fixed functions."""
    return float(((w[:, None] * proj[rows] ** 2).sum(0) - evals).abs().mean())


# ---- the experiment ------------------------------------------------------------------------------

def class_list(data: Data, cls: int | str | None) -> list[int]:
    """All classes (None), or the one named or numbered ``cls``."""
    if cls is None:
        return list(range(data.num_classes))
    if isinstance(cls, str) and not cls.lstrip("-").isdigit():
        if cls not in data.class_names:
            raise ValueError(f"unknown class {cls!r}; known: {', '.join(data.class_names)}")
        return [data.class_names.index(cls)]
    c = int(cls)
    if not 0 <= c < data.num_classes:
        raise ValueError(f"class {c} is out of range; {data.name} has classes 0 to {data.num_classes - 1}")
    return [c]


def mean_std(xs: list[float]) -> dict[str, float] | None:
    """Mean and (population) std over draws; None where there was no draw."""
    if not xs:
        return None
    a = np.asarray(xs)
    return {"mean": float(a.mean()), "std": float(a.std())}


def coreset_experiment(
    data: Data,
    init: str = "sensitivity",
    cls: int | str | None = None,
    ms: tuple[int, ...] = DEFAULT_MS,
    draws: int = 20,
    seed: int = 0,
    q_sets: int = 5,
    **options: Any,
) -> dict[str, Any]:
    """Relative errors of weighted samples of m images per class (module docstring) for each m of
    ``ms``: mean and std over ``draws`` draws per scheme. ``options``: the initializer's options
    (features, k, lloyd; kernel, ridge, ...). Returns a JSON-ready dict: the settings and ``rows``."""
    if init not in COSTS:
        raise ValueError(f"the coreset experiment measures {', '.join(COSTS)}; got {init!r}")
    if draws < 1 or not ms or min(ms) < 1:
        raise ValueError(f"draws and every m must be positive, got draws={draws}, ms={list(ms)}")
    cfg = options_of(init, options).resolved(data, 1, 0)
    classes = class_list(data, cls)
    g = torch.Generator().manual_seed(seed)
    feats = class_features(data, g, cfg)
    per_class = []  # (scores (n,), costs (n, R)) or (scores (n,), psi, gram, principal projections, their norms)
    for c in classes:
        f = feats[c][1]
        if init == "sensitivity":
            per_class.append(kmeans_class(f, cfg.k, cfg.lloyd, q_sets, (seed_from(g), seed + 1)))
        else:
            psi = whitened_features(*ridge_problem(f, cfg, g))
            gram = psi.T @ psi
            per_class.append(((psi * psi).sum(1).clamp_min(1e-12), psi, gram, *principal_projections(psi, gram)))
    g_draw = torch.Generator().manual_seed(seed + 2)  # draws independent of the scores' and Q's seeds
    rows = []
    for m in ms:
        errors: dict[str, dict[str, list[float]]] = {s: {"worst": [], "typical": []} for s in SCHEMES}
        for _ in range(draws):
            for scheme, draw in DRAWS.items():
                samples = [draw(pc[0], m, g_draw) for pc in per_class]
                if any(x is None for x in samples):
                    continue
                if init == "sensitivity":
                    estimate = sum((w[:, None] * pc[1][rows_]).sum(0) for (rows_, w), pc in zip(samples, per_class, strict=True))
                    worst, typical = kmeans_errors(estimate, sum(pc[1].sum(0) for pc in per_class))
                    errors[scheme]["typical"].append(typical)
                else:
                    pairs = list(zip(samples, per_class, strict=True))
                    worst = max(spectral_error(pc[1], pc[2], r, w) for (r, w), pc in pairs)
                    errors[scheme]["typical"].append(float(np.mean([principal_error(pc[3], pc[4], r, w) for (r, w), pc in pairs])))
                errors[scheme]["worst"].append(worst)
        row: dict[str, Any] = {"m": m}
        for scheme in SCHEMES:
            row[scheme] = mean_std(errors[scheme]["worst"])
            row[f"{scheme}_typical"] = mean_std(errors[scheme]["typical"])
        if init == "sensitivity":  # exact, no draws: the i.i.d. schemes' relative standard error
            costs = [pc[1] for pc in per_class]
            row["importance_exact_rse"] = iid_relative_std(costs, [pc[0] / pc[0].sum() for pc in per_class], m)
            row["uniform_exact_rse"] = iid_relative_std(costs, [torch.full_like(pc[0], 1 / pc[0].shape[0]) for pc in per_class], m)
        rows.append(row)
    resolved = {k: v for k, v in asdict(cfg).items() if k != "net" or cfg.features != "pixels"}
    return {
        "dataset": data.name,
        "init": init,
        "k": getattr(cfg, "k", None),
        "features": cfg.features,
        "classes": [data.class_names[c] for c in classes],
        "class_sizes": [int(pc[0].shape[0]) for pc in per_class],
        "draws": draws,
        "seed": seed,
        "q_sets": q_sets if init == "sensitivity" else None,
        "effective_dof": [float(pc[0].sum()) for pc in per_class] if init == "krr-sensitivity" else None,
        "options": resolved,
        "quantity": QUANTITY[init],
        "rows": rows,
    }


def fmt(cell: dict[str, float] | None) -> str:
    return "n/a" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def markdown_table(result: dict[str, Any]) -> str:
    """The rows as a markdown table (m, each scheme's mean ± std), with a line of settings above."""
    classes = result["classes"]
    where = "all classes" if len(classes) > 1 else f"class {classes[0]}"
    k = f", k {result['k']}" if result["k"] is not None else ""
    lines = [
        f"Coreset error, {result['init']} on {result['dataset']} ({where}, features {result['features']}{k}, "
        f"{result['draws']} draws, seed {result['seed']}): {result['quantity']}."
        + (f" Effective degrees of freedom per class: {np.mean(result['effective_dof']):.1f} on average." if result["effective_dof"] else ""),
        "",
        "| m per class | importance (i.i.d., 1/(m p)) | uniform (i.i.d., n/m) | uniform / importance "
        "| distinct (initializer's draw, Des Raj) | importance, typical | uniform, typical | exact RSE importance / uniform |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        imp, uni = row["importance"], row["uniform"]
        ratio = f"{uni['mean'] / imp['mean']:.2f}" if imp["mean"] > 0 else "n/a"
        exact = (
            f"{row['importance_exact_rse']:.3f} / {row['uniform_exact_rse']:.3f}" if row.get("importance_exact_rse") is not None else "n/a"
        )
        lines.append(
            f"| {row['m']} | {fmt(imp)} | {fmt(uni)} | {ratio} | {fmt(row['distinct'])} "
            f"| {fmt(row['importance_typical'])} | {fmt(row['uniform_typical'])} | {exact} |"
        )
    if len(result["rows"]) > 1:
        lines += ["", f"Slope of log(mean error) against log(m): importance {sqrt_m_slope(result):.2f}, "
                  f"uniform {sqrt_m_slope(result, 'uniform'):.2f} (-0.5: error falling like 1 / sqrt(m))."]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    """``out``/coreset.json and ``out``/coreset.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "coreset.json").write_text(json.dumps(result, indent=2))
    (out / "coreset.md").write_text(markdown_table(result))


def sqrt_m_slope(result: dict[str, Any], scheme: str = "importance") -> float:
    """Least-squares slope of log(mean error) against log m: about -0.5 where the error falls like 1 / sqrt(m)."""
    pts = [(math.log(r["m"]), math.log(r[scheme]["mean"])) for r in result["rows"] if r[scheme] and r[scheme]["mean"] > 0]
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])
