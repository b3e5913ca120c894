"""The run store: a SQLite index of runs and, per run, a folder of artifacts under a runs directory.

Layout (default ``./runs``, or ``$DISTILL_RUNS``)::

    runs/index.sqlite            one row per run (what the app lists and filters), plus references
    runs/<id>/config.json        the resolved RunConfig
    runs/<id>/state.json         status, metrics, accuracy curve, baseline, final, message, timings
    runs/<id>/tensors.safetensors  latest images (pixels in [0, 1]), labels, init indices/scores, extras
    runs/<id>/checkpoint.safetensors  latest synthetic set as networks see it (normalised, or ZCA-whitened where the run whitens), for resuming
    runs/<id>/synthetic.safetensors   the final synthetic set (images, pixels, labels, lr, coreset weights)
    runs/<id>/frames/<iteration>.safetensors  images over time (uint8), a bounded number

Files are written to a temporary name and renamed, so a crash never leaves a half-written file.
A snapshot is written field by field (``encode_snapshot``/``decode_snapshot``): tensors go to the
safetensors file, everything else to ``state.json``, so a new ``Snapshot`` field is saved with no
change here. When to write is the ``Recorder``'s job (``recorder.py``). An app that restarts calls
``mark_interrupted()``: runs the index still lists as active become "interrupted", keeping
everything they had saved, unless the process that runs them still lives (a CLI run writing into
the same store while the app starts); ``resume_point`` gives what a ``Run`` needs to continue one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from distill_core.artifacts import save_synthetic, to_uint8
from distill_core.runs.run import ACTIVE, Resume, Snapshot
from distill_core.synthetic import Synthetic

MAX_FRAMES = 40  # image frames kept per run: enough to scrub through, small on disk

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    init TEXT NOT NULL,
    ipc INTEGER NOT NULL,
    iteration INTEGER NOT NULL DEFAULT 0,
    iterations INTEGER NOT NULL DEFAULT 0,
    final_mean REAL, final_std REAL, final_n INTEGER,
    baseline_mean REAL, baseline_std REAL,
    seconds REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    timing TEXT NOT NULL DEFAULT '{}',
    checks INTEGER NOT NULL DEFAULT 0,
    process TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what a run id looks like; anything else names no run


def is_run_id(text: object) -> bool:
    return isinstance(text, str) and RUN_ID.fullmatch(text) is not None


def default_root() -> Path:
    return Path(os.environ.get("DISTILL_RUNS", "runs"))


@dataclass(frozen=True)
class RunRecord:
    """One row of the index."""

    id: str
    owner: str
    label: str
    created: float
    updated: float
    status: str
    dataset: str
    method: str
    init: str
    ipc: int
    iteration: int
    iterations: int
    final_mean: float | None
    final_std: float | None
    final_n: int | None
    baseline_mean: float | None
    baseline_std: float | None
    seconds: float
    message: str
    timing: str  # JSON {"prepare", "baseline", "distill", "evaluate"}: seconds spent in each phase
    checks: int  # accuracy checks made during the run (one network each)
    config: str

    @property
    def config_dict(self) -> dict[str, Any]:
        return json.loads(self.config)

    @property
    def timing_dict(self) -> dict[str, float]:
        return json.loads(self.timing or "{}")


COLUMNS = [f.name for f in fields(RunRecord)]


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc); "" where that is unknown.
    With the pid it names one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def this_process() -> str:
    """"host:pid:start" of the running process: which process a run belongs to."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def process_alive(process: str) -> bool:
    """Whether the process a ``this_process()`` string names still runs. Unknown (an old row, another
    host) counts as ended: the run is then marked interrupted, as before processes were recorded."""
    host, _, rest = process.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return start == _start_ticks(int(pid))


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{threading.get_ident()}")
    write(tmp)
    os.replace(tmp, path)


