"""Per-dataset defaults that suit a laptop CPU: the network, the evaluation protocol, the
augmentation. ``config.resolve`` applies them; every one can be overridden in ``RunConfig``."""
from __future__ import annotations

import math
from dataclasses import replace

from distill_core.data.augment import DEFAULT_STRATEGY, NO_FLIP_STRATEGY
from distill_core.data.datasets import Data
from distill_core.evaluation.protocol import EvalConfig
from distill_core.nets.networks import NetConfig

# datasets augmented without DSA's flip family. The reference's default strategy for DM and DSA,
# color_crop_cutout_flip_scale_rotate, keeps flip on every set, MNIST and SVHN included, and so do
# the per-dataset defaults here; dropping it on the 8x8 digits is this project's own choice: on glyphs
# of 8x8 pixels a mirrored 2, 3, 4, 5, 7 or 9 is no digit, and a network that sees them cannot tell
# them from the few pixels left
NO_FLIP = {"digits"}


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


# the accuracy checks during a run off digits: one network for at most this many epochs, scored on
# this many test images
CHECK_EPOCHS = 40
CHECK_TEST_IMAGES = 2000


def check_for(dataset: str, protocol: EvalConfig) -> EvalConfig:
    """The protocol of the accuracy checks during a run, from the final one. On digits, one network of
    the final protocol (a few seconds). Elsewhere a quick check: one network trained for at most
    ``CHECK_EPOCHS`` epochs and scored on ``CHECK_TEST_IMAGES`` test images (standard error about one
    point), beside a random baseline under the same quick protocol. On Fashion-MNIST at IPC 10 in an
    app worker (one core of two) each takes about 20 s, against about two minutes for one network of
    the final protocol, so a run's first accuracy comes within a minute of Start instead of after a
    four-minute baseline."""
    if dataset == "digits":
        return replace(protocol, nets=1)
    return replace(protocol, nets=1, epochs=min(protocol.epochs, CHECK_EPOCHS), test_images=CHECK_TEST_IMAGES)


def precision_for(dataset: str) -> str:
    """fp32 on the embedded digits, whose networks are too small for bf16 to pay (their train steps
    ran 1.1x slower); elsewhere "auto", bf16 where the hardware has it: on a 2-core Zen 4 CPU
    (AVX512-BF16) it halved the time of every ConvNet-128 loop, and Fashion-MNIST DM at IPC 10 ended
    at 80.8 ± 0.2% against 81.0 ± 0.2% in fp32 (README, "Fashion-MNIST on a CPU")."""
    return "fp32" if dataset == "digits" else "auto"


def strategy_for(data: Data) -> str:
    return NO_FLIP_STRATEGY if data.name in NO_FLIP else DEFAULT_STRATEGY
