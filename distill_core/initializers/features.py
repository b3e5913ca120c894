"""Feature spaces the initializers select in: pixels, or the embedding of a ConvNet.

``pixels``: the normalised images, flattened. ``embedding``: the features (before the linear head)
of a randomly initialised ConvNet drawn from the run's generator; a random ConvNet's embedding is a
cheap, well-known proxy for perceptual similarity (it is also what DM and KRR distil in).
``trained``: the embedding of a ConvNet trained for a couple of hundred steps on the real training set;
the best of the three, cheap on small data (digits: about a second), about a minute on
Fashion-MNIST on two cores.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.data.datasets import Data
from distill_core.evaluation.defaults import net_for
from distill_core.nets.networks import NetConfig, create_net, in_passes

FEATURES = ("pixels", "embedding", "trained")


def feature_net(data: Data, generator: torch.Generator, net: NetConfig | dict[str, Any] | None = None) -> nn.Module:
    """A fresh network for ``data`` (the dataset's default ConvNet unless ``net`` says otherwise)."""
    if isinstance(net, dict):
        net = NetConfig(**net)
    cfg = net or net_for(data)
    return create_net(cfg, data.channels, data.im_size, data.num_classes, generator, data.x_train.device)


@torch.no_grad()
def embed_all(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net.embed`` of every image of ``x`` (N, C, H, W) in passes -> (N, D) on CPU."""
    net.eval()
    return in_passes(lambda b: net.embed(b).cpu(), x)


def train_briefly(
    net: nn.Module, data: Data, generator: torch.Generator, steps: int = 200, batch: int = 256, lr: float = 0.01
) -> nn.Module:
    """``steps`` SGD steps (momentum 0.9, weight decay 5e-4) on random real minibatches, no augmentation."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = data.x_train.shape[0]
    net.train()
    for _ in range(steps):
        idx = torch.randint(n, (min(batch, n),), generator=generator).to(data.x_train.device)
        loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


def features(
    data: Data,
    kind: str = "pixels",
    generator: torch.Generator | None = None,
    net: NetConfig | dict[str, Any] | None = None,
    train_steps: int = 200,
) -> torch.Tensor:
    """Features of every training image, (N_train, D) float32 on CPU, rows in ``data.x_train`` order."""
    if kind not in FEATURES:
        raise ValueError(f"unknown feature space {kind!r}; known: {', '.join(FEATURES)}")
    if kind == "pixels":
        return data.x_train[:].flatten(1).cpu()
    if generator is None:
        raise ValueError(f"feature space {kind!r} draws a network and needs a generator")
    model = feature_net(data, generator, net)
    if kind == "trained":
        if train_steps < 1:
            raise ValueError(f"train_steps must be positive, got {train_steps}")
        train_briefly(model, data, generator, train_steps)
    return embed_all(model, data.x_train)
