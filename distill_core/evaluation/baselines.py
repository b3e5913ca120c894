"""The random-real baseline, computed once and then read from a small file on disk.

The baseline (``protocol.baseline_random``) trains as many fresh networks as the final evaluation,
and every run of a grid, every seed of a method comparison and every cross-architecture check pays
it again for the same dataset, IPC and protocol. Its numbers depend only on what ``cache_key``
hashes (randomness is explicit: the same seed gives the same subsets and weights on the same device
type and precision), so the first result is kept as ``cache_dir / "baselines" / <key>.json`` and
served from there afterwards. Runs, the CLI's ``eval`` and the bench (through its runs) all come
here. A baseline that is stopped half-way is not written.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from distill_core.data import augment
from distill_core.data.datasets import Data
from distill_core.data.zca import fingerprint, test_fingerprint
from distill_core.evaluation.protocol import Accuracy, EvalConfig, baseline_random, never
from distill_core.nets.networks import NetConfig
from distill_core.nets.precision import autocast, chosen
from distill_core.paths import cache_dir as default_cache_dir

# bump when the protocol's code changes what a baseline measures, so old files are not reused
# (2: each network trains from a seed of its own, protocol.network_seeds)
FORMAT = 2


def cache_key(data: Data, ipc: int, cfg: EvalConfig, net: NetConfig, strategy: str, seed: int, precision: str) -> dict[str, Any]:
    """Everything the baseline's numbers depend on. The network is the one evaluated (``cfg.arch``,
    else ``net``), so a cross-architecture baseline and a run's own agree when the networks do."""
    device = data.x_train.device
    # the whole test set (test_images 0) keeps the key it had before the field existed; random real
    # images carry no weights, so syn_weights changes nothing here
    protocol = {k: v for k, v in asdict(cfg).items() if k not in ("arch", "syn_weights") and not (k == "test_images" and v == 0)}
    return {
        "format": FORMAT,
        "data": fingerprint(data),
        "test": test_fingerprint(data),
        "ipc": ipc,
        "seed": seed,
        "eval": protocol,
        "net": asdict(cfg.arch or net),
        "strategy": strategy if cfg.augment else "",  # without augmentation the strategy is never used
        "draws": augment.DRAWS if cfg.augment and strategy else 1,
        "precision": chosen(precision, device, "evaluation"),
        "device": device.type,
    }


def cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / "baselines" / f"{digest}.json"


def read_cached(path: Path, key: dict[str, Any]) -> Accuracy | None:
    """The accuracy stored at ``path`` for ``key``; None when absent, unreadable or for another key
    (a file from an interrupted write never exists: writes are atomic)."""
    try:
        stored = json.loads(path.read_text())
        if stored["key"] != json.loads(json.dumps(key)):
            return None
        a = stored["accuracy"]
        return Accuracy(float(a["mean"]), float(a["std"]), int(a["n"]), tuple(float(v) for v in a["values"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(path: Path, key: dict[str, Any], acc: Accuracy) -> None:
    """Write to a name of this process and thread, then rename: readers see the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"key": key, "accuracy": acc.to_dict()}, indent=1))
    os.replace(tmp, path)


def random_baseline(
    data: Data,
    ipc: int,
    cfg: EvalConfig,
    net: NetConfig,
    strategy: str,
    seed: int,
    precision: str = "fp32",
    cache_dir: Path | None = None,
    stop: Callable[[], bool] = never,
) -> tuple[Accuracy, bool]:
    """(the random-real baseline of ``baseline_random`` with a generator seeded ``seed``, whether it
    came from the cache). Computed at ``precision`` on ``data``'s device; ``stop`` as in evaluation."""
    key = cache_key(data, ipc, cfg, net, strategy, seed, precision)
    path = cache_file(cache_dir or default_cache_dir(), key)
    cached = read_cached(path, key)
    if cached is not None:
        return cached, True
    with autocast(precision, data.x_train.device, "evaluation"):
        acc = baseline_random(data, ipc, cfg, net, strategy, torch.Generator().manual_seed(seed), stop=stop)
    try:
        write_cached(path, key, acc)
    except OSError:
        pass  # a read-only or full disk costs the next run the time, not this one its result
    return acc, False