def _json_safe(x: Any) -> Any:
    """NaN/inf become None: JSON has no such numbers, and a diverged loss must not break the file."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


class Store:
    """Run index and artifacts. Safe to share between threads (one connection per call)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        self._lock = threading.Lock()
        with self._connect() as con:
            con.executescript(SCHEMA)
            self._migrate(con)

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        """Add columns a newer version of the index has (runs directories outlive app versions)."""
        have = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
        for name, decl in (("timing", "TEXT NOT NULL DEFAULT '{}'"), ("checks", "INTEGER NOT NULL DEFAULT 0"),
                           ("process", "TEXT NOT NULL DEFAULT ''")):
            if name not in have:
                con.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    def run_dir(self, run_id: str) -> Path:
        if not is_run_id(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.root / run_id

    # ---- index -------------------------------------------------------------------------------
    def add(self, snap: Snapshot, owner: str = "", label: str = "") -> None:
        """Register a run (typically queued) so that it is never lost, whatever happens next."""
        cfg = snap.config
        now = time.time()
        self.run_dir(snap.run_id).mkdir(parents=True, exist_ok=True)
        with self._lock, self._connect() as con:
            con.execute(
                "INSERT OR IGNORE INTO runs (id, owner, label, created, updated, status, dataset, method, init, ipc, "
                "iterations, process, config) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    snap.run_id,
                    owner,
                    label,
                    snap.created,
                    now,
                    snap.status,
                    cfg["dataset"],
                    cfg["method"],
                    cfg["init"],
                    cfg["ipc"],
                    cfg.get("iterations") or 0,
                    this_process(),
                    json.dumps(_json_safe(cfg)),
                ),
            )
        self.save_config(snap.run_id, cfg)

    def _update_row(self, snap: Snapshot) -> None:
        final, base = snap.final or {}, snap.baseline or {}
        with self._lock, self._connect() as con:
            con.execute(
                "UPDATE runs SET updated=?, status=?, iteration=?, iterations=?, final_mean=?, final_std=?, final_n=?, "
                "baseline_mean=?, baseline_std=?, seconds=?, message=?, timing=?, checks=?, config=?, dataset=?, init=? "
                "WHERE id=?",
                (
                    time.time(),
                    snap.status,
                    snap.iteration,
                    snap.iterations,
                    final.get("mean"),
                    final.get("std"),
                    final.get("n"),
                    base.get("mean"),
                    base.get("std"),
                    _run_seconds(snap),
                    snap.message,
                    json.dumps(_json_safe(snap.seconds)),
                    _checks(snap),
                    json.dumps(_json_safe(snap.config)),
                    snap.config["dataset"],
                    snap.config["init"],
                    snap.run_id,
                ),
            )

    def list(
        self,
        owner: str | None = None,
        dataset: str | None = None,
        method: str | None = None,
        status: str | None = None,
        limit: int = 500,
    ) -> list[RunRecord]:
        """Newest first, filtered by any of the given columns."""
        where, args = [], []
        for col, val in (("owner", owner), ("dataset", dataset), ("method", method), ("status", status)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT {', '.join(COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC LIMIT ?"
        with self._connect() as con:
            rows = con.execute(sql, (*args, limit)).fetchall()
        return [RunRecord(**dict(r)) for r in rows]

    def get(self, run_id: str) -> RunRecord | None:
        if not is_run_id(run_id):
            return None
        with self._connect() as con:
            row = con.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else RunRecord(**dict(row))

    def set_label(self, run_id: str, label: str) -> None:
        with self._lock, self._connect() as con:
            con.execute("UPDATE runs SET label = ? WHERE id = ?", (label, run_id))

    def delete(self, run_id: str) -> None:
        with self._lock, self._connect() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def mark_interrupted(self) -> list[str]:
        """Runs the index lists as active whose process has ended (or is this one, going away): mark
        them interrupted. Runs of another live process (a CLI run on the same store) are left alone."""
        marks = ",".join("?" * len(ACTIVE))
        me = this_process()
        with self._lock, self._connect() as con:
            rows = con.execute(f"SELECT id, process FROM runs WHERE status IN ({marks})", ACTIVE).fetchall()
            ids = [r["id"] for r in rows if r["process"] == me or not process_alive(r["process"])]
            con.executemany(
                "UPDATE runs SET status = 'interrupted', updated = ?, message = CASE WHEN message = '' THEN ? "
                "ELSE message END WHERE id = ?",
                [(time.time(), "the app stopped while this run was active; what it had saved is kept", run_id) for run_id in ids],
            )
        for run_id in ids:
            state = self._read_json(run_id, "state.json")
            if state is not None:
                state["status"] = "interrupted"
                state["message"] = state.get("message") or "the app stopped while this run was active; what it had saved is kept"
                self._write_json(run_id, "state.json", state)
        return ids

    def mark_resumed(self, run_id: str, by: str) -> None:
        """An interrupted run that another run continues: it is not resumed a second time."""
        message = f"continued by run {by}"
        with self._lock, self._connect() as con:
            con.execute("UPDATE runs SET status = 'resumed', updated = ?, message = ? WHERE id = ?", (time.time(), message, run_id))
        state = self._read_json(run_id, "state.json")
        if state is not None:
            state.update(status="resumed", message=message)
            self._write_json(run_id, "state.json", state)

    # ---- references (full-data accuracy and the like), kept across restarts -----------------
    def reference(self, key: str) -> dict[str, Any] | None:
        with self._connect() as con:
            row = con.execute("SELECT value FROM refs WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_reference(self, key: str, value: dict[str, Any]) -> None:
        with self._lock, self._connect() as con:
            con.execute("INSERT OR REPLACE INTO refs (key, value, updated) VALUES (?,?,?)", (key, json.dumps(value), time.time()))

    # ---- artifacts ---------------------------------------------------------------------------
    def _write_json(self, run_id: str, name: str, obj: Any) -> None:
        d = self.run_dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        _write_atomic(d / name, lambda p: p.write_text(json.dumps(_json_safe(obj))))

    def _read_json(self, run_id: str, name: str) -> Any:
        path = self.run_dir(run_id) / name
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def save(self, snap: Snapshot, tensors: bool = True, extras_history: list[dict[str, Any]] | None = None) -> None:
        """Write the snapshot's state (and, with ``tensors``, its tensors) and update the index row."""
        state, t = encode_snapshot(snap)
        if extras_history is None:
            extras_history = (self._read_json(snap.run_id, "state.json") or {}).get("extras_history", [])
        state["extras_history"] = extras_history
        self._write_json(snap.run_id, "state.json", state)
        if tensors and t:
            _write_atomic(self.run_dir(snap.run_id) / "tensors.safetensors", lambda p: save_file(t, str(p)))
        self._update_row(snap)

    def save_config(self, run_id: str, config: dict[str, Any]) -> None:
        """``config.json``: the run's configuration (resolved once the run has prepared)."""
        self._write_json(run_id, "config.json", config)

    def save_frame(self, snap: Snapshot) -> None:
        """Keep the images at this iteration (uint8), thinning old frames to stay under MAX_FRAMES."""
        if snap.images is None:
            return
        d = self.run_dir(snap.run_id) / "frames"
        d.mkdir(parents=True, exist_ok=True)
        pixels = to_uint8(snap.images).contiguous()
        _write_atomic(d / f"{snap.iteration:08d}.safetensors", lambda p: save_file({"pixels": pixels}, str(p)))
        frames = sorted(d.glob("*.safetensors"))
        if len(frames) > MAX_FRAMES:
            # drop every other frame of the older half: the start and the recent past stay dense enough
            for f in frames[1 : len(frames) // 2 : 2]:
                f.unlink(missing_ok=True)

    def frames(self, run_id: str) -> list[int]:
        d = self.run_dir(run_id) / "frames"
        return sorted(int(f.stem) for f in d.glob("*.safetensors")) if d.exists() else []

    def frame(self, run_id: str, iteration: int) -> torch.Tensor:
        """(n, C, H, W) pixels in [0, 1] at a saved iteration."""
        pixels = load_file(str(self.run_dir(run_id) / "frames" / f"{iteration:08d}.safetensors"))["pixels"]
        return pixels.float() / 255

    def save_checkpoint(self, run_id: str, syn: Synthetic, iteration: int) -> None:
        t = {
            "images": syn.images.detach().float().cpu().contiguous(),
            "labels": syn.labels.detach().cpu().contiguous(),
            "iteration": torch.tensor([iteration]),
        }
        if syn.lr is not None:
            t["lr"] = torch.tensor([float(syn.lr)])
        if syn.weights is not None:
            t["weights"] = syn.weights.detach().float().cpu().contiguous()
        _write_atomic(self.run_dir(run_id) / "checkpoint.safetensors", lambda p: save_file(t, str(p)))

    def checkpoint(self, run_id: str) -> dict[str, Any] | None:
        path = self.run_dir(run_id) / "checkpoint.safetensors"
        if not path.exists():
            return None
        t = load_file(str(path))
        return {
            "images": t["images"],
            "labels": t["labels"],
            "iteration": int(t["iteration"][0]),
            "lr": float(t["lr"][0]) if "lr" in t else None,
            "weights": t.get("weights"),
        }

    def resume_point(self, run_id: str) -> Resume | None:
        """What a ``Run`` needs to continue ``run_id`` from its last checkpoint; None where it saved none
        (it was queued, or still preparing, when the app stopped): resumed, it starts from the beginning
        with the same configuration."""
        ckpt, old = self.checkpoint(run_id), self.load_snapshot(run_id)
        if ckpt is None or old is None:
            return None
        checks = tuple(a for a in old.accuracy if a.get("n", 1) == 1)
        return Resume(ckpt["images"], ckpt["labels"], ckpt["iteration"], old.metrics, checks, ckpt["weights"])

    def save_final(self, snap: Snapshot, syn: Synthetic) -> None:
        """The finished run's synthetic set, with its pixels and its configuration."""
        pixels = snap.images if snap.images is not None else syn.images
        meta = {"dataset": snap.config["dataset"], "method": snap.config["method"], "ipc": snap.config["ipc"],
                "config": _json_safe(snap.config)}
        _write_atomic(self.synthetic_path(snap.run_id), lambda p: save_synthetic(p, syn, pixels, meta))

    def synthetic_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "synthetic.safetensors"

    def load_snapshot(self, run_id: str) -> Snapshot | None:
        """The last saved snapshot of a run (None when the run is unknown, or the id names none)."""
        if not is_run_id(run_id):
            return None
        rec = self.get(run_id)
        state = self._read_json(run_id, "state.json")
        if rec is None and state is None:
            return None
        state = dict(state or {})
        state["config"] = self._read_json(run_id, "config.json") or state.get("config") or (rec.config_dict if rec else {})
        if rec is not None:  # the index is the truth for what lists show
            state.update(status=rec.status, message=rec.message)
        t: dict[str, torch.Tensor] = {}
        path = self.run_dir(run_id) / "tensors.safetensors"
        if path.exists():
            try:
                t = load_file(str(path))
            except Exception:  # noqa: BLE001 - an unreadable file shows the run without images, not a crash
                t = {}
        return decode_snapshot(run_id, state, t)

    def extras_history(self, run_id: str) -> list[dict[str, Any]]:
        state = self._read_json(run_id, "state.json") or {}
        return state.get("extras_history", [])


def _checks(snap: Snapshot) -> int:
    """Accuracy checks made during the distillation (the final evaluation's row excluded)."""
    return len(snap.accuracy) - (1 if snap.final is not None and snap.accuracy else 0)


def _run_seconds(snap: Snapshot) -> float:
    return float(sum(snap.seconds.values())) if snap.seconds else float(snap.elapsed or 0.0)


# ---- the snapshot codec: follows the dataclass fields -----------------------------------------
# not in the state: the id names the folder, the config has its own file, a saved run has no phase or eta
TRANSIENT = ("run_id", "config", "phase", "eta")


def encode_snapshot(snap: Snapshot) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON state, tensors) of every field: tensors, and dicts of tensors under "<field>/<key>", go to
    the tensors; the rest to the state."""
    state: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for f in fields(Snapshot):
        v = getattr(snap, f.name)
        if f.name in TRANSIENT:
            continue
        if isinstance(v, torch.Tensor):
            tensors[f.name] = v.detach().cpu().contiguous()
        elif isinstance(v, dict) and v and all(isinstance(x, torch.Tensor) for x in v.values()):
            tensors.update({f"{f.name}/{k}": x.detach().cpu().contiguous() for k, x in v.items()})
        else:
            state[f.name] = list(v) if isinstance(v, tuple) else v
    return state, tensors


def decode_snapshot(run_id: str, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Snapshot:
    """The inverse of ``encode_snapshot``; fields an older file lacks keep their defaults."""
    values: dict[str, Any] = {"run_id": run_id, "config": state.get("config", {}), "status": "interrupted"}
    for f in fields(Snapshot):
        if f.name in TRANSIENT:
            continue
        family = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{f.name}/")}
        if f.name in tensors:
            values[f.name] = tensors[f.name]
        elif family:
            values[f.name] = family
        elif f.name in state:
            v = state[f.name]
            if v is not None and str(f.type).startswith("tuple"):
                # rows of numbers: JSON has no NaN, so a None in a row was one
                v = tuple({k: (float("nan") if x is None else x) for k, x in r.items()} if isinstance(r, dict) else r for r in v)
            values[f.name] = v
    return Snapshot(**values)
