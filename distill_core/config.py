"""Frozen configuration of a run. ``None`` fields mean "the dataset's default" (see ``defaults``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from distill_core.augment import parse_strategy
from distill_core.nets import NetConfig

DEVICES = ("auto", "cpu", "cuda", "mps")
SAMPLINGS = ("uniform", "importance")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol: fresh networks trained on the synthetic set, final test accuracy."""

    nets: int = 5
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256
    augment: bool = True
    arch: NetConfig | None = None  # None: the network the run distils with

    def __post_init__(self) -> None:
        if self.nets < 1:
            raise ValueError(f"evaluation needs at least 1 network, got nets={self.nets}")
        if self.epochs < 1:
            raise ValueError(f"evaluation needs at least 1 epoch, got epochs={self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"evaluation lr must be positive, got {self.lr}")
        if self.batch < 1:
            raise ValueError(f"evaluation batch must be positive, got {self.batch}")


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "digits"
    method: str = "dm"
    init: str = "random"
    ipc: int = 1
    iterations: int | None = None
    seed: int = 0
    device: str = "auto"
    net: NetConfig | None = None
    eval: EvalConfig | None = None
    strategy: str | None = None  # DSA families joined by "_"; "" disables augmentation
    eval_every: int = 0  # 0: evaluate only at the end
    time_budget: float | None = None  # seconds of distillation; the run then evaluates what it has
    sampling: str = "uniform"  # how methods that draw real batches sample them
    options: dict[str, Any] = field(default_factory=dict)  # the method's own settings
    init_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from distill_core.initializers import INITIALIZERS
        from distill_core.methods import METHODS

        if not isinstance(self.ipc, int) or self.ipc < 1:
            raise ValueError(f"ipc (images per class) must be a positive whole number, got {self.ipc!r}")
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be 0 or more, got {self.iterations}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(DEVICES)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (only at the end) or positive, got {self.eval_every}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; known: {', '.join(SAMPLINGS)}")
        if self.strategy:
            parse_strategy(self.strategy)
        method = METHODS.get(self.method)
        INITIALIZERS.get(self.init)
        known = {f.name for f in fields(method.Config)}
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise ValueError(
                f"unknown option {', '.join(unknown)} for method {self.method}; known: {', '.join(sorted(known))}"
            )
        method.Config(**self.options)  # validates values

    def method_config(self) -> Any:
        from distill_core.methods import METHODS

        return METHODS.get(self.method).Config(**self.options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        if d.get("net") is not None:
            d["net"] = NetConfig(**d["net"])
        if d.get("eval") is not None:
            e = dict(d["eval"])
            if e.get("arch") is not None:
                e["arch"] = NetConfig(**e["arch"])
            d["eval"] = EvalConfig(**e)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
