"""Compare runs: every saved run in a table (filter, select, delete), the selected ones side by side."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from distill_core.config import RunConfig
from distill_core.runs.run import ACTIVE
from distill_core.tiers import tier_label
from distill_core.units import duration
from ui import charts, chartview, images, nav, runview, settings, state
from ui.publishedview import published_section
from ui.services import Services
from ui.sweepview import sweep_section
from ui.windowsview import windows_section

ALL = "all"


def table(records) -> pd.DataFrame:
    rows = []
    for r in records:
        gain = None if r.final_mean is None or r.baseline_mean is None else 100 * (r.final_mean - r.baseline_mean)
        rows.append(
            {
                "when": runview.age(r.created),
                "dataset": runview.dataset_label(r.dataset),
                "method": r.method.upper(),
                "start from": r.init,
                "per class": r.ipc,
                "steps": f"{r.iteration}/{r.iterations}",
                "tier": tier_label(r.config_dict),
                "status": runview.STATUS_WORDS.get(r.status, r.status),
                "accuracy": "–" if r.final_mean is None else f"{100 * r.final_mean:.1f} ± {100 * (r.final_std or 0):.1f}%",
                "random real": "–"
                if r.baseline_mean is None
                else f"{100 * r.baseline_mean:.1f} ± {100 * (r.baseline_std or 0):.1f}%",
                "gain (points)": None if gain is None else round(gain, 1),
                "time": duration(r.seconds) if r.seconds else "–",
                "label": r.label,
                "id": r.id,
            }
        )
    return pd.DataFrame(rows)


def side_by_side(S: Services, ids: list[str]) -> None:
    snaps = [s for s in (S.snapshot(i) for i in ids) if s is not None]
    if not snaps:
        return
    curves = [
        {
            "name": f"{s.config['method'].upper()} from {s.config['init']} ({s.run_id})",
            "accuracy": list(s.accuracy),
            "final": s.final,
            "final_iteration": s.iteration,
            "check_words": runview.check_words(s),
        }
        for s in snaps
    ]
    same_base = len({(s.config["dataset"], s.config["ipc"]) for s in snaps}) == 1
    base = snaps[0].baseline if same_base else None
    same_checks = same_base and len({str(s.config.get("check")) for s in snaps}) == 1
    iterations = max((s.iterations or s.iteration) for s in snaps)
    c1, c2 = st.columns(2)
    with c1:
        chartview.show(
            charts.accuracy_figure(
                curves,
                base,
                None,
                iterations,
                snaps[0].config.get("ipc") if same_base else None,
                title="Accuracy during the runs",
                check_baseline=snaps[0].check_baseline if same_checks else None,
            ),
            key="cmp-acc",
        )
        if not same_base:
            st.caption("The runs differ in dataset or images per class, so no common baseline is drawn; see the table.")
    with c2:
        series = {}
        for s in snaps:
            rows = [r for r in s.metrics if "loss" in r and r["loss"] == r["loss"]]
            if rows:
                series[f"{s.config['method'].upper()} ({s.run_id})"] = (
                    [r["iteration"] for r in rows],
                    charts.moving_average([r["loss"] for r in rows]),
                )
        fig = charts.lines_figure(series, "Matching loss (smoothed)", "distillation step", "loss")
        if series and min(min(v[1]) for v in series.values()) > 0:
            fig.update_yaxes(type="log")
        chartview.show(fig, key="cmp-loss")
        st.caption("Losses of different methods measure different things: compare their shapes, not their heights.")
    cols = st.columns(max(3, min(4, len(snaps))))  # at least 3: one run's grid stays a readable size
    for i, s in enumerate(snaps):
        with cols[i % len(cols)]:
            st.markdown(f"**{runview.title(s)}**")
            st.caption(
                f"{runview.STATUS_WORDS.get(s.status, s.status)} · accuracy {runview.pct(s.final)} · random real "
                f"{runview.pct(s.baseline)} · {s.run_id}"
            )
            if s.images is not None:
                st.image(images.to_pil_grid(s.images, s.config.get("ipc", 1), len(s.class_names) or 10), width="stretch")
            if s.status not in ACTIVE:
                runview.downloads(s, S, key=f"cmp-{s.run_id}", stacked=True)
            nav.link("views/inside.py", label="Inside this run", icon=":material/biotech:", query_params={"run": s.run_id})
    cross_arch(snaps)


def run_name(s) -> str:
    return f"{s.config['method'].upper()} from {s.config['init']} ({s.run_id})"


def random_columns(with_archs: list) -> dict[str, tuple]:
    """Name -> (snapshot, whose random baselines it shows). One column "random real" when every run's
    baseline is the same on every network (same dataset, IPC, seed and protocol: the cache gives the
    very same numbers), else one per run."""
    per_arch: dict[str, set] = {}
    for s in with_archs:
        for arch, a in s.accuracy_by_arch.items():
            per_arch.setdefault(arch, set()).add((a["random"]["mean"], a["random"]["std"]))
    if all(len(v) == 1 for v in per_arch.values()):
        return {"random real": tuple(with_archs)}
    return {f"random real ({s.run_id})": (s,) for s in with_archs}


def arch_frame(with_archs: list, archs: list[str], randoms: dict[str, tuple]) -> pd.DataFrame:
    """One row per network: each run's synthetic accuracy, then the random baseline(s), as "mean ± std%"."""
    rows = []
    for arch in archs:
        row = {"network": arch}
        for s in with_archs:
            row[run_name(s)] = runview.pct(s.accuracy_by_arch.get(arch, {}).get("synthetic"))
        for name, group in randoms.items():
            found = [s.accuracy_by_arch[arch]["random"] for s in group if arch in s.accuracy_by_arch]
            row[name] = runview.pct(found[0] if found else None)
        rows.append(row)
    return pd.DataFrame(rows)


