"""Per-dataset defaults that suit a laptop CPU: the network, the evaluation protocol, the
augmentation. ``config.resolve`` applies them; every one can be overridden in ``RunConfig``."""
from __future__ import annotations

import math

from distill_core.augment import DEFAULT_STRATEGY, NO_FLIP_STRATEGY
from distill_core.data import Data
from distill_core.evaluate import EvalConfig
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
