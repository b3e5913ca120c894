"""Networks of one architecture as one: their parameters stacked along a leading dimension K and one
forward pass for all of them (grouped convolutions, a batched matrix product for the heads), so that
a GPU trains K independent networks in the kernel launches of one.

Network k of a stack computes exactly what network k alone computes (to float rounding): its
parameters are ``params[name][k]``, under the names ``named_parameters`` gives the network alone.
Measured on one H200 (a training step of K ConvNet-128s on 28x28 images): grouped convolutions
in NCHW fp32 were the fastest of the forms tried: K = 5, batch 100: 7.6 ms (18.8 TFLOP/s) against
17.9 ms for the five networks one after another; K = 28, batch 256: 89 ms (23 TFLOP/s). bf16 autocast
was no faster (8.3 and 92 ms), channels_last slower (9.7 and 119 ms), and convolutions as one batched
matrix product over the networks (im2col and bmm) slower still (18 and 168 ms).

The ConvNet family with instance, layer or no normalisation stacks; the other architectures (and
batch norm, whose running statistics are state outside the parameters) train one at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.nets.networks import NetConfig

Stacked = dict[str, torch.Tensor]  # name -> (K, *shape of the network's own parameter)


def supports(cfg: NetConfig) -> bool:
    return cfg.name == "convnet" and cfg.norm in ("instance", "layer", "none")


def stack(nets: list[nn.Module]) -> Stacked:
    """The networks' parameters stacked, detached (new leaves)."""
    per_net = [dict(net.named_parameters()) for net in nets]
    return {name: torch.stack([p[name].detach() for p in per_net]) for name in per_net[0]}


def forward(template: nn.Module, params: Stacked, x: torch.Tensor) -> torch.Tensor:
    """Logits (K, B, classes) of the K stacked networks, network k on ``x[k]`` ((K, B, C, H, W)).
    ``template`` is any one network of the architecture: its layers say what to compute, its own
    parameters are not used."""
    k, b = x.shape[:2]
    h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])  # network k's channels side by side
    for i, layer in enumerate(template.features):
        if isinstance(layer, nn.Conv2d):
            w, bias = params[f"features.{i}.weight"], params.get(f"features.{i}.bias")
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if bias is None else bias.reshape(-1),
                         layer.stride, layer.padding, groups=k)
        elif isinstance(layer, nn.GroupNorm):
            h = F.group_norm(h, k * layer.num_groups, params[f"features.{i}.weight"].reshape(-1),
                             params[f"features.{i}.bias"].reshape(-1), layer.eps)
        else:  # activations, pooling: per channel, so per network
            h = layer(h)
    features = h.reshape(b, k, -1).transpose(0, 1)  # (K, B, F): each network's features in its own order
    head_w, head_b = params["classifier.weight"], params["classifier.bias"]
    return torch.baddbmm(head_b.unsqueeze(1).to(features.dtype), features, head_w.transpose(1, 2).to(features.dtype))
