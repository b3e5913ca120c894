"""``python -m distill_core bench``: a grid of methods x initializers x IPC x seeds on one dataset.

Each cell is a fresh ``python -m distill_core run`` subprocess, so its wall time includes start-up
and expert training when none are cached, and its peak memory (recorded by the run) is its own. Writes
``bench.json`` and ``bench.md`` (final accuracy mean ± std over evaluation networks and seeds,
beside the random-real baseline at the same IPC).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


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
        if proc.returncode != 0 or not (out / "results.json").exists():
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": last}
        r = json.loads((out / "results.json").read_text())
        r["wall"] = round(wall, 1)
        return r


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [c for c in cells if "error" not in c]
    if not ok:
        return {"error": cells[0]["error"]}
    acc = [v for c in ok for v in c["accuracy"]["values"]]
    base = [v for c in ok for v in c["baseline_random"]["values"]]
    return {
        "accuracy": {"mean": float(np.mean(acc)), "std": float(np.std(acc)), "n": len(acc)},
        "baseline_random": {"mean": float(np.mean(base)), "std": float(np.std(base)), "n": len(base)},
        "seeds": [c["seed"] for c in ok],
        "iterations": [c["iterations"] for c in ok],
        "wall": float(np.median([c["wall"] for c in ok])),
        "distill": float(np.median([c["seconds"]["distill"] for c in ok])),
        "evaluate": float(np.median([c["seconds"]["evaluate"] + c["seconds"].get("baseline", 0) for c in ok])),
        "peak_rss_mb": max(c["peak_memory_mb"]["rss"] for c in ok),
        "errors": [c["error"] for c in cells if "error" in c],
        "runs": ok,
    }


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    columns = "| method | init | ipc | accuracy % (final) | random real % | Δ points | iterations | distill s | eval s | wall s | peak MB |"
    lines = [header, "", columns,
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        if "error" in s:
            lines.append(f"| {r['method']} | {r['init']} | {r['ipc']} | failed: {s['error']} | | | | | | | |")
            continue
        a, b = s["accuracy"], s["baseline_random"]
        its = "/".join(str(i) for i in sorted(set(s["iterations"])))
        lines.append(
            f"| {r['method']} | {r['init']} | {r['ipc']} | {100 * a['mean']:.1f} ± {100 * a['std']:.1f} (n={a['n']}) | "
            f"{100 * b['mean']:.1f} ± {100 * b['std']:.1f} | {100 * (a['mean'] - b['mean']):+.1f} | {its} | "
            f"{s['distill']:.0f} | {s['evaluate']:.0f} | {s['wall']:.0f} | {s['peak_rss_mb']:.0f} |"
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
    timeout = (args.time_budget or 3600) * 2 + 600
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ipc in ipcs:
        for method in methods:
            for init in inits:
                cells = []
                for seed in seeds:
                    print(f"[bench] {method} init={init} ipc={ipc} seed={seed} ...", file=sys.stderr, flush=True)
                    cells.append(run_cell(method, init, ipc, seed, args.dataset, extra, timeout))
                rows.append({"method": method, "init": init, "ipc": ipc, "summary": summarise(cells)})
                header = (f"Dataset `{args.dataset}`, seeds {args.seeds}, time budget {args.time_budget or 'none'} s per run; "
                          f"{machine()}.")
                (out / "bench.json").write_text(json.dumps({"dataset": args.dataset, "machine": machine(), "rows": rows}, indent=2))
                (out / "bench.md").write_text(markdown(rows, header))
    print((out / "bench.md").read_text())
    return 0
