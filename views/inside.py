"""Inside the method: what a run learns besides the images, read from its snapshot (live or saved).

Expert trajectories and the window of start epochs (MTT, DATM, IADD), importance weights per layer
over time (IADD), importance-sampling weights of real images, soft labels, initializer scores, the
images over time. Sections a run has nothing for say what would fill them.
"""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from distill_core import data as data_mod
from distill_core.config import RunConfig, resolve
from distill_core.initializers import INITIALIZERS
from distill_core.methods import METHODS, experts, weighs
from distill_core.paths import cache_dir
from distill_core.runs.run import ACTIVE, Snapshot
from ui import charts, chartview, images, nav, runview, settings
from ui.services import Services

KNOWN_EXTRAS = {"sampling_weights", "sampling_batch_loss"}

# what scores a real image for importance sampling, per method that draws real batches
SCORER = {
    "dm": "a network trained on the current synthetic set (briefly at the first refresh, a little more at each later one)",
    "dc": "the network the method is training on the synthetic set",
    "dsa": "the network the method is training on the synthetic set",
    "krr": "the kernel ridge regression fitted on the synthetic set (its residual on each real image)",
}


def run_options(S: Services, me: str) -> tuple[list[str], dict[str, str]]:
    ids, labels = [], {}
    for r in sorted(S.manager.runs(owner=me), key=lambda r: r.snapshot().created, reverse=True):
        s = r.snapshot()
        ids.append(r.id)
        labels[r.id] = f"yours · {runview.title(s)} · {runview.STATUS_WORDS.get(s.status, s.status)} · {r.id}"
    for rec in S.store.list(limit=200):
        if rec.id not in labels:
            ids.append(rec.id)
            labels[rec.id] = (
                f"{runview.age(rec.created)} · {rec.method.upper()} from {rec.init} · {runview.dataset_label(rec.dataset)} · "
                f"{rec.ipc} per class · {runview.STATUS_WORDS.get(rec.status, rec.status)} · {rec.id}"
            )
    return ids, labels


@st.cache_data(show_spinner="Reading the experts' trajectories…", max_entries=8)
def expert_distances(config_json: str) -> dict | None:
    """Per expert: distance of its parameters from its start, epoch by epoch (None when none is trained)."""
    cfg = RunConfig.from_dict(json.loads(config_json))
    data = data_mod.load(cfg.dataset)
    cfg = resolve(cfg, data)
    data, _ = cfg.data_for(data, cache_dir())  # the images the run's experts trained on (ZCA-whitened where it whitened)
    spec = cfg.method_config().expert_spec()
    out = experts.distances_from_start(data, cfg.net, cfg.strategy, spec, cache_dir())
    return {"distances": out, "epochs": spec.epochs} if out else None


def section_experts(snap: Snapshot, absent: list[tuple[str, str]]) -> None:
    method = snap.config["method"]
    if not METHODS.get(method).declares.experts:
        absent.append(
            (
                "Expert trajectories and the matching window",
                f"{method.upper()} does not use expert trajectories. Trajectory-matching methods (MTT, DATM, IADD) first train "
                "*expert* networks on all the real images and save their weights after every epoch; the synthetic images "
                "are then changed so that a student trained on them for a few steps lands where an expert landed a few "
                "epochs later.",
            )
        )
        return
    st.subheader("Expert trajectories and the matching window")
    d = expert_distances(json.dumps(snap.config))
    starts = [r["start_epoch"] for r in snap.metrics if "start_epoch" in r and r["start_epoch"] == r["start_epoch"]]
    opts = snap.config.get("options", {})
    m = opts.get("expert_epochs", 2)
    snapshots = opts.get("expert_checkpoints") or 1  # > 1: the trajectory's "epochs" are snapshots within a pass
    unit = "expert epoch" if snapshots == 1 else f"expert snapshot (1/{snapshots} of a pass)"
    c1, c2 = st.columns(2)
    with c1:
        if d is None:
            st.info("The experts of this run are not on this machine (yet): they are trained when the run starts.")
        else:
            series = {f"expert {k + 1}": (list(range(len(v))), v) for k, v in enumerate(d["distances"])}
            fig = charts.lines_figure(series, "How far each expert's weights moved", unit, "distance from its start")
            if starts:
                lo, hi = min(starts), max(starts) + m
                fig.add_vrect(
                    x0=lo,
                    x1=hi,
                    fillcolor="rgba(214,39,40,0.12)",
                    line_width=0,
                    annotation_text="epochs the run matched",
                    annotation_position="top left",
                )
            chartview.show(fig, key="experts")
            st.caption(
                "Each line is one expert network trained on the real data. Early epochs move fast (easy patterns), "
                "late ones slowly (hard patterns). The shaded band is the part of the trajectories this run matched."
            )
    with c2:
        if starts:
            its = [r["iteration"] for r in snap.metrics if "start_epoch" in r and r["start_epoch"] == r["start_epoch"]]
            fig = charts.lines_figure({}, "Start epoch of each matching step", "distillation step", unit)
            fig.add_scatter(x=its, y=starts, mode="markers", marker={"size": 6, "color": charts.PALETTE[1]}, name="start epoch")
            upper = [r.get("upper_bound") for r in snap.metrics]
            if any(u is not None for u in upper):
                fig.add_scatter(
                    x=[r["iteration"] for r in snap.metrics],
                    y=upper,
                    mode="lines",
                    name="upper bound of the window",
                    line={"width": 3, "color": charts.PALETTE[0]},
                )
            chartview.show(fig, key="starts")
            st.caption(
                "Each step starts the student at a random expert epoch inside the window and asks it to reach the "
                f"expert {m} epoch(s) later. DATM moves the window's upper end up over the run: easy early epochs "
                "first, then harder ones."
            )
        else:
            st.caption("The start epochs appear once the run has made steps.")


