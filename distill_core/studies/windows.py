"""``python -m distill_core windows``: difficulty alignment, measured.

DATM's claim (Guo et al., ICLR 2024): early expert epochs teach easy patterns and suit small synthetic
sets, late epochs teach hard ones and suit large sets. This runs DATM at each IPC with each of K fixed
matching windows (start epochs drawn from [lo, hi), no growth), the same experts and the same steps,
and reports the final accuracy beside the random-real baseline. The windows cut the experts' usable
start epochs [0, E - M) (E the experts' epochs, M the target's distance) into K equal consecutive
parts: K = 2 gives early and late, K = 3 early, middle and late. Writes ``windows.json``::

    {dataset, ipcs, expert_epochs, expert_target, windows: [[lo, hi], ...], labels, seeds, machine,
     rows: [{ipc, window: [lo, hi], label, synthetic: {mean, std, n}, random: {...}, seconds}],
     winner: {ipc: label}, claim: str}

and ``windows.md``. The runs are ordinary runs (``sweep.run_one``): given a store, they land where the
app reads them, labelled with their window.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from distill_core.config import RunConfig, resolve
from distill_core.data.datasets import Data
from distill_core.runs.store import Store
from distill_core.studies.bench import machine
from distill_core.studies.sweep import is_stat, parse, pooled, row_of, run_one, save

LABELS = {2: ("early", "late"), 3: ("early", "middle", "late")}


def cut(epochs: int, target: int, k: int) -> list[tuple[int, int]]:
    """K equal consecutive windows [lo, hi) of the usable start epochs [0, epochs - target)."""
    usable = epochs - target
    if k < 2:
        raise ValueError(f"compare at least 2 windows, got {k}")
    if usable < k:
        raise ValueError(f"experts of {epochs} epochs with M={target} leave {usable} start epochs, fewer than {k} windows")
    edges = [round(i * usable / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def labels(k: int) -> tuple[str, ...]:
    return LABELS.get(k) or tuple(f"window {i + 1}" for i in range(k))


def expert_epochs(base: RunConfig, data: Data, ipcs: list[int]) -> tuple[int, int]:
    """(E, M): the experts every run shares, long enough for the largest IPC's default window (or as
    ``base.options`` sets them)."""
    spans = [resolve(replace(base, method="datm", ipc=ipc), data).options for ipc in ipcs]
    return max(o["expert_train_epochs"] for o in spans), spans[0]["expert_epochs"]


def plan(base: RunConfig, data: Data, ipcs: list[int], k: int, seeds: list[int]) -> tuple[list[tuple[RunConfig, int]], dict[str, Any]]:
    """The resolved runs, each with the index of its window, and the settings they share; ``base.options``
    (DATM's) apply to every run, the window's own fields excepted."""
    epochs, target = expert_epochs(base, data, ipcs)
    windows = cut(epochs, target, k)
    runs = []
    for ipc in ipcs:
        for w, (lo, hi) in enumerate(windows):
            options = {**base.options, "min_start_epoch": lo, "max_start_epoch": hi, "initial_max_start_epoch": hi,
                       "expert_train_epochs": epochs}
            for seed in seeds:
                runs.append((resolve(replace(base, method="datm", ipc=ipc, seed=seed, options=options), data), w))
    shared = {"expert_epochs": epochs, "expert_target": target, "windows": [list(w) for w in windows], "labels": list(labels(k))}
    return runs, shared


def winners(rows: list[dict[str, Any]]) -> dict[str, str]:
    """{str(ipc): the label of the window with the highest mean accuracy} (string keys, as in JSON)."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if "synthetic" in r and (r["ipc"] not in best or r["synthetic"]["mean"] > best[r["ipc"]]["synthetic"]["mean"]):
            best[r["ipc"]] = r
    return {str(ipc): r["label"] for ipc, r in sorted(best.items())}


def claim(result: dict[str, Any]) -> str:
    """Whether the paper's claim holds here: the winning window moves later as the IPC grows."""
    won = {int(k): v for k, v in result.get("winner", {}).items()}
    order = {label: i for i, label in enumerate(result.get("labels", []))}
    if len(won) < 2:
        return "Run at least two IPCs to test the claim."
    ipcs = sorted(won)
    ranks = [order.get(won[i], 0) for i in ipcs]
    where = ", ".join(f"IPC {i}: {won[i]}" for i in ipcs)
    if all(a <= b for a, b in zip(ranks, ranks[1:], strict=False)) and ranks[-1] > ranks[0]:
        return f"The claim holds here: the best window moves later as the set grows ({where})."
    if len(set(ranks)) == 1:
        return f"The claim does not show here: the same window wins at every IPC ({where})."
    return f"The claim does not hold here: the best window does not move later with the IPC ({where})."


def windows(
    base: RunConfig,
    data: Data,
    ipcs: list[int],
    k: int = 2,
    seeds: Iterable[int] = (0,),
    store: Store | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Every (IPC, window) pooled over ``seeds``; ``windows.json`` and ``.md`` rewritten after each row."""
    seeds = list(seeds)
    runs, shared = plan(base, data, sorted(set(ipcs)), k, seeds)
    result: dict[str, Any] = {"dataset": data.name, "ipcs": sorted(set(ipcs)), "seeds": seeds, "init": base.init,
                              "machine": machine(), **shared, "rows": [], "winner": {}, "claim": ""}
    for ipc in result["ipcs"]:
        for w, (lo, hi) in enumerate(shared["windows"]):
            label = shared["labels"][w]
            cells = []
            for cfg, _ in (r for r in runs if r[0].ipc == ipc and r[1] == w):
                log(f"[windows] ipc={ipc} {label} window [{lo}, {hi}) seed={cfg.seed} ({cfg.iterations} steps) ...")
                cells.append(run_one(cfg, store, label=f"datm window {label} [{lo}, {hi}) ipc {ipc}"))
            row = {**row_of("datm", ipc, cells), "window": [lo, hi], "label": label}
            log(f"[windows] ipc={ipc} {label}: " + (row.get("error") or f"{100 * row['synthetic']['mean']:.1f} ± "
                f"{100 * row['synthetic']['std']:.1f}% (random {100 * row['random']['mean']:.1f}%)"))
            result["rows"].append(row)
            result["winner"] = winners(result["rows"])
            result["claim"] = claim(result)
            if out is not None:
                write(result, out)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"DATM on `{result['dataset']}`, experts of {result['expert_epochs']} epochs, M = {result['expert_target']}, "
        f"seeds {result['seeds']}; {result.get('machine', '')}.",
        "",
        "| ipc | window | start epochs | accuracy % (final) | random real % | Δ points | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lo, hi = r["window"]
        if "synthetic" not in r:
            lines.append(f"| {r['ipc']} | {r['label']} | [{lo}, {hi}) | failed: {r.get('error', '')} | | | |")
            continue
        a, b = r["synthetic"], r["random"]
        best = " **best**" if result["winner"].get(str(r["ipc"])) == r["label"] else ""
        lines.append(f"| {r['ipc']} | {r['label']}{best} | [{lo}, {hi}) | {100 * a['mean']:.1f} ± {100 * a['std']:.1f} (n={a['n']}) | "
                     f"{100 * b['mean']:.1f} ± {100 * b['std']:.1f} | {100 * (a['mean'] - b['mean']):+.1f} | {r.get('seconds', 0):.0f} |")
    return "\n".join(lines + ["", result.get("claim", "")]) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    save(result, out, "windows", markdown)


def load(text: str | bytes) -> dict[str, Any]:
    """A ``windows.json`` read back and checked (the page takes uploads); a ValueError says what is wrong."""
    result = parse(text, "windows")
    for r in result["rows"]:
        ok = isinstance(r, dict) and isinstance(r.get("ipc"), int) and isinstance(r.get("label"), str)
        w = r.get("window") if ok else None
        ok = ok and isinstance(w, list) and len(w) == 2 and all(isinstance(e, int) for e in w) and w[0] < w[1]
        s = r.get("synthetic") if ok else None
        ok = ok and (s is None or is_stat(s))
        if not ok:
            raise ValueError(f"not a windows.json: a row needs ipc, label, window [lo, hi) and {{mean, std}}; got {str(r)[:120]}")
    result.setdefault("winner", winners(result["rows"]))
    result.setdefault("labels", list(dict.fromkeys(r["label"] for r in result["rows"])))
    return result


def rows_from_records(records: list[Any]) -> dict[str, Any] | None:
    """The finished runs a ``windows`` command recorded in a store (labelled "datm window ..."), as a
    result to plot: one row per (IPC, window), pooled over seeds; None when there are none."""
    groups: dict[tuple[int, int, int], list[Any]] = {}
    names: dict[tuple[int, int], str] = {}
    for r in records:
        if r.method != "datm" or r.status != "done" or r.final_mean is None or not r.label.startswith("datm window "):
            continue
        o = r.config_dict.get("options", {})
        lo, hi = o.get("min_start_epoch"), o.get("max_start_epoch")
        if not isinstance(lo, int) or not isinstance(hi, int):
            continue
        groups.setdefault((r.ipc, lo, hi), []).append(r)
        names[(lo, hi)] = r.label.split()[2]
    if not groups:
        return None
    rows = []
    for (ipc, lo, hi), rs in sorted(groups.items()):
        mean, std = pooled([{"mean": r.final_mean, "std": r.final_std} for r in rs])
        row: dict[str, Any] = {"ipc": ipc, "window": [lo, hi], "label": names[(lo, hi)],
                               "synthetic": {"mean": mean, "std": std, "n": len(rs)}}
        base = [{"mean": r.baseline_mean, "std": r.baseline_std} for r in rs if r.baseline_mean is not None]
        if base:
            bm, bs = pooled(base)
            row["random"] = {"mean": bm, "std": bs, "n": len(base)}
        rows.append(row)
    windows_seen = sorted({tuple(r["window"]) for r in rows})
    result = {"rows": rows, "labels": list(dict.fromkeys(names[w] for w in windows_seen)), "winner": winners(rows)}
    result["claim"] = claim(result)
    return result