def arch_figure(with_archs: list, archs: list[str], randoms: dict[str, tuple]) -> go.Figure:
    """Grouped bars per network: each run's synthetic accuracy (its colour), the random baseline(s) grey."""
    fig = go.Figure()

    def bar(name: str, accs: list, color: str, pattern: str = "") -> None:
        fig.add_bar(
            name=name,
            x=archs,
            y=[None if a is None else 100 * a["mean"] for a in accs],
            error_y={"type": "data", "array": [0 if a is None else 100 * a["std"] for a in accs], "visible": True},
            marker={"color": color, "pattern": {"shape": pattern}},
        )

    for i, s in enumerate(with_archs):
        bar(run_name(s), [s.accuracy_by_arch.get(a, {}).get("synthetic") for a in archs], charts.PALETTE[i % len(charts.PALETTE)])
    for name, group in randoms.items():
        accs = [next((s.accuracy_by_arch[a]["random"] for s in group if a in s.accuracy_by_arch), None) for a in archs]
        bar(name, accs, charts.BASELINE_COLOR, "/" if len(randoms) > 1 else "")
    fig.update_layout(barmode="group")
    return charts.layout(fig, "Accuracy on other networks", "network", "test accuracy (%)")


def cross_arch(snaps: list) -> None:
    """The runs evaluated on other networks (``eval_archs``): per network, each run's synthetic set
    beside the random-real baseline trained on the same network."""
    with_archs = [s for s in snaps if s.accuracy_by_arch]
    if not with_archs:
        return
    archs = list(dict.fromkeys(a for s in with_archs for a in s.accuracy_by_arch))
    randoms = random_columns(with_archs)
    st.markdown("#### Across architectures")
    c1, c2 = st.columns(2)
    with c1:
        st.dataframe(arch_frame(with_archs, archs, randoms), hide_index=True, key="cmp-arch-table")
        st.caption(
            "Final accuracy (mean ± std over the evaluation networks) of the synthetic set trained on each network, "
            "and of random real images at the same images per class on the same network. A set that only suits "
            "the network it was distilled with falls towards the random baseline on the others."
        )
        if len(with_archs) < len(snaps):
            st.caption(f"{len(snaps) - len(with_archs)} of the selected runs were not evaluated on other networks.")
    with c2:
        chartview.show(arch_figure(with_archs, archs, randoms), key="cmp-arch")


