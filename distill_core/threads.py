"""How many intra-op threads torch gets on CPU.

On a machine that other work already keeps busy, torch's default (one thread per core) makes its
threads wait for each other: on the 2-core development machine under load a digits DC run that
takes 14 s alone took over 400 s with 2 threads, and a sweep estimated at 18.6 h with 2 threads
took about 50 min with 1. ``free_cores`` counts the cores that other work leaves idle: the lesser
of the 1-minute load average and the processes runnable right now. The average alone still counts a
run that has just ended for a minute, so commands run one after another got one thread each (the
digits targets then took twice their time).
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch


def running_others(samples: int = 5, interval: float = 0.02) -> int | None:
    """Other tasks runnable right now (the median of a few reads of /proc/loadavg's running count,
    less this process's reading thread); None where /proc/loadavg does not exist."""
    counts = []
    try:
        for _ in range(samples):
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
            time.sleep(interval)
    except (OSError, ValueError, IndexError):
        return None
    return max(0, int(statistics.median(counts)))


def free_cores() -> int:
    """Cores not busy with other work now (at least 1)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this system
        load = 0.0
    now = running_others()
    busy = load if now is None else min(load, now)
    return max(1, min(cores, cores - int(busy)))


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
