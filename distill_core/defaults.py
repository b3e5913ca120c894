"""Per-dataset defaults that suit a laptop CPU; every one can be overridden in ``RunConfig``."""
from __future__ import annotations

import math
from dataclasses import replace

from distill_core.augment import DEFAULT_STRATEGY, NO_FLIP_STRATEGY
from distill_core.config import EvalConfig, RunConfig
from distill_core.data import Data
from distill_core.nets import NetConfig

# datasets whose classes change under a horizontal flip
NO_FLIP = {"digits", "mnist", "svhn"}


def net_for(data: Data) -> NetConfig:
    if data.name == "digits":
        return NetConfig(width=64, depth=2)
    side = min(data.im_size)
    # the field's ConvNet: width 128, depth 3 (28x28 is padded to 32, then 32 -> 16 -> 8 -> 4)
    return NetConfig(width=128 if side >= 28 else 64, depth=3 if side >= 16 else max(1, int(math.log2(side)) - 1))


def eval_for(data: Data) -> EvalConfig:
    if data.name == "digits":
        return EvalConfig(nets=5, epochs=300)
    return EvalConfig(nets=3, epochs=300)


def strategy_for(data: Data) -> str:
    return NO_FLIP_STRATEGY if data.name in NO_FLIP else DEFAULT_STRATEGY


def resolve(cfg: RunConfig, data: Data) -> RunConfig:
    """Fill every ``None`` of ``cfg`` with the default for ``data`` and the method."""
    from distill_core.methods import METHODS

    method = METHODS.get(cfg.method)
    return replace(
        cfg,
        net=cfg.net or net_for(data),
        eval=cfg.eval or eval_for(data),
        strategy=strategy_for(data) if cfg.strategy is None else cfg.strategy,
        iterations=method.default_iterations(data, cfg.ipc) if cfg.iterations is None else cfg.iterations,
    )
