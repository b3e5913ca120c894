"""``python -m distill_core bench``: a grid of methods x initializers x IPC x seeds on one dataset.

Each cell is a fresh ``python -m distill_core run`` subprocess, so its wall time includes start-up
and expert training when none are cached, and its peak memory (recorded by the run) is its own. The
cells go through an executor (``distill_core.executor``): one after another here, or with ``--ray``
as tasks of one CPU each on a Ray cluster (each task starts its cell's subprocess single-threaded); a
cell whose process is killed or whose worker dies is tried once more, then shown as failed. Writes
``bench.json`` and ``bench.md`` (final accuracy mean ± std over evaluation networks and seeds,
beside the random-real baseline at the same IPC). With ``--eval-archs`` every run also evaluates its
set on those networks, and the table gets a pair of columns (synthetic, random real) per network.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill_core.config import check_eval_archs
from distill_core.executor import Result, make_executor


class CellCrashed(RuntimeError):
    """A cell's process was killed (out of memory, a signal): worth another try, unlike a run's own error."""


def run_cell(method: str, init: str, ipc: int, seed: int, dataset: str, extra: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "distill_core", "run", "--dataset", dataset, "--method", method, "--init", init,
               "--ipc", str(ipc), "--seed", str(seed), "--out", str(out), *extra]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {"error": f"timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        if proc.returncode < 0:
            raise CellCrashed(f"{method} init={init} ipc={ipc} seed={seed}: killed by signal {-proc.returncode}")
        if proc.returncode != 0 or not (out / "results.json").exists():
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": last}
        r = json.loads((out / "results.json").read_text())
        r["wall"] = round(wall, 1)
        return r


Cell = tuple[str, str, int, int]  # method, init, ipc, seed


@dataclass(frozen=True)
class CellTask:
    """One cell of the grid as an executor's task: everything but the cell travels once."""

    dataset: str
    extra: tuple[str, ...]
    timeout: float

    def __call__(self, cell: Cell) -> dict[str, Any]:
        method, init, ipc, seed = cell
        return run_cell(method, init, ipc, seed, self.dataset, list(self.extra), self.timeout)


def cell_result(cell: Cell, result: Result[dict[str, Any]]) -> dict[str, Any]:
    """A cell's results, or its error (the run's own, or the executor's after the retry) and its seed."""
    value = result.value if result.ok and result.value is not None else {"error": result.error or "no result"}
    return {**value, "seed": cell[3]} if "error" in value else value


