"""How forward passes run: bf16 autocast where the hardware has it (fp32 otherwise or when asked),
and, when asked, compiled networks.

Under ``autocast`` the convolutions and matrix products run in bf16 while the leaves that a run
learns (synthetic images, learned step size, soft labels, network weights) and every optimizer's
state stay fp32. "auto" picks bf16 on a CUDA GPU that supports it and on CPUs with native bf16
arithmetic (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo), fp32 elsewhere.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "auto")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def chosen(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": what ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which the forward passes run at ``precision`` on ``device``."""
    if chosen(precision, device) == "fp32":
        return contextlib.nullcontext()
    # no cast cache: it would keep serving the bf16 copy of a weight that an optimizer step inside the
    # same context has since changed (a run trains networks inside it; with the cache they never learn)
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


def current_precision(device: torch.device) -> str:
    """The precision this thread's ``autocast`` runs at on ``device``: what a task elsewhere, outside
    this thread's context, must apply itself."""
    return "bf16" if torch.is_autocast_enabled(device.type) else "fp32"


# torch.compile of the networks that first-order work trains or embeds with (DM's embeddings, the
# evaluation's, the baseline's and the experts' networks). Inductor fuses each norm, ReLU and pooling
# into one pass over memory: a ConvNet-128 train step on 256 28x28 images took 0.55 s compiled
# against 0.66 s eager under bf16 (0.71 against 1.13 s in fp32), after a one-off compilation of
# 10-25 s. Off by default: it pays only on long runs, and AOTAutograd has no double backward, so the
# methods that differentiate through gradients (DC/DSA, trajectory matching) stay eager anyway.
_COMPILE: contextvars.ContextVar[bool] = contextvars.ContextVar("distill_compile", default=False)


@contextlib.contextmanager
def compiling(enabled: bool) -> Iterator[None]:
    """Within this context (this thread's), ``compiled`` compiles the networks it is given."""
    token = _COMPILE.set(enabled)
    try:
        yield
    finally:
        _COMPILE.reset(token)


def is_compiling() -> bool:
    """Whether this thread is inside ``compiling(True)``."""
    return _COMPILE.get()


def compiled(net: nn.Module) -> nn.Module:
    """``net``, its feature extractor compiled when the caller is inside ``compiling(True)``.

    Every fresh network of one architecture reuses the same compiled code (the weights are the
    graph's inputs); a machine that cannot compile (no C++ compiler) runs eager, with a warning."""
    features = getattr(net, "features", None)
    if is_compiling() and isinstance(features, nn.Module):
        torch._dynamo.config.suppress_errors = True
        features.compile(dynamic=False)
    return net