def main() -> None:
    S, me = nav.page_start(
        "Compare runs",
        "Every run started in this app is saved (settings, curves, images) and listed here, also after a restart. "
        "Select rows to see the runs side by side.",
    )
    if S.interrupted:
        st.warning(
            f"{len(S.interrupted)} run(s) were still going when the app last stopped; they are marked **Interrupted** "
            "and keep what they had saved. An interrupted run can be resumed below."
        )
    records = S.store.list(limit=1000)
    if not records:
        st.info("No runs saved yet. Start one on the **Distill** page.")
        return
    f = [*st.columns(3), *st.columns([1, 2])]  # two rows: five in one cut the chosen values off at 1024 px
    datasets = [ALL] + sorted({r.dataset for r in records})
    methods = [ALL] + sorted({r.method for r in records})
    statuses = [ALL] + sorted({r.status for r in records})
    ds = settings.bound(
        f[0].selectbox, "Dataset", "dataset", options=datasets, format_func=lambda d: d if d == ALL else runview.dataset_label(d)
    )
    me_only = settings.bound(
        f[1].selectbox,
        "Whose",
        "whose",
        options=["everyone", "this session"],
        help="Runs of every browser session, or only those you started in this one.",
    )
    md = settings.bound(f[2].selectbox, "Method", "method", options=methods, format_func=lambda m: m if m == ALL else m.upper())
    stt = settings.bound(
        f[3].selectbox,
        "Status",
        "status",
        options=statuses,
        format_func=lambda s: s if s == ALL else runview.STATUS_WORDS.get(s, s),
    )
    text = settings.bound(f[4].text_input, "Search (label, start, id)", "q", value="")
    shown = [
        r
        for r in records
        if (ds == ALL or r.dataset == ds)
        and (md == ALL or r.method == md)
        and (stt == ALL or r.status == stt)
        and (me_only == "everyone" or r.owner == me)
        and (not text or text.lower() in f"{r.label} {r.init} {r.id}".lower())
    ]
    st.caption(f"{len(shown)} of {len(records)} runs.")
    df = table(shown)
    url_sel = [i for i in st.query_params.get("runs", "").split(",") if i]
    default_rows = [k for k, r in enumerate(shown) if r.id in url_sel]
    event = st.dataframe(
        df,
        hide_index=True,
        on_select="rerun",
        selection_mode="multi-row",
        key="runs_table",
        selection_default={"selection": {"rows": default_rows}} if default_rows else None,
        column_config={
            "gain (points)": st.column_config.NumberColumn(help="accuracy minus the random-real baseline, in percentage points")
        },
    )
    rows = list(event.selection.rows) if event is not None else []
    ids = [shown[k].id for k in rows if k < len(shown)]
    if ids:
        st.query_params["runs"] = ",".join(ids)
    elif "runs" in st.query_params and not default_rows:
        del st.query_params["runs"]
    if not ids:
        st.caption("Select one or more rows (the boxes on the left) to compare them.")
        return
    a, b, _ = st.columns([1, 1, 3])
    # only the session that started a run may delete or resume it; every session may look at it
    owned = [i for i in ids if (rec := S.store.get(i)) is not None and rec.owner == me]
    live_mine = [i for i in owned if S.live(i) is not None]
    if owned and a.button(
        f"Delete {len(owned)} selected",
        key="delete",
        icon=":material/delete:",
        help="Removes the runs and their files for good.",
        disabled=bool(live_mine),
    ):
        st.session_state[state.CONFIRM_DELETE] = owned
    if len(owned) < len(ids):
        st.caption(
            f"{len(ids) - len(owned)} of the selected runs were started by another session: you can compare them, "
            "but only that session can delete or resume them."
        )
    interrupted = [i for i in owned if S.store.get(i).status == "interrupted"]
    if interrupted and b.button(
        f"Resume {len(interrupted)} interrupted",
        key="resume",
        icon=":material/replay:",
        help="Continue from the last saved images (the method's optimizer state starts afresh).",
    ):
        for i in interrupted:
            rec = S.store.get(i)
            try:
                run = S.submit(RunConfig.from_dict(rec.config_dict), owner=me, label=f"resumed from {i}", resume_from=i)
            except ValueError as e:
                st.error(str(e))
            else:
                st.session_state[state.CURRENT_RUN] = run.id  # the Distill page shows it
        st.success("Resumed from the last saved images: watch it on the Distill page; it also appears in this table.")
    if live_mine:
        st.caption("Runs that are still going cannot be deleted; stop them first.")
    pending = st.session_state.get(state.CONFIRM_DELETE)
    if pending:
        st.warning(f"Delete {len(pending)} run(s) and their files for good?")
        y, n, _ = st.columns([1, 1, 4])
        if y.button("Yes, delete", key="confirm_delete", type="primary"):
            for i in pending:
                rec = S.store.get(i)
                if rec is not None and rec.owner == me and S.live(i) is None:
                    S.store.delete(i)
            st.session_state.pop(state.CONFIRM_DELETE, None)
            st.query_params.pop("runs", None)
            st.rerun()
        if n.button("Cancel", key="cancel_delete"):
            st.session_state.pop(state.CONFIRM_DELETE, None)
            st.rerun()
    st.divider()
    side_by_side(S, ids)


main()
published_section()  # the finished runs beside the published figures, as `reproduce` writes them
sweep_section()  # accuracy against IPC: after main(), so it shows whatever main() returned early on

windows_section()  # DATM: which window of the experts' epochs wins at which IPC