def layer_series(snap: Snapshot, history: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Vectors that change over time: from the extras' history, and metrics named "<group>/<part>"."""
    groups: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for row in history:
        for k, v in row.items():
            if k == "iteration" or k in KNOWN_EXTRAS or not isinstance(v, list) or len(v) > 64:
                continue
            g = groups.setdefault(k, {})
            for i, x in enumerate(v):
                xs, ys = g.setdefault(f"{k}[{i}]", ([], []))
                xs.append(row["iteration"])
                ys.append(x)
    for r in snap.metrics:
        for k, v in r.items():
            if "/" in k and v == v:
                group, part = k.split("/", 1)
                xs, ys = groups.setdefault(group, {}).setdefault(part, ([], []))
                xs.append(r["iteration"])
                ys.append(v)
    return groups


def history_pairs(extras: dict) -> list[tuple[str, list[str]]]:
    """Extras of the form ``<p>_history`` (T, L) with ``<p>_history_iteration`` (T,) and per-column
    names from scalar extras ``<p>/<name>`` (how IADD publishes its weights per layer)."""
    out = []
    for k, v in extras.items():
        if k.endswith("_history") and v.dim() == 2 and f"{k}_iteration" in extras:
            prefix = k[: -len("_history")]
            names = [n.split("/", 1)[1] for n in extras if n.startswith(prefix + "/")]
            out.append((prefix, names if len(names) == v.shape[1] else [str(i) for i in range(v.shape[1])]))
    return out


def handled_extras(extras: dict) -> set[str]:
    keys = set(KNOWN_EXTRAS)
    for prefix, _ in history_pairs(extras):
        keys |= {k for k in extras if k.startswith(prefix + "/") or k.startswith(prefix + "_history")}
    return keys


def section_layers(snap: Snapshot, history: list[dict], absent: list[tuple[str, str]]) -> None:
    pairs = history_pairs(snap.extras)
    groups: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for prefix, names in pairs:
        h = snap.extras[f"{prefix}_history"].float()
        its = snap.extras[f"{prefix}_history_iteration"].float().tolist()
        groups[prefix] = {name: (its, h[:, i].tolist()) for i, name in enumerate(names)}
    if not groups:
        groups = layer_series(snap, [{k: v for k, v in row.items() if k not in handled_extras(snap.extras)} for row in history])
    if not groups:
        absent.append(
            (
                "Importance weights per layer over time",
                "This run learned no per-layer weights. IADD (importance-aware adaptive distillation) learns how much each "
                "layer of the network counts in the trajectory-matching loss, and this chart shows those weights changing "
                "as the run goes on; MTT and DATM weigh all layers alike.",
            )
        )
        return
    st.subheader("Importance weights per layer over time")
    for name, series in groups.items():
        chartview.show(
            charts.lines_figure(series, f"{name.replace('_', ' ')} of each layer", "distillation step", "weight", height=420),
            key=f"layers-{name}",
        )
    st.caption(
        "A line per layer (parameter tensor, named as in the network). A layer whose weight rises counts more in the "
        "matching loss; equal weights would all sit at 1."
    )


def section_sampling(snap: Snapshot, absent: list[tuple[str, str]]) -> None:
    w = snap.extras.get("sampling_weights")
    if w is None:
        why = "" if snap.config.get("sampling") == "importance" else " (it drew real images uniformly)"
        absent.append(
            (
                "Importance sampling of real images",
                f"This run has no sampling weights{why}. With *importance sampling* (setting 'Real images drawn' on the Distill "
                "page), methods that compare with real batches draw more often the real images a network still gets wrong: "
                "probability ∝ the image's loss, normalised within its class.",
            )
        )
        return
    st.subheader("Importance sampling of real images")
    scorer = SCORER.get(snap.config["method"], "the method's current model")
    w = w.float().numpy()
    scored = w > 0
    pool = (
        ""
        if scored.all()
        else f" Each refresh scores a fresh random pool, {int(scored.sum()):,} of the {w.size:,} real images now; the "
        "draws come from it until the next refresh, so over many refreshes an image's chance stays proportional to "
        "its loss."
    )
    st.caption(
        f"Each real image is drawn with probability proportional to its loss under {scorer}, normalised within its "
        f"class, with replacement; the scores are refreshed every few steps.{pool}"
    )
    c1, c2 = st.columns([2, 3])
    with c1:
        chartview.show(
            charts.histogram(w[scored], "Sampling probability of each scored real image", "probability within its class", height=300),
            key="sampw",
        )
    with c2:
        top = np.argsort(-w)[:12]
        st.markdown("**The 12 real images drawn most often now**")
        thumbs = images.real_thumbs(snap.config["dataset"], tuple(int(i) for i in top))
        names = snap.class_names
        y = real_labels(snap.config["dataset"], tuple(int(i) for i in top))
        st.image(thumbs, width=72, caption=[names[c] if c < len(names) else str(c) for c in y])
        st.caption(f"The images {scorer} gets most wrong; the method sees them more often.")
    section_batch_loss(snap)


def section_batch_loss(snap: Snapshot) -> None:
    """Mean loss of the drawn real images against a uniform batch's, per refresh period."""
    h = snap.extras.get("sampling_batch_loss")
    if h is None or h.dim() != 2 or h.shape[0] == 0:
        return
    h = h.float().numpy()
    periods = list(range(1, h.shape[0] + 1))
    chartview.show(
        charts.lines_figure(
            {"drawn batches (importance)": (periods, h[:, 0].tolist()), "uniform batches (expected)": (periods, h[:, 1].tolist())},
            "Mean loss of the real images a step sees",
            "refresh period",
            "mean loss under the scorer",
            height=280,
        ),
        key="sampling_batch_loss",
    )
    ratio = h[-1, 0] / max(h[-1, 1], 1e-12)
    st.caption(
        f"In the latest period the drawn batches' mean loss was {h[-1, 0]:.3g}, against {h[-1, 1]:.3g} for uniform "
        f"batches ({ratio:.1f}x): this is how much importance sampling shifts the method's attention to the hard images."
    )


def section_soft_labels(snap: Snapshot, absent: list[tuple[str, str]]) -> None:
    labels = snap.labels
    if labels is None or not labels.is_floating_point() or labels.dim() != 2:
        absent.append(
            (
                "Soft labels",
                "This run uses hard labels: each synthetic image belongs to exactly one class. DATM learns *soft* labels, "
                "a probability for every class per image, starting from what the expert networks predict; they carry "
                'more information ("this 7 looks a bit like a 1").',
            )
        )
        return
    st.subheader("Soft labels")
    p = labels.float().softmax(1).numpy()
    names = snap.class_names or tuple(str(i) for i in range(p.shape[1]))
    ipc = snap.config.get("ipc", 1)
    rows = [f"{names[i // ipc]} #{i % ipc + 1}" for i in range(p.shape[0])]
    chartview.show(
        charts.heatmap(
            p[:100],
            names,
            rows[:100],
            "Probability of each class for each synthetic image",
            "class",
            "synthetic image",
            height=max(300, 22 * min(100, len(rows))),
        ),
        key="soft",
    )


@st.cache_data(show_spinner=False, max_entries=32)
def real_labels(dataset: str, indices: tuple[int, ...]) -> list[int]:
    return data_mod.load(dataset).y_train[list(indices)].tolist()


def section_init(snap: Snapshot, absent: list[tuple[str, str]]) -> None:
    s = snap.init_scores
    if s is None:
        absent.append(
            (
                "Scores of the initializer",
                f"{snap.config['init']} gives no score to the real images. Initializers such as herding, k-center, k-means "
                "and sensitivity sampling score every real image; the Initializations page compares them side by side.",
            )
        )
        return
    st.subheader(f"Where the run started: {snap.config['init']}")
    s = s.float().numpy()
    idx = snap.init_indices.numpy() if snap.init_indices is not None else None
    chartview.show(
        charts.histogram(s, "Scores of all real images (red: chosen)", "score", chosen=s[idx] if idx is not None else None),
        key="initscores",
    )
    init = snap.config["init"]
    meaning = INITIALIZERS.get(init).score_meaning if init in INITIALIZERS else None  # a retired one: no words
    if meaning:
        st.caption(f"Score: {meaning}.")
    if snap.weights is not None:
        section_weights(snap)


def section_weights(snap: Snapshot) -> None:
    """The coreset weights the synthetic set carries, and where the run uses them (``syn_weights``)."""
    w = snap.weights.float().numpy()
    ipc = max(1, snap.config.get("ipc", 1))
    names = snap.class_names or tuple(str(c) for c in range(len(w) // ipc))
    labels = [f"{names[i // ipc]} #{i % ipc + 1}" for i in range(len(w))]
    title = "Coreset weight of each synthetic image (real images of its class it stands for)"
    fig = charts.bars(labels, w.tolist(), title, "weight") if len(w) <= 200 else charts.histogram(w, title, "weight")
    chartview.show(fig, key="initweights")
    cfg = snap.config
    method = cfg.get("method", "")
    own = weighs(method) if method in METHODS else None
    used = [f"{method.upper()} weighs {own}"] if own and (cfg.get("options") or {}).get("syn_weights") == "coreset" else []
    used += ["the evaluation weighs each image's loss"] if (cfg.get("eval") or {}).get("syn_weights") == "coreset" else []
    where = f"{method.upper()}'s option, which weighs {own}, and " if own else ""
    st.caption(
        "This run uses them (setting syn_weights: coreset): " + "; ".join(used) + "." if used
        else "This run does not use them: every synthetic image counts alike. Setting syn_weights to coreset "
        f"({where}the checks' under Settings, which weighs the evaluation's loss) uses them."
    )


def section_frames(S: Services, snap: Snapshot) -> None:
    st.subheader("The images over time")
    frames = S.store.frames(snap.run_id)
    if len(frames) < 2:
        st.caption("Saved frames appear here as the run goes on.")
        return
    it = st.select_slider("Step", options=frames, value=frames[-1], key="frame")
    px = S.store.frame(snap.run_id, it)
    images.show_per_class(px, snap.class_names, snap.config.get("ipc", 1), max_classes=20, cell=72)


def section_other(snap: Snapshot) -> None:
    rest = {k: v for k, v in snap.extras.items() if k not in handled_extras(snap.extras)}
    if not rest:
        return
    st.subheader("Other things the method exposes")
    for k, v in rest.items():
        v = v.float()
        if v.dim() == 0:
            st.metric(k, f"{float(v):.4g}")
        elif v.dim() == 1 and v.numel() <= 64:
            chartview.show(
                charts.bars([str(i) for i in range(v.numel())], v.tolist(), k, k), key=f"x-{k}")
        elif v.dim() == 1:
            chartview.show(charts.histogram(v.numpy(), k, k), key=f"x-{k}")
        elif v.dim() == 2:
            chartview.show(
                charts.heatmap(v[:200].numpy(), range(v.shape[1]), range(min(200, v.shape[0])), k, "", ""),
                key=f"x-{k}",
            )
        else:
            st.caption(f"{k}: a tensor of shape {tuple(v.shape)}")


def main() -> None:
    S, me = nav.page_start(
        "Inside the method",
        "What a run learns **besides the images**: the expert trajectories it imitates, weights it gives to layers "
        "or to real images, soft labels. Pick one of your runs or a past one.",
    )
    ids, labels = run_options(S, me)
    if not ids:
        st.info("No runs yet. Start one on the **Distill** page; it will show up here.")
        return
    url_run = st.query_params.get("run")
    if url_run and url_run not in ids and S.store.get(url_run) is not None:
        ids.insert(0, url_run)
        labels[url_run] = f"run {url_run}"
    run_id = settings.bound(st.selectbox, "Run", "run", options=ids, format_func=lambda i: labels.get(i, i))
    snap = S.snapshot(run_id)
    if snap is None:
        st.warning("This run is gone (deleted).")
        return
    active = snap.status in ACTIVE

    @st.fragment(run_every=2.0 if active else None)
    def draw() -> None:
        s = S.snapshot(run_id)
        st.markdown(
            f"**{runview.title(s)}**: {runview.STATUS_WORDS.get(s.status, s.status)}, step {s.iteration} of {s.iterations}"
        )
        st.caption(settings.method_summary(s.config["method"]))
        history = S.store.extras_history(run_id)
        absent: list[tuple[str, str]] = []
        section_experts(s, absent)
        section_layers(s, history, absent)
        section_sampling(s, absent)
        section_soft_labels(s, absent)
        section_init(s, absent)
        section_other(s)
        if absent:
            with st.expander(
                f"Not in this run: {', '.join(t.lower() for t, _ in absent)}", icon=":material/info:", expanded=len(absent) == 5
            ):
                for t, text in absent:
                    st.markdown(f"**{t}.** {text}")

    draw()
    section_frames(S, snap)


main()
