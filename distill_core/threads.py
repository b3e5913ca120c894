"""How many intra-op threads torch gets on CPU.

On a machine that other work already keeps busy, torch's default (one thread per core) makes its
threads wait for each other: on the 2-core development machine under load a digits DC run that
takes 14 s alone took over 400 s with 2 threads, and a sweep estimated at 18.6 h with 2 threads
took about 50 min with 1. ``free_cores`` counts the cores the 1-minute load average leaves idle.
"""
from __future__ import annotations

import os

import torch


def free_cores() -> int:
    """Cores not busy with other work now (at least 1): the core count minus the load average."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this system
        load = 0.0
    return max(1, min(cores, cores - int(load)))


def choose_threads(requested: int | None = None) -> int:
    """The thread count to use: ``requested`` where given; otherwise OMP_NUM_THREADS where set (the
    person chose); otherwise the free cores. Applied with ``torch.set_num_threads`` on CPU."""
    if requested is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        requested = int(env) if env.isdigit() and int(env) > 0 else free_cores()
    if requested < 1:
        raise ValueError(f"--threads must be at least 1, got {requested}")
    torch.set_num_threads(requested)
    return requested
