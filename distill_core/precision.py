"""Mixed precision: bf16 autocast where the hardware has it, fp32 otherwise or when asked.

Under ``autocast`` the convolutions and matrix products run in bf16 while the leaves that a run
learns (synthetic images, learned step size, soft labels, network weights) and every optimizer's
state stay fp32. "auto" picks bf16 on a CUDA GPU that supports it and on CPUs with native bf16
arithmetic (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo), fp32 elsewhere.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

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