def pooled(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarise_archs(ok: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per network of the runs' ``accuracy_by_arch``: synthetic and random accuracy over every
    evaluation network of every seed that measured it."""
    archs = dict.fromkeys(a for c in ok for a in c.get("accuracy_by_arch") or {})
    out = {}
    for arch in archs:
        cells = [c["accuracy_by_arch"][arch] for c in ok if arch in (c.get("accuracy_by_arch") or {})]
        out[arch] = {kind: pooled([v for c in cells for v in c[kind]["values"]]) for kind in ("synthetic", "random")}
    return out


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [c for c in cells if "error" not in c]
    if not ok:
        return {"error": cells[0]["error"]}
    acc = [v for c in ok for v in c["accuracy"]["values"]]
    base = [v for c in ok for v in c["baseline_random"]["values"]]
    return {
        "accuracy": pooled(acc),
        "across_runs": pooled([c["accuracy"]["mean"] for c in ok]),  # the spread of the independent distillations
        "baseline_random": pooled(base),
        "accuracy_by_arch": summarise_archs(ok),
        "seeds": [c["seed"] for c in ok],
        "tiers": sorted({c.get("tier_label", "before tiers") for c in ok}),
        "iterations": [c["iterations"] for c in ok],
        "wall": float(np.median([c["wall"] for c in ok])),
        "distill": float(np.median([c["seconds"]["distill"] for c in ok])),
        "evaluate": float(np.median([c["seconds"]["evaluate"] + c["seconds"].get("baseline", 0) + c["seconds"].get("cross_arch", 0)
                                     for c in ok])),
        "peak_rss_mb": max(c["peak_memory_mb"]["rss"] for c in ok),
        "errors": [f"seed {c['seed']}: {c['error']}" if "seed" in c else c["error"] for c in cells if "error" in c],
        "runs": ok,
    }


def pct(a: dict[str, Any] | None) -> str:
    return "–" if a is None else f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f}"


def arch_table(by_arch: dict[str, dict[str, Any]]) -> str:
    """A run's (or a bench row's) accuracy per network: synthetic set, random real, the difference."""
    lines = ["| network | synthetic % | random real % | Δ points |", "|---|---|---|---|"]
    for arch, a in by_arch.items():
        gain = 100 * (a["synthetic"]["mean"] - a["random"]["mean"])
        lines.append(f"| {arch} | {pct(a['synthetic'])} | {pct(a['random'])} | {gain:+.1f} |")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    archs = list(dict.fromkeys(a for r in rows for a in r["summary"].get("accuracy_by_arch") or {}))
    arch_columns = "".join(f" {a}: synthetic % | {a}: random % |" for a in archs)
    columns = ("| method | init | ipc | accuracy % (final) | random real % | Δ points | iterations | distill s | eval s | wall s | peak MB |"
               + arch_columns)
    lines = [header, "", columns, "|---" * (11 + 2 * len(archs)) + "|"]
    for r in rows:
        s = r["summary"]
        if "error" in s:
            lines.append(f"| {r['method']} | {r['init']} | {r['ipc']} | failed: {s['error']} | | | | | | | |" + " |" * 2 * len(archs))
            continue
        a, b = s["accuracy"], s["baseline_random"]
        its = "/".join(str(i) for i in sorted(set(s["iterations"])))
        per_arch = s.get("accuracy_by_arch") or {}
        cells = "".join(f" {pct(per_arch.get(x, {}).get('synthetic'))} | {pct(per_arch.get(x, {}).get('random'))} |" for x in archs)
        # seeds that failed are named in the row, never silently left out of its mean
        failed = f"; failed: {'; '.join(s['errors'])}" if s.get("errors") else ""
        lines.append(
            f"| {r['method']} | {r['init']} | {r['ipc']} | {100 * a['mean']:.1f} ± {100 * a['std']:.1f} (n={a['n']}{failed}) | "
            f"{100 * b['mean']:.1f} ± {100 * b['std']:.1f} | {100 * (a['mean'] - b['mean']):+.1f} | {its} | "
            f"{s['distill']:.0f} | {s['evaluate']:.0f} | {s['wall']:.0f} | {s['peak_rss_mb']:.0f} |" + cells
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def bench(args: Any) -> int:
    methods = [m for m in args.methods.split(",") if m]
    inits = [i for i in args.inits.split(",") if i]
    ipcs = [int(i) for i in args.ipc.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = list(args.extra or [])
    if args.time_budget:
        extra += ["--time-budget", str(args.time_budget)]
    # checked here, not in every cell: an unknown name fails the whole grid at once, with the known names
    archs = check_eval_archs([a.strip() for a in (getattr(args, "eval_archs", "") or "").split(",") if a.strip()])
    if archs:
        extra += ["--eval-archs", ",".join(archs)]
    if getattr(args, "tier", None):
        extra += ["--tier", args.tier]
    timeout = (args.time_budget or 3600) * 2 + 600
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = [(method, init, ipc) for ipc in ipcs for method in methods for init in inits]
    cells: list[Cell] = [(method, init, ipc, seed) for method, init, ipc in groups for seed in seeds]
    done: dict[Cell, dict[str, Any]] = {}
    tier = getattr(args, "tier", None) or "by device (paper on a CUDA GPU for the published datasets, else quick)"
    header = f"Dataset `{args.dataset}`, tier {tier}, seeds {args.seeds}, time budget {args.time_budget or 'none'} s per run; {machine()}"

    def arrived(i: int, result: Result[dict[str, Any]]) -> None:
        """Record a cell and rewrite the tables with every row whose seeds are all in, in grid order."""
        cell = cells[i]
        done[cell] = cell_result(cell, result)
        r = done[cell]
        what = f"failed: {r['error']}" if "error" in r else f"{100 * float(np.mean(r['accuracy']['values'])):.1f}% in {r['wall']:.0f} s"
        print(f"[bench] {len(done)}/{len(cells)} {cell[0]} init={cell[1]} ipc={cell[2]} seed={cell[3]}: {what}", file=sys.stderr, flush=True)
        rows = [{"method": m, "init": n, "ipc": c, "summary": summarise([done[(m, n, c, s)] for s in seeds])}
                for m, n, c in groups if all((m, n, c, s) in done for s in seeds)]
        (out / "bench.json").write_text(json.dumps({"dataset": args.dataset, "machine": machine(), "rows": rows}, indent=2))
        (out / "bench.md").write_text(markdown(rows, header))

    with make_executor(getattr(args, "ray", None)) as executor:
        # cells that share the machine run slower each: the header says how many ran at once
        header += f"; {executor.workers} cell(s) at once{' on Ray' if not executor.in_process else ''}."
        print(f"[bench] {len(cells)} cells, {executor.workers} at once", file=sys.stderr, flush=True)
        executor.map(CellTask(args.dataset, tuple(extra), timeout), cells, on_done=arrived)
    print((out / "bench.md").read_text())
    return 0
