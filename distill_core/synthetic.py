"""Value types every layer shares: a synthetic set (what a method hands out) and an initial set
(what an initializer chooses). Tensors only; nothing here imports the rest of the engine.

Per-image weights: an initializer that draws a weighted coreset (``sensitivity``, ``krr-sensitivity``)
gives each chosen image the number of real images of its class it stands for (``InitResult.weights``,
Des Raj weights). They stay with the image's place in the set: a method that changes pixels, or swaps
a starting image for another of its class (DATM's ``init_correct``), hands them on unchanged in
``Synthetic.weights``. The option ``syn_weights`` ("uniform" or "coreset") says whether a component
uses them: DM's matched mean (``class_mean_weights``), the evaluation's loss (``loss_weights``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SYN_WEIGHTS = ("uniform", "coreset")
SYN_WEIGHTS_HELP = (
    "uniform: every synthetic image counts alike; coreset: each counts by the coreset weight its initializer "
    "gave it (sensitivity, krr-sensitivity), normalised within its class"
)


@dataclass(frozen=True)
class Synthetic:
    images: torch.Tensor  # (C * ipc, ch, H, W), normalised like the data
    labels: torch.Tensor  # (C * ipc,) int64, or (C * ipc, C) float logits (soft labels)
    lr: float | None = None  # a learned evaluation learning rate, where the method learns one
    weights: torch.Tensor | None = None  # (C * ipc,) the initial set's coreset weights, where it has them


@dataclass(frozen=True)
class InitResult:
    images: torch.Tensor  # (C * ipc, ch, H, W), normalised like the data
    labels: torch.Tensor  # (C * ipc,) int64, class-major
    indices: torch.Tensor | None = None  # (C * ipc,) into data.x_train; None when not real images
    scores: torch.Tensor | None = None  # (N_train,) importance of every candidate
    weights: torch.Tensor | None = None  # (C * ipc,) coreset weights where the construction gives them


def required_weights(weights: torch.Tensor | None, what: str) -> torch.Tensor:
    """``weights``, which ``syn_weights="coreset"`` in ``what`` needs; a set without them (its
    initializer gives none) is refused with what to do instead."""
    if weights is None:
        raise ValueError(
            f"{what} asks for syn_weights=coreset, but this synthetic set has no coreset weights: only the "
            "initializers sensitivity and krr-sensitivity give them; start from one of those, or use syn_weights=uniform"
        )
    return weights


def class_of(labels: torch.Tensor) -> torch.Tensor:
    """Each image's class (n,): hard labels as they are, soft logits (n, C) by their largest entry."""
    return labels.argmax(1) if labels.is_floating_point() else labels


def loss_weights(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image loss weights (n,) float32: ``weights`` (n,) divided by their mean within each class, so
    each class keeps its share of the loss and a class whose weights are all equal gets exactly 1 (the
    unweighted loss, to the bit)."""
    w, cls = weights.detach().double(), class_of(labels.detach()).to(weights.device)
    k = int(cls.max()) + 1
    count = torch.bincount(cls, minlength=k).double()
    mean = torch.zeros(k, dtype=w.dtype, device=w.device).index_add_(0, cls, w) / count.clamp_min(1)
    lo = torch.full((k,), float("inf"), dtype=w.dtype, device=w.device).scatter_reduce(0, cls, w, "amin")
    hi = torch.full((k,), -float("inf"), dtype=w.dtype, device=w.device).scatter_reduce(0, cls, w, "amax")
    out = torch.where((lo == hi)[cls], torch.ones_like(w), w / mean[cls])
    return out.float()


def class_mean_weights(weights: torch.Tensor, classes: int) -> torch.Tensor:
    """(C, ipc) weights of a class-major set's images in their class's mean: ``weights`` (C * ipc,)
    self-normalised within each class (each row sums to 1)."""
    w = weights.detach().double().view(classes, -1)
    return (w / w.sum(1, keepdim=True)).float()
