"""Networks: the ConvNet family (fields, not names) and a few others for cross-architecture tests.

Every network exposes ``embed(x)`` (features before the linear head) and ``forward(x)``, and works
with ``torch.func.functional_call``. Weights are drawn from an explicit generator without touching
the global RNG.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from distill_core.registry import Registry

NORMS = ("instance", "batch", "layer", "none")
# ReLUs work in place: nothing before them needs its output for the backward (convolutions, linear
# layers and norms keep their inputs), and a separate output tensor cost 10x the ReLU's own time on CPU
ACTS = {"relu": lambda: nn.ReLU(inplace=True), "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True), "gelu": nn.GELU,
        "sigmoid": nn.Sigmoid}
POOLS = ("avg", "max", "none")
# the largest network a run may ask for (the CLI, the app and its URL): a typo such as --width 100000
# would otherwise allocate until the machine runs out of memory
MAX_WIDTH, MAX_DEPTH = 512, 6


@dataclass(frozen=True)
class NetConfig:
    name: str = "convnet"
    width: int = 64
    depth: int = 3
    norm: str = "instance"
    act: str = "relu"
    pool: str = "avg"

    def __post_init__(self) -> None:
        NETS.get(self.name)
        if not 1 <= self.width <= MAX_WIDTH:
            raise ValueError(f"network width must be 1 to {MAX_WIDTH}, got {self.width}")
        if not 1 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"network depth must be 1 to {MAX_DEPTH}, got {self.depth}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known: {', '.join(NORMS)}")
        if self.act not in ACTS:
            raise ValueError(f"unknown activation {self.act!r}; known: {', '.join(ACTS)}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pooling {self.pool!r}; known: {', '.join(POOLS)}")


NETS: Registry[Callable[..., nn.Module]] = Registry("network")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def pool_layer(kind: str) -> nn.Module:
    return {"avg": nn.AvgPool2d(2), "max": nn.MaxPool2d(2)}.get(kind, nn.Identity())


class Classifier(nn.Module):
    """A feature extractor followed by a linear head."""

    def __init__(self, features: nn.Module, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


PASS_PIXELS = 256 * 32 * 32  # pixels (per channel) of a CPU pass: 256 images up to 32x32, fewer of larger ones


def rows_per_pass(device: torch.device, side: tuple[int, ...] = (32, 32)) -> int:
    """Images per forward pass without a graph. On a CPU the activations of a few hundred 28x28
    images stay in the caches: a 2560-image ConvNet-128 pass took twice as long per image as ten
    passes of 256 (memory-bound norms, pooling and ReLUs); images larger than 32x32 go fewer at a
    time for the same pixels (256 128x128 images held 2 GB per convolution output: a DM step on a
    user's 128x128 set peaked at 3.3 GB). A GPU wants large batches."""
    if device.type != "cpu":
        return 4096
    return max(1, min(256, PASS_PIXELS // max(1, side[-2] * side[-1])))


def in_passes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``fn`` applied to ``x`` (n, ...) in slices of ``rows`` images, results concatenated. ``x`` is
    anything sliced like a tensor: a dataset's ``Images`` are read (normalised) a slice at a time."""
    rows = rows or rows_per_pass(x.device, tuple(x.shape[2:]))
    if x.shape[0] <= rows:
        return fn(x[:])
    return torch.cat([fn(x[s : s + rows]) for s in range(0, x.shape[0], rows)])


def feature_dim(features: nn.Module, channels: int, im_size: tuple[int, int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, channels, *im_size)).flatten(1).shape[1]


@NETS.register("convnet")
def convnet(cfg: NetConfig, channels: int, im_size: tuple[int, int], num_classes: int) -> nn.Module:
    """depth x [Conv3x3(width) -> norm -> act -> pool]; 28x28 inputs padded to 32x32 as in the DC code."""
    layers: list[nn.Module] = []
    size = list(im_size)
    c_in = channels
    for d in range(cfg.depth):
        pad = 3 if d == 0 and im_size == (28, 28) else 1
        layers += [nn.Conv2d(c_in, cfg.width, 3, padding=pad), norm_layer(cfg.norm, cfg.width), ACTS[cfg.act]()]
        size = [s + 2 * pad - 2 for s in size]
        if cfg.pool != "none" and min(size) >= 2:
            layers.append(pool_layer(cfg.pool))
            size = [s // 2 for s in size]
        c_in = cfg.width
    features = nn.Sequential(*layers)
    return Classifier(features, feature_dim(features, channels, im_size), num_classes)


@NETS.register("mlp")
def mlp(cfg: NetConfig, channels: int, im_size: tuple[int, int], num_classes: int) -> nn.Module:
    hidden = max(cfg.width, 128)
    layers: list[nn.Module] = [nn.Flatten()]
    d_in = channels * im_size[0] * im_size[1]
    for _ in range(2):
        layers += [nn.Linear(d_in, hidden), ACTS[cfg.act]()]
        d_in = hidden
    return Classifier(nn.Sequential(*layers), hidden, num_classes)


@NETS.register("lenet")
def lenet(cfg: NetConfig, channels: int, im_size: tuple[int, int], num_classes: int) -> nn.Module:
    act = ACTS[cfg.act]
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), act(), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    dim = feature_dim(features, channels, im_size)
    head = nn.Sequential(nn.Linear(dim, 120), act(), nn.Linear(120, 84), act())
    return Classifier(nn.Sequential(features, head), 84, num_classes)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = norm_layer(norm, c_out)
        self.act = act()
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.n1(self.conv1(x)))
        return self.act(self.n2(self.conv2(out)) + self.shortcut(x))


@NETS.register("resnet")
def resnet(cfg: NetConfig, channels: int, im_size: tuple[int, int], num_classes: int) -> nn.Module:
    """A small ResNet: stem, then ``depth`` stages of one basic block, doubling width and halving size."""
    act = ACTS[cfg.act]
    layers: list[nn.Module] = [nn.Conv2d(channels, cfg.width, 3, 1, 1, bias=False), norm_layer(cfg.norm, cfg.width), act()]
    c = cfg.width
    for s in range(cfg.depth):
        c_out = cfg.width * 2**s
        layers.append(BasicBlock(c, c_out, 1 if s == 0 else 2, cfg.norm, act))
        c = c_out
    layers += [nn.AdaptiveAvgPool2d(1)]
    return Classifier(nn.Sequential(*layers), c, num_classes)


def create_net(
    cfg: NetConfig,
    channels: int,
    im_size: tuple[int, int],
    num_classes: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A freshly initialised network; its weights depend only on ``generator``'s state."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = NETS.get(cfg.name)(cfg, channels, im_size, num_classes)
    return net.to(device)
