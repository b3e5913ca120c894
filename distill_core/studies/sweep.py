"""``python -m distill_core sweep``: accuracy against IPC for chosen methods on one dataset.

Each (method, IPC, seed) is a ``Run``, a task of an executor (``distill_core.executor``: one after
another in this process, or with ``--ray`` a task of one CPU each on a Ray cluster); given a store,
the runs land where the app's Compare page reads them. Each has its random-real baseline at the same IPC (the run measures it;
the methods of one IPC and seed get the same number); the full-data accuracy is measured once with
the same protocol (networks, epochs, augmentation) on every training image. Rows are pooled over seeds
with ``bench.summarise``. Writes ``sweep.json`` and ``sweep.md``::

    {dataset, methods, ipcs, machine, protocol, full_data: {mean, std, n, epochs},
     rows: [{method, ipc, synthetic: {mean, std, n}, random: {mean, std, n}, iterations, seconds}],
     plateau: {method: ipc}, closest: {method, ipc, gap}}
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill_core.config import RunConfig, resolve
from distill_core.data.datasets import Data
from distill_core.evaluation.protocol import Accuracy, EvalConfig, evaluate_set, train_epoch
from distill_core.executor import Executor, InProcess, Result
from distill_core.methods import experts
from distill_core.nets.networks import NetConfig, create_net
from distill_core.paths import cache_dir as default_cache_dir
from distill_core.runs.estimates import estimate
from distill_core.runs.jobs import References
from distill_core.runs.recorder import Recorder
from distill_core.runs.run import Run, pick_device
from distill_core.runs.store import RunRecord, Store
from distill_core.studies.bench import machine, summarise
from distill_core.units import duration

PLATEAU_POINTS = 0.01  # a method "stops gaining" at the smallest IPC within 1 point of its best
REFUSE_SECONDS = 30 * 60  # the CLI asks for --yes above this estimate
FULL_TOKENS = ("max", "full")  # in --ipcs: the smallest class's size, i.e. the whole training set


def parse_ipcs(text: str, data: Data) -> list[int]:
    """``"1,10,50,max"`` -> sorted distinct IPCs; ``max``/``full`` is the smallest class's size. An IPC
    above it is refused with the largest that fits (a class cannot give more images than it has)."""
    smallest = min(data.class_counts())
    ipcs = set()
    for tok in (t.strip().lower() for t in text.split(",")):
        if not tok:
            continue
        if tok in FULL_TOKENS:
            ipcs.add(smallest)
            continue
        try:
            ipc = int(tok)
        except ValueError:
            raise ValueError(f"--ipcs takes whole numbers or 'max', got {tok!r}") from None
        if ipc < 1:
            raise ValueError(f"an IPC must be at least 1, got {ipc}")
        if ipc > smallest:
            raise ValueError(
                f"ipc={ipc} is more than the smallest class of {data.name} has ({smallest} training images); "
                f"the largest IPC that fits is {smallest} (write 'max')"
            )
        ipcs.add(ipc)
    if not ipcs:
        raise ValueError("no IPC given; e.g. --ipcs 1,10,50")
    return sorted(ipcs)


def plan(
    base: RunConfig, data: Data, methods: list[str], ipcs: list[int], seeds: list[int], upto: dict[str, int] | None = None
) -> list[RunConfig]:
    """The resolved configuration of every run: ``base`` (dataset, init, network, protocol; unresolved,
    so that the fields it leaves ``None``, steps included, take each method's default at each IPC) with
    each method, IPC and seed; the method's and initializer's options start from their defaults.
    ``upto``: {method: largest IPC} for a method too slow at the large ones."""
    upto = upto or {}
    unknown = sorted(set(upto) - set(methods))
    if unknown:
        raise ValueError(f"--upto names {', '.join(unknown)}, which the sweep does not run (methods: {', '.join(methods)})")
    return [
        resolve(replace(base, method=m, ipc=ipc, seed=s, options={}, init_options={}), data)
        for ipc in ipcs
        for m in methods
        if ipc <= upto.get(m, ipc)
        for s in seeds
    ]


def parse_upto(pairs: list[str]) -> dict[str, int]:
    """``["datm=50"]`` -> {"datm": 50}."""
    out = {}
    for pair in pairs:
        method, _, ipc = pair.partition("=")
        if not ipc.strip().isdigit():
            raise ValueError(f"--upto takes METHOD=IPC, e.g. datm=50; got {pair!r}")
        out[method.strip()] = int(ipc)
    return out


# ---- what it will cost ---------------------------------------------------------------------------


def sgd_step_seconds(data: Data, net: NetConfig, batch: int, strategy: str) -> float:
    """Seconds of one evaluation-network SGD step on ``batch`` augmented images (fastest of 3)."""
    g = torch.Generator().manual_seed(0)
    model = create_net(net, data.channels, data.im_size, data.num_classes, g, data.x_train.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = data.x_train[:batch], data.y_train[:batch]
    train_epoch(model, opt, x, y, batch, strategy, g)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        train_epoch(model, opt, x, y, batch, strategy, g)
        times.append(time.perf_counter() - t0)
    return min(times)


def evaluation_steps(n_images: int, cfg: EvalConfig, epochs: int | None = None, nets: int | None = None) -> int:
    """SGD steps the protocol takes to train ``nets`` networks on ``n_images`` images."""
    batch = min(cfg.batch, n_images)
    return (nets or cfg.nets) * (epochs or cfg.epochs) * math.ceil(n_images / batch)


@dataclass
class SweepEstimate:
    seconds: float
    lines: list[str]


def estimate_sweep(
    cfgs: list[RunConfig], data: Data, full_epochs: int | None, cache_dir: Path | None = None
) -> SweepEstimate:
    """Time of the whole sweep: each run's distillation (``estimates.estimate``: timed steps, experts
    to train counted once per expert set), its final evaluation, one random baseline per IPC and
    seed, and the full-data measurement (none when ``full_epochs`` is None); evaluation from one timed
    SGD step of the protocol."""
    cfg0 = cfgs[0]
    step = sgd_step_seconds(data, cfg0.net, min(cfg0.eval.batch, data.x_train.shape[0]), cfg0.strategy)
    lines, total = [], 0.0
    expert_sets: dict[Path, int] = {}  # experts the sweep trains: folder -> most epochs
    with tempfile.TemporaryDirectory() as tmp:  # an empty store: no earlier runs mix their overheads in
        store = Store(tmp)
        for cfg in cfgs:
            est = estimate(cfg, data, store, probe=True, cache_dir=cache_dir)
            distill = est.seconds
            if distill is None:
                distill = 0.0
                lines.append(f"{cfg.method} ipc {cfg.ipc}: distillation time unknown ({' '.join(est.lines)})")
            if est.needs_experts:
                spec = cfg.method_config().expert_spec()
                key = experts.cache_path(Path(cache_dir or default_cache_dir()), data, cfg.net, cfg.strategy, spec)
                if expert_sets.get(key, 0) >= spec.epochs:  # trained (as long or longer) by an earlier run of the sweep
                    distill -= est.expert_seconds
                expert_sets[key] = max(expert_sets.get(key, 0), spec.epochs)
            evaluate = step * evaluation_steps(data.num_classes * cfg.ipc, cfg.eval)
            total += distill + evaluate
            lines.append(f"{cfg.method} ipc {cfg.ipc} seed {cfg.seed}: about {duration(distill + evaluate)} "
                         f"(distil {duration(distill)}, evaluate {duration(evaluate)})")
    baselines = {(c.ipc, c.seed) for c in cfgs}
    base = sum(step * evaluation_steps(data.num_classes * ipc, cfg0.eval) for ipc, _ in baselines)
    full = 0.0 if full_epochs is None else step * evaluation_steps(data.x_train.shape[0], cfg0.eval, epochs=full_epochs)
    lines.append(f"random baselines ({len(baselines)}): about {duration(base)}"
                 + ("" if full_epochs is None else f"; full data: about {duration(full)}"))
    total += base + full
    lines.insert(0, f"{len(cfgs)} runs, about {duration(total)} in all on {data.x_train.device}.")
    return SweepEstimate(total, lines)


# ---- running it ----------------------------------------------------------------------------------


def full_data_accuracy(data: Data, cfg: RunConfig, epochs: int) -> Accuracy:
    """The protocol's networks (``cfg.eval.nets``) trained on every training image for ``epochs``
    (whitened where ``cfg`` whitens, as its runs' images are)."""
    data, _ = cfg.data_for(data, default_cache_dir())
    ecfg = replace(cfg.eval, epochs=epochs, syn_weights="uniform")  # real images: no coreset weights
    return evaluate_set(data.x_train[:], data.y_train, data, ecfg, cfg.net, cfg.strategy, torch.Generator().manual_seed(cfg.seed + 3))


def run_one(cfg: RunConfig, store: Store | None, label: str) -> dict[str, Any]:
    """One run to its end; its ``results()`` with the wall time (the cell ``bench.summarise`` pools),
    or {"error"} when it failed. With a store, it is recorded there as the app records its runs."""
    run = Run(cfg, on_snapshot=None if store is None else Recorder(store))
    if store is not None:
        store.add(run.snapshot(), owner="cli", label=label)
    t0 = time.perf_counter()
    snap = run.execute()
    if snap.status != "done" or snap.final is None:
        return {"error": snap.message or snap.status}
    return {**run.results(), "wall": round(time.perf_counter() - t0, 1)}


@dataclass(frozen=True)
class Cell:
    """One run of the sweep as an executor's task (picklable: the store travels as its folder)."""

    store_root: str | None
    dataset: str

    def __call__(self, cfg: RunConfig) -> dict[str, Any]:
        store = None if self.store_root is None else Store(self.store_root)
        return run_one(cfg, store, label=f"sweep {self.dataset} {cfg.method} ipc {cfg.ipc}")


def cell_value(result: Result[dict[str, Any]]) -> dict[str, Any]:
    return result.value if result.ok and result.value is not None else {"error": result.error or "no result"}


def stat(d: dict[str, Any]) -> dict[str, float]:
    return {"mean": d["mean"], "std": d["std"], "n": d["n"]}


def row_of(method: str, ipc: int, cells: list[dict[str, Any]]) -> dict[str, Any]:
    s = summarise(cells)
    if "error" in s:
        return {"method": method, "ipc": ipc, "error": s["error"]}
    return {
        "method": method, "ipc": ipc, "synthetic": stat(s["accuracy"]), "random": stat(s["baseline_random"]),
        "iterations": s["iterations"], "seconds": round(sum(c["wall"] for c in s["runs"]), 1), "errors": s["errors"],
    }


def sweep(
    base: RunConfig,
    data: Data,
    methods: list[str],
    ipcs: list[int],
    seeds: Iterable[int] = (0,),
    upto: dict[str, int] | None = None,
    full_epochs: int | None = None,
    store: Store | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Every method at every IPC (pooled over ``seeds``), the random baseline at each IPC and the
    full-data accuracy (``full_epochs``: default the protocol's epochs). With ``out``, ``sweep.json``
    and ``sweep.md`` are rewritten after every row, so a long sweep shows its progress. The runs go
    through ``executor`` (default: one after another here); rows keep the methods' and IPCs' order."""
    seeds = list(seeds)
    cfgs = plan(base, data, methods, ipcs, seeds, upto)
    cfg0 = cfgs[0]
    full_epochs = full_epochs or cfg0.eval.epochs
    device = pick_device(cfg0.device)
    result: dict[str, Any] = {
        "dataset": data.name, "methods": methods, "ipcs": ipcs, "seeds": seeds, "init": base.init,
        "machine": machine(), "tier": cfg0.tier, "protocol": {"net": asdict(cfg0.net), "eval": asdict(cfg0.eval), "strategy": cfg0.strategy},
        "full_data": None, "rows": [],
    }
    log(f"[sweep] full data: {cfg0.eval.nets} networks x {full_epochs} epochs on {data.x_train.shape[0]} images ...")
    t0 = time.perf_counter()
    full = full_data_accuracy(data.to(device), cfg0, full_epochs)
    result["full_data"] = {**stat(full.to_dict()), "epochs": full_epochs, "seconds": round(time.perf_counter() - t0, 1)}
    if store is not None:  # the Compare page's line for these runs: this measurement, not a quick one
        References(store, auto=False).record_sweep(cfg0, data, full, full_epochs)
    log(f"[sweep] full data: {full}")
    groups = [(m, ipc, [i for i, c in enumerate(cfgs) if c.ipc == ipc and c.method == m]) for ipc in ipcs for m in methods]
    groups = [g for g in groups if g[2]]  # --upto: a method stops below some IPC
    cells: dict[int, dict[str, Any]] = {}
    order = {(m, ipc): k for k, (m, ipc, _) in enumerate(groups)}
    group_of = {i: g for g in groups for i in g[2]}

    def arrived(i: int, r: Result[dict[str, Any]]) -> None:
        """A run ended: logged; when it completes its (method, IPC), that row is written."""
        cells[i] = cell_value(r)
        cfg = cfgs[i]
        log(f"[sweep] {cfg.method} ipc={cfg.ipc} seed={cfg.seed} ({cfg.iterations} steps): "
            + cells[i].get("error", f"{cells[i].get('wall', 0):.0f} s"))
        method, ipc, members = group_of[i]
        if not all(k in cells for k in members):
            return
        row = row_of(method, ipc, [cells[k] for k in members])
        log(f"[sweep] {method} ipc={ipc}: " + (row.get("error") or
            f"{100 * row['synthetic']['mean']:.1f} ± {100 * row['synthetic']['std']:.1f}% "
            f"(random {100 * row['random']['mean']:.1f}%)"))
        result["rows"] = sorted([*result["rows"], row], key=lambda r: order[(r["method"], r["ipc"])])
        result.update(findings(result["rows"], result["full_data"]))
        if out is not None:
            write(result, out)

    executor = executor or InProcess()
    log(f"[sweep] {len(cfgs)} runs, {executor.workers} at once{'' if executor.in_process else ' on Ray'}")
    executor.map(Cell(None if store is None else str(store.root), data.name), cfgs, on_done=arrived)
    return result


# ---- reading it ----------------------------------------------------------------------------------


def curves(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, float]]]:
    """{method: [(ipc, mean, std), ...] by IPC} of the rows that have an accuracy."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        if "synthetic" in r:
            out.setdefault(r["method"], []).append((r["ipc"], r["synthetic"]["mean"], r["synthetic"]["std"]))
    return {m: sorted(v) for m, v in out.items()}


def random_curve(rows: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """[(ipc, mean, std)] of the random baseline: one per IPC (the rows of one IPC share it; pooled
    when they differ, as runs from a store may)."""
    by_ipc: dict[int, list[dict[str, float]]] = {}
    for r in rows:
        if r.get("random"):
            by_ipc.setdefault(r["ipc"], []).append(r["random"])
    return [(ipc, *pooled(v)) for ipc, v in sorted(by_ipc.items())]


def pooled(stats: list[dict[str, float]]) -> tuple[float, float]:
    """Mean and std of the union of equally sized groups given by their means and stds (total variance:
    mean of the variances plus the variance of the means)."""
    means = np.array([s["mean"] for s in stats])
    var = np.array([(s.get("std") or 0.0) ** 2 for s in stats])
    return float(means.mean()), float(math.sqrt(var.mean() + means.var()))


def plateau_ipc(points: list[tuple[int, float, float]], tol: float = PLATEAU_POINTS) -> int | None:
    """Where a method stops gaining: the smallest IPC whose accuracy is within ``tol`` of its best."""
    if not points:
        return None
    best = max(m for _, m, _ in points)
    return min(ipc for ipc, m, _ in points if m >= best - tol)


def findings(rows: list[dict[str, Any]], full: dict[str, float] | None) -> dict[str, Any]:
    """``plateau``: {method: IPC where it stops gaining}; ``closest``: the best method's best point and
    its gap to the full-data accuracy (points below it, negative above); ``reaches_full``: whether it
    is within the full-data std or 1 point of it."""
    cs = curves(rows)
    out: dict[str, Any] = {"plateau": {m: plateau_ipc(p) for m, p in cs.items()}, "closest": None}
    if cs and full:
        method, (ipc, mean, std) = max(((m, p) for m, ps in cs.items() for p in ps), key=lambda mp: mp[1][1])
        gap = full["mean"] - mean
        out["closest"] = {"method": method, "ipc": ipc, "mean": mean, "std": std, "gap": gap,
                          "reaches_full": gap <= max(full.get("std") or 0.0, PLATEAU_POINTS)}
    return out


def sentences(result: dict[str, Any]) -> str:
    """Where each method stops gaining, and how close the best comes to the full-data accuracy."""
    parts = []
    for m, ipc in result.get("plateau", {}).items():
        points = dict((i, mean) for i, mean, _ in curves(result["rows"])[m])
        more = [i for i in points if i > ipc]
        if more:
            parts.append(f"{m.upper()} stops gaining at IPC {ipc}: {100 * points[ipc]:.1f}% (within a point of its best up to IPC {max(more)}).")
        else:
            parts.append(f"{m.upper()} still gains up to the largest IPC swept, {ipc}: {100 * points[ipc]:.1f}%.")
    c, full = result.get("closest"), result.get("full_data")
    if c and full:
        verdict = "reaches the full-data line" if c["reaches_full"] else "stays below the full-data line"
        parts.append(
            f"The best, {c['method'].upper()} at IPC {c['ipc']} ({100 * c['mean']:.1f} ± {100 * c['std']:.1f}%), "
            f"{verdict}: {100 * full['mean']:.1f} ± {100 * (full.get('std') or 0):.1f}% with all training images, "
            f"a gap of {100 * c['gap']:+.1f} points."
        )
    return " ".join(parts)


def markdown(result: dict[str, Any]) -> str:
    full = result.get("full_data")
    lines = [
        f"Dataset `{result['dataset']}`, init `{result.get('init', '')}`, tier {result.get('tier') or 'before tiers'}, "
        f"seeds {result.get('seeds')}; {result.get('machine', '')}.",
        "",
        "| method | ipc | accuracy % (final) | random real % | Δ points | steps | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "synthetic" not in r:
            lines.append(f"| {r['method']} | {r['ipc']} | failed: {r.get('error', '')} | | | | |")
            continue
        a, b = r["synthetic"], r["random"]
        lines.append(
            f"| {r['method']} | {r['ipc']} | {100 * a['mean']:.1f} ± {100 * a['std']:.1f} (n={a['n']}) | "
            f"{100 * b['mean']:.1f} ± {100 * b['std']:.1f} | {100 * (a['mean'] - b['mean']):+.1f} | "
            f"{'/'.join(str(i) for i in sorted(set(r.get('iterations', []))))} | {r.get('seconds', 0):.0f} |"
        )
    if full:
        lines.append(f"| all training images | – | {100 * full['mean']:.1f} ± {100 * full['std']:.1f} (n={full['n']}, "
                     f"{full.get('epochs')} epochs) | | | | {full.get('seconds', 0):.0f} |")
    lines += ["", sentences(result)]
    return "\n".join(lines) + "\n"


def save(result: dict[str, Any], out: Path, stem: str, markdown: Callable[[dict[str, Any]], str]) -> None:
    """``out/<stem>.json`` and ``out/<stem>.md`` (a command's result, rewritten as it grows)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result))


def parse(text: str | bytes, stem: str) -> dict[str, Any]:
    """A ``<stem>.json`` (an upload) as a dict with a ``rows`` list; a ValueError says what is wrong."""
    try:
        result = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not a {stem}.json: {e}") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise ValueError(f"not a {stem}.json: it needs a 'rows' list (written by `python -m distill_core {stem}`)")
    return result


def write(result: dict[str, Any], out: Path) -> None:
    save(result, out, "sweep", markdown)


def load(text: str | bytes) -> dict[str, Any]:
    """A ``sweep.json`` read back and checked (the page takes uploads): a ValueError says what is wrong."""
    result = parse(text, "sweep")
    for r in result["rows"]:
        ok = isinstance(r, dict) and isinstance(r.get("method"), str) and isinstance(r.get("ipc"), int) and r["ipc"] > 0
        for k in ("synthetic", "random"):
            ok = ok and (k not in r or is_stat(r[k]))
        if not ok:
            raise ValueError(f"not a sweep.json: a row must have method, a positive ipc and {{mean, std}} accuracies; got {str(r)[:120]}")
    if result.get("full_data") is not None and not is_stat(result["full_data"]):
        raise ValueError("not a sweep.json: full_data must be {mean, std}")
    return result


def is_stat(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(d.get(k), (int, float)) and math.isfinite(d[k]) for k in ("mean", "std"))


def rows_from_records(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Finished runs of a store as sweep rows: one per (method, IPC), pooled over the runs (inits,
    seeds, step counts), the random baseline beside each."""
    groups: dict[tuple[str, int], list[RunRecord]] = {}
    for r in records:
        if r.status == "done" and r.final_mean is not None:
            groups.setdefault((r.method, r.ipc), []).append(r)
    rows = []
    for (method, ipc), rs in sorted(groups.items()):
        mean, std = pooled([{"mean": r.final_mean, "std": r.final_std} for r in rs])
        row: dict[str, Any] = {"method": method, "ipc": ipc, "synthetic": {"mean": mean, "std": std, "n": len(rs)}}
        base = [{"mean": r.baseline_mean, "std": r.baseline_std} for r in rs if r.baseline_mean is not None]
        if base:
            bm, bs = pooled(base)
            row["random"] = {"mean": bm, "std": bs, "n": len(base)}
        rows.append(row)
    return rows
