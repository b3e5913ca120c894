"""Drawing one run (live or past) from its snapshot: status and progress, headline numbers, the
synthetic images per class, the curves, downloads. No computation here: snapshots only."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import plotly.graph_objects as go
import streamlit as st
import torch

from distill_core.artifacts import load_synthetic, npz_bytes
from distill_core.runs.run import ACTIVE, Snapshot
from distill_core.tiers import BEFORE_TIERS, tier_label
from distill_core.units import duration
from ui import charts, chartview, images, state
from ui.cache import VIEWS
from ui.services import Services

T = TypeVar("T")

STATUS_WORDS = {
    "queued": "Waiting in the queue",
    "preparing": "Preparing",
    "running": "Distilling",
    "paused": "Paused",
    "done": "Finished",
    "stopped": "Stopped",
    "failed": "Failed",
    "interrupted": "Interrupted",
    "resumed": "Resumed as another run",
}

PHASE_WORDS = {
    "loading data": "loading the dataset",
    "initializing": "choosing the initial images",
    "baseline: training on random real images": "measuring the baseline: training networks on random real images",
    "baseline for the checks: training on random real images (quick protocol)":
        "measuring the quick checks' baseline: one network on random real images",
    "checking the initial images": "checking the initial images: one network trained on them",
    "distilling": "changing the synthetic images",
    "final evaluation": "final check: training fresh networks on the synthetic images",
}


def pct(d: dict[str, Any] | None, std: bool = True) -> str:
    if not d:
        return "–"
    return f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}%" if std and d.get("n", 1) > 1 else f"{100 * d['mean']:.1f}%"


def title(snap: Snapshot) -> str:
    c = snap.config
    return f"{c['method'].upper()} from {c['init']} · {dataset_label(c['dataset'])} · {c['ipc']} per class"


def dataset_label(name: str) -> str:
    if "/" in name or name.endswith((".npz", ".zip")):
        return f"upload {Path(name).stem.rsplit('-', 1)[0]}"
    return name


# How often a page showing a live run asks for a redraw (``st.fragment(run_every=...)``). A redraw of
# an unchanged snapshot version re-sends views built once per version (``snapshot_view``), but every
# poll is still a script run on the server. Browsers also throttle timers in background tabs (Chrome:
# at most once a second, once a minute after 5 minutes hidden); the server cannot tell a hidden tab.
POLL_SECONDS = 1.0  # the run's owner, while it prepares or distills: the images move every second
POLL_OWNER_PAUSED = 2.0  # the owner's paused run changes only on Step or Resume: a step shows within 2 s
POLL_WATCHER = 3.0  # another session's run: this viewer cannot act on it, a 3 s lag costs it nothing
POLL_IDLE = 5.0  # queued, or another session's paused run: nothing moves until something else happens


def poll_seconds(status: str, owned: bool, queue_position: int | None = None) -> float | None:
    """Seconds between redraws of a run in ``status`` shown to its owner (``owned``) or to another
    session; None for an ended run (nothing left to poll). A run "queued" but in no queue
    (``queue_position`` None) is being handed to its worker: its owner sees it start within a second."""
    if status not in ACTIVE:
        return None
    if status == "queued":
        return POLL_SECONDS if owned and queue_position is None else POLL_IDLE
    if status == "paused":
        return POLL_OWNER_PAUSED if owned else POLL_IDLE
    return POLL_SECONDS if owned else POLL_WATCHER


def rerun_when_ended(key: str, active: bool) -> None:
    """In a polling fragment: when what ``key`` names was active at the last redraw and is no longer,
    redraw the whole page once (buttons, downloads); the fragment then stops polling."""
    seen = st.session_state.setdefault(state.ACTIVE_SEEN, {})
    if active:
        seen[key] = True
    elif seen.pop(key, False):
        st.rerun()


def status_block(snap: Snapshot, queue_position: int | None, services: Services) -> None:
    """Where the run stands, in one line and a progress bar."""
    words = STATUS_WORDS.get(snap.status, snap.status)
    if snap.status == "queued":
        running = len(services.manager.active()) - sum(1 for r in services.manager.active() if r.snapshot().status == "queued")
        st.info(
            f"**Waiting in the queue: position {queue_position or '?'}.** {running} run(s) are using the machine "
            f"(at most {services.manager.max_concurrent} at once); this one starts when one of them ends.",
            icon=":material/hourglass_top:",
        )
        return
    if snap.phase_progress is not None and snap.status in ("preparing", "running"):
        phase = PHASE_WORDS.get(snap.phase, snap.phase)
        left = f" · about {duration(snap.phase_eta)} left" if snap.phase_eta else ""
        st.progress(min(1.0, snap.phase_progress), text=f"**{phase[0].upper() + phase[1:]}**{left}")
        return
    if snap.status == "preparing":
        phase = PHASE_WORDS.get(snap.phase, snap.phase)
        st.progress(0.0, text=f"**{words}:** {phase}")
        return
    if snap.status in ("running", "paused"):
        frac = min(1.0, snap.iteration / snap.iterations) if snap.iterations else 0.0
        phase = (
            snap.phase
            if snap.phase.startswith(("training experts", "loading experts"))
            else PHASE_WORDS.get(snap.phase, snap.phase)
        )
        left = f" · about {duration(snap.eta)} left" if snap.eta and snap.status == "running" and snap.iteration else ""
        if snap.status == "running" and phase and phase != PHASE_WORDS["distilling"]:
            text = f"**{phase[0].upper() + phase[1:]}** · step {snap.iteration} of {snap.iterations}"
        else:
            text = f"**{words}** · step {snap.iteration} of {snap.iterations}{left}"
        st.progress(frac, text=text)
        return
    secs = sum(snap.seconds.values()) if snap.seconds else snap.elapsed
    summary = f"**{words}** after {snap.iteration} of {snap.iterations} steps · {duration(secs)}"
    if snap.status == "done":
        st.success(summary, icon=":material/check_circle:")
    elif snap.status == "failed":
        st.error(f"**This run failed.** {snap.message}" if snap.message else summary, icon=":material/error:")
    elif snap.status == "interrupted":
        st.warning(f"{summary}. {snap.message}", icon=":material/warning:")
    else:
        st.info(summary + (f". {snap.message}" if snap.message else ""), icon=":material/stop_circle:")
    if snap.message and snap.status == "done":
        st.caption(snap.message)


def check_words(snap: Snapshot) -> str:
    """How the checks during a run were made, in a few words (its config's ``check`` protocol)."""
    check, final = snap.config.get("check") or {}, snap.config.get("eval") or {}
    nets = check.get("nets", 1)
    words = f"{nets} network{'s' if nets != 1 else ''}"
    if check and (check.get("epochs") != final.get("epochs") or check.get("test_images")):
        words = f"quick check: {words}, {check['epochs']} epochs"
        if check.get("test_images"):
            words += f", {check['test_images']:,} test images"
    return words


def headline(snap: Snapshot, full: dict[str, Any] | None) -> None:
    """Three big numbers: the synthetic set, random real images, all training images."""
    cols = st.columns(3)
    base = snap.baseline
    words = None
    if snap.final:
        value, label = pct(snap.final), f"Distilled set ({snap.final['n']} networks)"
        delta = f"{100 * (snap.final['mean'] - base['mean']):+.1f} points vs random" if base else None
    elif snap.accuracy:
        last, check_base = snap.accuracy[-1], snap.check_baseline or base
        words = check_words(snap)
        short = "quick check" if words.startswith("quick") else words
        value, label = f"{100 * last['mean']:.1f}%", f"Distilled set, step {last['iteration']} ({short})"
        delta = f"{100 * (last['mean'] - check_base['mean']):+.1f} points vs random" if check_base else None
    else:
        value, label, delta = "…", "Distilled set", None
    ipc = snap.config.get("ipc")
    tier = tier_label(snap.config)
    cols[0].metric(label, value, delta, help=f"The last check during the run: {words}." if words else None)
    if base:
        cols[1].metric(f"Random real images ({ipc} per class)", pct(base))
    elif snap.check_baseline:
        cols[1].metric(f"Random real images ({ipc} per class, quick check)", pct(snap.check_baseline),
                       help="Under the checks' quick protocol; the final baseline is measured after the final check.")
    else:
        cols[1].metric(f"Random real images ({ipc} per class)", "measuring…")
    cols[2].metric(
        "All training images",
        f"{100 * full['mean']:.1f}%" if full else "–",
        help=full["source"] if full else "Not measured for this dataset yet.",
    )
    st.caption(f"Settings tier: **{tier}**" if tier != BEFORE_TIERS else "Settings tier: run saved before tiers")


@dataclass(frozen=True)
class Curves:
    """The figures of ``curves``, built once per snapshot version and shared by every viewer (a
    figure is only read after it is built: ``st.plotly_chart`` serialises a copy)."""

    accuracy: go.Figure
    loss: go.Figure | None
    lr: go.Figure | None
    lr_value: float | None
    others: tuple[tuple[str, go.Figure], ...]


def curves_of(snap: Snapshot, full: dict[str, Any] | None) -> Curves:
    accuracy = charts.accuracy_figure(
        [
            {
                "name": snap.config["method"].upper(),
                "accuracy": list(snap.accuracy),
                "final": snap.final,
                "final_iteration": snap.iteration,
                "check_words": check_words(snap),
            }
        ],
        snap.baseline,
        full,
        snap.iterations or snap.iteration,
        snap.config.get("ipc"),
        title="Test accuracy of networks trained on the synthetic images",
        check_baseline=snap.check_baseline,
    )
    rows = list(snap.metrics)
    keys = sorted({k for r in rows for k in r} - {"iteration", "seconds"})
    lr_keys = [k for k in keys if k == "lr" or k.startswith("lr") or k.endswith("_lr")]
    loss_key = "loss" if "loss" in keys else next((k for k in keys if k not in lr_keys), None)
    small = (250 if lr_keys or snap.lr is not None else 330) - charts.TITLE_HEIGHT  # the title is written above
    loss = lr = None
    if loss_key:
        loss = charts.metric_figure(rows, loss_key, "Matching loss<br>lower: closer to the real data", loss_key)
        loss.update_layout(height=small)
    if lr_keys:
        lr = charts.metric_figure(rows, lr_keys[0], "Learned step size of the student", "step size", smooth=False)
        lr.update_layout(height=small)
    others = [k for k in keys if k not in lr_keys and k != loss_key]
    return Curves(
        accuracy, loss, lr, snap.lr, tuple((k, charts.metric_figure(rows, k, k, k, smooth=False)) for k in others[:12])
    )


def snapshot_view(snap: Snapshot, what: Hashable, build: Callable[[], T]) -> T:
    """``build()`` once per (run, snapshot version, ``what``) in this process, shared by every viewer."""
    return VIEWS.get((snap.run_id, snap.version, what), build)


def curves(snap: Snapshot, full: dict[str, Any] | None, key: str = "") -> None:
    """Accuracy beside the baselines (wide), matching loss and learned step size."""
    full_key = (full["mean"], full["source"]) if full else None
    view = snapshot_view(snap, ("curves", full_key), lambda: curves_of(snap, full))
    left, right = st.columns([3, 2])
    with left:
        chartview.show(view.accuracy, key=f"acc-{key}")
    with right:
        if view.loss is not None:
            chartview.show(view.loss, key=f"loss-{key}")
        else:
            st.caption("The matching loss appears after the first steps.")
        if view.lr is not None:
            chartview.show(view.lr, key=f"lr-{key}")
        elif view.lr_value is not None:
            st.metric("Learned step size", f"{view.lr_value:.4g}")
    if view.others:
        names = [k for k, _ in view.others]
        with st.expander(f"Other measurements of the method ({', '.join(names[:6])}{'…' if len(names) > 6 else ''})"):
            cols = st.columns(min(3, len(view.others)))
            for i, (k, fig) in enumerate(view.others):
                with cols[i % len(cols)]:
                    chartview.show(fig, key=f"m-{k}-{key}")


def show_images(snap: Snapshot) -> None:
    if snap.images is None:
        st.info(images.NO_IMAGES)
        return
    view = snapshot_view(
        snap,
        "images",
        lambda: images.per_class_view(snap.images, snap.class_names, snap.config.get("ipc", 1), snap.labels),
    )
    images.show_view(view)


def downloads(snap: Snapshot, services: Services, key: str = "", stacked: bool = False) -> None:
    """PNG grid at any time; the synthetic set (.safetensors, .npz) once the run saved it.
    ``stacked``: one button under the other (for narrow columns). The files are made when a button is
    pressed (or once per snapshot version), not on every redraw."""
    if snap.images is None:
        return
    ipc = snap.config.get("ipc", 1)
    stem = f"{snap.config['method']}-{dataset_label(snap.config['dataset']).replace(' ', '_')}-ipc{ipc}-{snap.run_id}"
    cols = [st.container() for _ in range(3)] if stacked else st.columns(3)
    cols[0].download_button(
        "PNG grid",  # short labels: three buttons fit a projector's 1024 px without being cut off
        lambda: snapshot_view(snap, "grid.png", lambda: images.grid_png(snap.images, ipc)),
        f"{stem}.png",
        "image/png",
        key=f"dl-png-{key}",
        help="The synthetic images as one picture, a column per class.",
        width="stretch",
        icon=":material/download:",
    )
    path = services.store.synthetic_path(snap.run_id)
    if path.exists():
        cols[1].download_button(
            ".safetensors",
            path.read_bytes,
            f"{stem}.safetensors",
            "application/octet-stream",
            key=f"dl-st-{key}",
            help="The synthetic set (images, labels, learned rate and weights where the method has them) as safetensors.",
            width="stretch",
            icon=":material/download:",
        )
        npz = snapshot_view(snap, ("npz", path.stat().st_mtime_ns), lambda: synthetic_npz(path, snap.images))
        if isinstance(npz, bytes):
            cols[2].download_button(
                ".npz",
                npz,
                f"{stem}.npz",
                "application/octet-stream",
                key=f"dl-npz-{key}",
                help="The same synthetic set as a NumPy .npz file.",
                width="stretch",
                icon=":material/download:",
            )
        else:
            cols[2].caption(npz)
    elif snap.status in ACTIVE:
        cols[1].caption("The synthetic set can be downloaded when the run ends.")


def synthetic_npz(path: Path, pixels: torch.Tensor | None) -> bytes | str:
    """The saved synthetic set as .npz bytes, or why it cannot be read."""
    try:
        syn, _ = load_synthetic(path)
    except ValueError as e:
        return str(e)
    return npz_bytes(syn, pixels)


def age(ts: float) -> str:
    d = time.time() - ts
    if d < 90:
        return "just now"
    if d < 5400:
        return f"{d / 60:.0f} min ago"
    if d < 2 * 86400:
        return f"{d / 3600:.0f} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(ts))
