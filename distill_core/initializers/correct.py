"""DATM's initialisation: real images that trained experts classify correctly."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distill_core.data.datasets import Data
from distill_core.evaluation import defaults
from distill_core.initializers.base import check_ipc, from_indices, initializer
from distill_core.methods import experts
from distill_core.nets.networks import NetConfig
from distill_core.options import Options, option
from distill_core.synthetic import InitResult


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
