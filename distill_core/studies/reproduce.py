"""``python -m distill_core reproduce``: the cells the authors published, run here, beside their figures.

For each method and IPC with a figure in ``studies.published`` (others are skipped with a note,
unless ``--all``), the seeds' runs go through ``studies.bench``'s machinery (each a ``run``
subprocess, through an executor); ``reproduce.json`` and ``reproduce.md`` hold ours (mean ± std over
every evaluation network of every seed, n), the published figure and its source, the difference,
the random-real baseline (ours and published), the tier, wall time and device. Rewritten as each row
completes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from distill_core.executor import Result, make_executor
from distill_core.runs.store import RunRecord
from distill_core.studies import published as published_mod
from distill_core.studies.bench import Cell, CellTask, cell_result, machine, pct, pooled, summarise
from distill_core.studies.sweep import pooled as pooled_groups
from distill_core.tiers import tier_label


def plan(methods: list[str], dataset: str, ipcs: list[int], run_all: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """The (method, ipc) cells to run, and a note for each one skipped for want of a published figure."""
    cells, notes = [], []
    for ipc in ipcs:
        for method in methods:
            if published_mod.published(method, dataset, ipc) is None and not run_all:
                notes.append(f"{method} ipc {ipc}: skipped, no published figure for {dataset} (--all runs it anyway)")
            else:
                cells.append((method, ipc))
    return cells, notes


def figure_dict(fig: published_mod.Figure | None) -> dict[str, Any] | None:
    if fig is None:
        return None
    return {"accuracy": fig.accuracy, "source": fig.source, "third_party": fig.third_party, "comparable": fig.comparable,
            "note": fig.note}


def row_of(method: str, ipc: int, dataset: str, summary: dict[str, Any]) -> dict[str, Any]:
    ours = published_mod.published(method, dataset, ipc)
    random = published_mod.published("random", dataset, ipc)
    row: dict[str, Any] = {"method": method, "ipc": ipc, "published": figure_dict(ours), "published_random": figure_dict(random)}
    if "error" in summary:
        return {**row, "error": summary["error"]}
    runs = summary["runs"]
    acc = summary["accuracy"]
    row.update(
        ours=acc,
        across_runs=summary["across_runs"],
        random=summary["baseline_random"],
        difference=None if ours is None else round(100 * acc["mean"] - ours.accuracy, 2),
        random_difference=None if random is None or summary["baseline_random"] is None
        else round(100 * summary["baseline_random"]["mean"] - random.accuracy, 2),
        tiers=summary["tiers"],
        reduced=sorted({r["reduced"] for r in runs if r.get("reduced")}),
        tier_notes=sorted({n for r in runs for n in r.get("tier_notes") or []}),
        iterations=summary["iterations"],
        seeds=summary["seeds"],
        wall=round(sum(r["wall"] for r in runs), 1),
        devices=sorted({r.get("device_name") or r.get("device", "") for r in runs}),
        commits=sorted({r.get("commit", "unknown") for r in runs}),
        errors=summary["errors"],
    )
    return row


def rows_from_records(records: list[RunRecord]) -> list[dict[str, Any]]:
    """The finished runs of the app's store as reproduction rows: one per (dataset, method, IPC, tier)
    with a published figure, pooled over its runs (mean ± std over all their evaluation networks;
    ``across_runs``: the runs' means), beside the published figure. The Compare page's table."""
    groups: dict[tuple[str, str, int, str], list[RunRecord]] = {}
    for r in records:
        if r.status == "done" and r.final_mean is not None and published_mod.published(r.method, r.dataset, r.ipc) is not None:
            groups.setdefault((r.dataset, r.method, r.ipc, tier_label(r.config_dict)), []).append(r)
    rows = []
    for (dataset, method, ipc, tier), rs in sorted(groups.items()):
        mean, std = pooled_groups([{"mean": r.final_mean, "std": r.final_std} for r in rs])
        base = [{"mean": r.baseline_mean, "std": r.baseline_std} for r in rs if r.baseline_mean is not None]
        bmean, bstd = pooled_groups(base) if base else (None, None)
        summary = {
            "accuracy": {"mean": mean, "std": std, "n": sum(r.final_n or 1 for r in rs)},
            "across_runs": pooled([r.final_mean for r in rs]),
            "baseline_random": None if bmean is None else {"mean": bmean, "std": bstd, "n": len(base)},
            "tiers": [tier], "iterations": [r.iteration for r in rs], "seeds": [r.config_dict.get("seed") for r in rs],
            "errors": [], "runs": [{"wall": r.seconds, "device": r.config_dict.get("device", "")} for r in rs],
        }
        rows.append({"dataset": dataset, **row_of(method, ipc, dataset, summary)})
    return rows


def fmt(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "–"
    marks = (" (third-party)" if figure["third_party"] else "") + ("" if figure["comparable"] else " (other protocol)")
    return f"{figure['accuracy']:.1f}{marks}"


COLUMNS = ("method", "ipc", "ours %", "across runs %", "published %", "Δ points", "random real %", "published random %", "tier",
           "wall s", "device")
LEGEND = ("ours: the final accuracy, mean ± std over every evaluation network of every run (n networks); across runs: "
          "mean ± std of the independent distillation runs' own means; Δ: ours minus published, in points; wall: the seconds "
          "of the cell's runs together")


def across(a: dict[str, Any] | None) -> str:
    """The spread of the independent distillation runs' means: meaningful from two runs on."""
    if a is None:
        return "–"
    return f"{pct(a)} ({a['n']} runs)" if a["n"] > 1 else "one run"


def cells(r: dict[str, Any]) -> list[str]:
    """A row of the reproduction table as text, one entry per column (``COLUMNS``): for reproduce.md
    and the Compare page alike."""
    if "error" in r:
        return [r["method"], str(r["ipc"]), f"failed: {r['error']}", "", fmt(r["published"]), "", "", fmt(r["published_random"]),
                "", "", ""]
    failed = f"; failed: {'; '.join(r['errors'])}" if r["errors"] else ""
    return [
        r["method"], str(r["ipc"]), f"{pct(r['ours'])} (n={r['ours']['n']}{failed})", across(r.get("across_runs")),
        fmt(r["published"]), "–" if r["difference"] is None else f"{r['difference']:+.1f}", pct(r["random"]),
        fmt(r["published_random"]), "; ".join(r["tiers"]), f"{r['wall']:.0f}", ", ".join(r["devices"]),
    ]


def sources_of(rows: list[dict[str, Any]]) -> list[str]:
    """Where each row's published figures come from, one line per method (and the random-real rows')."""
    found = {f"{r['method']}: {r['published']['source']}" + (f" ({r['published']['note']})" if r["published"]["note"] else "")
             for r in rows if r.get("published")}
    found |= {f"random real: {r['published_random']['source']}" for r in rows if r.get("published_random")}
    return sorted(found)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Reproduction on `{result['dataset']}`, tier {result['tier']}, seeds {result['seeds']}; {result['machine']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---" * len(COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in result["rows"]] + ["", LEGEND + "."]
    full = result.get("full_data")
    if full:
        lines += ["", f"Full training set (published): {full['accuracy']:.1f}% ({full['source']})."]
    sources = set(sources_of(result["rows"]))
    reduced = {f"{r['method']} ipc {r['ipc']}: {x}" for r in result["rows"] for x in r.get("reduced") or []}
    notes = {f"{r['method']} ipc {r['ipc']}: {x}" for r in result["rows"] for x in r.get("tier_notes") or []}
    for title, items in (("Sources", sources), ("Quick tier, reduced against paper", reduced),
                         ("Paper tier, where the settings are not the authors' own", notes), ("Skipped", result["skipped"])):
        if items:
            lines += ["", f"{title}:", *[f"- {x}" for x in sorted(items)]]
    return "\n".join(lines) + "\n"


def cell_path(out: Path, cell: Cell) -> Path:
    """Where a finished run of the table is kept: ``out/cells/<method>-ipc<k>-seed<s>.json``."""
    method, _, ipc, seed = cell
    return out / "cells" / f"{method}-ipc{ipc}-seed{seed}.json"


def kept_run(out: Path, cell: Cell, dataset: str, args: list[str]) -> dict[str, Any] | None:
    """A run of ``cell`` that an earlier ``reproduce`` into ``out`` finished with the same dataset and
    arguments (a table of hours, cut short by a lease or a closed laptop, goes on from there); None
    where there is none, or it was made otherwise."""
    path = cell_path(out, cell)
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = isinstance(kept, dict) and kept.get("dataset") == dataset and kept.get("args") == args
    return kept.get("run") if same and isinstance(kept.get("run"), dict) else None


def reproduce(dataset: str, methods: list[str], ipcs: list[int], seeds: list[int], tier: str | None, out: Path,
              extra: list[str], run_all: bool = False, ray: str | None = None, timeout: float = 7 * 86400,
              store: str | None = None) -> dict[str, Any]:
    """Run the published cells and write ``reproduce.json`` and ``reproduce.md`` under ``out``. Each
    finished run is kept under ``out/cells``; a later call with the same dataset and arguments into
    the same ``out`` takes those runs as they are and runs only the rest. With ``store`` (a runs
    directory) every run is also recorded there, as the app records its runs."""
    cells, skipped = plan(methods, dataset, ipcs, run_all)
    args = list(extra) + (["--tier", tier] if tier else [])
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    full = published_mod.published("full", dataset, 0)
    result: dict[str, Any] = {
        "dataset": dataset, "tier": tier or "by device (paper on a CUDA GPU for the published datasets, else quick)",
        "seeds": seeds, "machine": machine(), "extra": args, "skipped": skipped, "rows": [],
        "full_data": figure_dict(full),
    }
    every: list[Cell] = [(m, "random", ipc, s) for m, ipc in cells for s in seeds]
    done: dict[Cell, dict[str, Any]] = {c: run for c in every if (run := kept_run(out, c, dataset, args)) is not None}
    grid = [c for c in every if c not in done]
    if done:
        print(f"[reproduce] {len(done)} of {len(every)} runs kept from an earlier call ({out / 'cells'}); running the other "
              f"{len(grid)}", file=sys.stderr, flush=True)

    def write() -> None:
        (out / "reproduce.json").write_text(json.dumps(result, indent=2))
        (out / "reproduce.md").write_text(markdown(result))

    def rows() -> list[dict[str, Any]]:
        return [row_of(m, ipc, dataset, summarise([done[(m, "random", ipc, s)] for s in seeds]))
                for m, ipc in cells if all((m, "random", ipc, s) in done for s in seeds)]

    def arrived(i: int, res: Result[dict[str, Any]]) -> None:
        cell = grid[i]
        done[cell] = cell_result(cell, res)
        if "error" not in done[cell]:
            cell_path(out, cell).write_text(json.dumps({"dataset": dataset, "args": args, "run": done[cell]}))
        print(f"[reproduce] {len(done)}/{len(every)} {cell[0]} ipc={cell[2]} seed={cell[3]}", file=sys.stderr, flush=True)
        result["rows"] = rows()
        write()

    result["rows"] = rows()
    write()
    if grid:
        with make_executor(ray) as executor:
            recorded = ["--store", str(Path(store).resolve())] if store else []  # not part of what a kept run must match
            executor.map(CellTask(dataset, tuple(args + recorded), timeout), grid, on_done=arrived)
    return result
