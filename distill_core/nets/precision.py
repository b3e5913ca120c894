"""How forward passes run: bf16 autocast where it was measured faster (fp32 otherwise or when
asked), and, when asked, compiled networks.

Under ``autocast`` the convolutions and matrix products run in bf16 while the leaves that a run
learns (synthetic images, learned step size, soft labels, network weights) and every optimizer's
state stay fp32. "auto" picks, per device type and hot loop, what ``bench --speed`` measured faster
(``AUTO``, a table, never timed at start-up: the same seed gives the same result), bf16 only where
the hardware has it natively (a CUDA GPU that supports it; a CPU with AMX-BF16 or AVX512-BF16 in
/proc/cpuinfo). A run enters ``running_at`` once, for its distillation loop; the loops nested in it
(the experts' epochs, the evaluation networks) take their own row through ``loop_precision``.
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
# the hot loops, named as ``bench --speed`` names them (``studies.speed``)
LOOPS = ("dm step", "dsa outer", "tm step", "expert epoch", "evaluation")

# What "auto" runs each loop at, by device type: the faster of fp32 and bf16 in ``bench --speed``
# (medians of interleaved repeats; bf16 time / fp32 time in the comments).
# - cpu: ``--preset reference`` (MNIST-shaped, ConvNet-128) on a 2-core Zen 4 with AVX512-BF16,
#   torch 2.14.1 (README "Side by side with the reference code"): bf16 is faster in every loop.
#   The 8x8 digits (``--preset app``) gain nothing from bf16, and run fp32 by default (``defaults``).
# - cuda: ``--preset reference`` on one H200, torch 2.11 + CUDA 13 (issue 22's measurement): bf16
#   is slower in every loop, since the loops are bound by launches, not arithmetic; the grouped
#   evaluation step too (5 networks: 8.3 ms bf16, 7.6 ms fp32). fp32 there runs its convolutions in
#   TF32 (cuDNN's default) and its matrix products too (``allow_tf32``).
AUTO: dict[tuple[str, str], str] = {
    ("cpu", "dm step"): "bf16",  # 0.52 (2.63 / 5.01 s)
    ("cpu", "dsa outer"): "bf16",  # 0.57 (6.85 / 12.1 s, one outer-loop matching)
    ("cpu", "tm step"): "bf16",  # 0.51 (22.4 / 44.3 s)
    ("cpu", "expert epoch"): "bf16",  # 0.56 (5.12 / 9.16 s)
    ("cpu", "evaluation"): "bf16",  # 0.61 (17.2 / 28.2 s)
    ("cuda", "dm step"): "fp32",  # 1.06 / 1.00 (MNIST / CIFAR shape)
    ("cuda", "dsa outer"): "fp32",  # 1.17 / 1.13
    ("cuda", "tm step"): "fp32",  # 1.11 / 1.38
    ("cuda", "expert epoch"): "fp32",  # 1.20 / 1.09
    ("cuda", "evaluation"): "fp32",  # 1.11 / 1.17
}


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def chosen(precision: str, device: torch.device, loop: str | None = None) -> str:
    """"fp32" or "bf16": what ``precision`` means on ``device`` for ``loop`` (one of ``LOOPS``; None or
    a loop not measured, e.g. KRR's step: the device's own choice, bf16 where it is native on a CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if not native_bf16(device):
        return "fp32"
    default = "bf16" if device.type == "cpu" else "fp32"
    return AUTO.get((device.type, loop), default) if loop is not None else default


def allow_tf32() -> None:
    """fp32 matrix products on CUDA in TF32 (cuDNN's convolutions already are, by default)."""
    torch.backends.cuda.matmul.allow_tf32 = True


def autocast(precision: str, device: torch.device, loop: str | None = None) -> contextlib.AbstractContextManager:
    """A context in which the forward passes run at ``precision`` (as ``loop`` takes it) on ``device``;
    an fp32 context inside a bf16 one turns autocast off."""
    if device.type == "cuda":
        allow_tf32()
    if chosen(precision, device, loop) == "fp32":
        return torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type) else contextlib.nullcontext()
    # no cast cache: it would keep serving the bf16 copy of a weight that an optimizer step inside the
    # same context has since changed (a run trains networks inside it; with the cache they never learn)
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


# the precision a run asked for ("fp32", "bf16" or "auto"), for the loops nested in its own
_ASKED: contextvars.ContextVar[str | None] = contextvars.ContextVar("distill_precision", default=None)


@contextlib.contextmanager
def running_at(precision: str, device: torch.device, loop: str | None) -> Iterator[None]:
    """A run's context: its forward passes at ``precision`` as ``loop`` (its distillation loop) takes
    it, and ``precision`` kept for the loops nested in it (``loop_precision``)."""
    token = _ASKED.set(precision)
    try:
        with autocast(precision, device, loop):
            yield
    finally:
        _ASKED.reset(token)


def loop_precision(loop: str, device: torch.device) -> str:
    """"fp32" or "bf16": what ``loop`` runs at here: the enclosing run's precision (``running_at``) as
    ``loop`` takes it, else whatever this thread's autocast does."""
    asked = _ASKED.get()
    return current_precision(device) if asked is None else chosen(asked, device, loop)


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
