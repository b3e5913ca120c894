"""What the engine keeps under its cache folder (``paths.cache_dir``), listed and cleared: expert
trajectories (``cache_dir/experts/<dataset>-<net>-<key>/expert_<k>_e<epochs>.safetensors``) and
random-real baselines (``cache_dir/baselines/<key>.json``). Downloaded datasets and other folders
are left alone."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

KINDS = ("experts", "baselines")


@dataclass(frozen=True)
class Entry:
    kind: str  # "experts" or "baselines"
    path: Path
    bytes: int
    what: str


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def describe_experts(folder: Path) -> str:
    files = sorted(folder.glob("expert_*_e*.safetensors"))
    if not files:
        return "an empty expert folder"
    epochs = sorted({int(f.stem.rsplit("_e", 1)[1]) for f in files if f.stem.rsplit("_e", 1)[1].isdigit()})
    spec = ""
    try:
        with safe_open(str(files[0]), "pt") as f:
            s = json.loads(f.metadata().get("spec", "{}"))
        spec = f", SGD lr {s.get('lr')}, batch {s.get('batch')}, seed {s.get('seed')}" if s else ""
    except Exception:  # noqa: BLE001 - a damaged file is still listed (and can be cleared)
        spec = ", unreadable metadata"
    name = folder.name.rsplit("-", 1)[0]  # <dataset>-<net>
    return f"{len(files)} expert trajectories of {name} ({'/'.join(map(str, epochs))} epochs{spec})"


def describe_baseline(path: Path) -> str:
    try:
        d = json.loads(path.read_text())
        k, acc = d["key"], d.get("accuracy", {})
        e, net = k.get("eval", {}), k.get("net", {})
        return (f"random-real baseline: ipc {k.get('ipc')}, {e.get('nets')} x {e.get('epochs')} epochs, "
                f"{net.get('name')} width {net.get('width')} depth {net.get('depth')}, {k.get('precision')} on {k.get('device')}: "
                f"{100 * acc.get('mean', float('nan')):.1f}%")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "random-real baseline (unreadable)"


def entries(cache_dir: Path, kinds: tuple[str, ...] = KINDS) -> list[Entry]:
    """The cached experts (one entry per folder) and baselines (one per file) under ``cache_dir``."""
    out = []
    root = Path(cache_dir)
    if "experts" in kinds and (root / "experts").is_dir():
        for folder in sorted(p for p in (root / "experts").iterdir() if p.is_dir()):
            out.append(Entry("experts", folder, folder_bytes(folder), describe_experts(folder)))
    if "baselines" in kinds and (root / "baselines").is_dir():
        for path in sorted((root / "baselines").glob("*.json")):
            out.append(Entry("baselines", path, path.stat().st_size, describe_baseline(path)))
    return out


def clear(cache_dir: Path, kinds: tuple[str, ...] = KINDS) -> tuple[int, int]:
    """Delete the cached ``kinds`` under ``cache_dir``; (entries deleted, bytes freed)."""
    gone = entries(cache_dir, kinds)
    for e in gone:
        if e.path.is_dir():
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            e.path.unlink(missing_ok=True)
    return len(gone), sum(e.bytes for e in gone)
