"""Initializations: two to four ways of choosing the starting images, side by side, on one map of
the real data; then the same method started from each, with their accuracy curves overlaid."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st
import torch

from distill_core import data as data_mod
from distill_core import initializers
from distill_core.config import RunConfig, resolve
from distill_core.data.builtin import DATASETS
from distill_core.data.datasets import DataError, fingerprint
from distill_core.initializers import INITIALIZERS, coreset
from distill_core.methods import METHODS
from distill_core.paths import cache_dir
from distill_core.runs.run import ACTIVE
from ui import charts, chartview, images, nav, runview, settings, state

CORESET_MS = (5, 10, 20, 50, 100)  # sample sizes per class of the coreset chart: seconds on digits
UMAP_MAX_POINTS = 4000  # the map fits on a subsample of larger datasets; chosen images are projected onto it


@st.cache_data(show_spinner="Choosing the images…", max_entries=32)
def run_initializer(dataset: str, name: str, ipc: int, seed: int, options_json: str) -> dict:
    """Indices (class-major), scores over the training set, and pixels of the chosen images."""
    data = data_mod.load(dataset)
    res = initializers.create(name, data, ipc, torch.Generator().manual_seed(seed), **json.loads(options_json))
    return {
        "indices": None if res.indices is None else res.indices.cpu().numpy(),
        "scores": None if res.scores is None else res.scores.cpu().float().numpy(),
        "weights": None if res.weights is None else res.weights.cpu().float().numpy(),
        "pixels": data.denormalise(res.images.cpu()),
    }


@st.cache_data(show_spinner="Drawing samples and measuring their error…", max_entries=16)
def coreset_result(dataset: str, name: str, cls: int | None, seed: int, options_json: str) -> dict:
    """``coreset.coreset_experiment`` for these settings (20 draws per m), kept per settings."""
    return coreset.coreset_experiment(
        data_mod.load(dataset), name, cls, CORESET_MS, draws=20, seed=seed, **json.loads(options_json)
    )


@st.cache_resource(show_spinner="Drawing the map of the real images (UMAP, once per dataset)…", max_entries=4)
def umap_map(dataset: str) -> dict:
    """A 2-D UMAP of the training images (pixels), fitted on at most UMAP_MAX_POINTS of them; kept on
    disk in the cache folder, by the dataset's contents, so an app restart does not pay for it (or for numba's compile) again."""
    data = data_mod.load(dataset)
    n = data.x_train.shape[0]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset)[-60:]
    path = cache_dir() / "umap" / f"umap-{safe}-{fingerprint(data)[:16]}-{UMAP_MAX_POINTS}.npz"
    if path.exists():
        with np.load(path) as f:
            return {"sub": f["sub"], "xy": f["xy"], "labels": f["labels"]}
    import umap

    x = data.x_train[:].reshape(n, -1).numpy()
    sub = np.arange(n) if n <= UMAP_MAX_POINTS else np.sort(np.random.default_rng(0).choice(n, UMAP_MAX_POINTS, replace=False))
    # a larger min_dist spreads each class out, so the chosen stars do not hide the real images
    xy = umap.UMAP(n_neighbors=15, min_dist=0.5, random_state=0, n_jobs=1).fit_transform(x[sub])
    out = {"sub": sub, "xy": np.asarray(xy, dtype=np.float32), "labels": data.y_train.numpy()[sub]}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def project(dataset: str, m: dict, indices: np.ndarray) -> np.ndarray:
    """Map positions of training images ``indices``: their own where the map was fitted on them, else
    the position of their nearest mapped neighbour (in pixels)."""
    pos = {int(i): k for k, i in enumerate(m["sub"])}
    out = np.zeros((len(indices), 2))
    missing = [j for j, i in enumerate(indices) if int(i) not in pos]
    for j, i in enumerate(indices):
        if int(i) in pos:
            out[j] = m["xy"][pos[int(i)]]
    if missing:
        data = data_mod.load(dataset)
        x = data.x_train[:].reshape(data.x_train.shape[0], -1)
        near = torch.cdist(x[indices[missing]], x[m["sub"]]).argmin(1).numpy()
        out[missing] = m["xy"][near]
    return out


def column(dataset: str, name: str, ipc: int, seed: int, class_names: tuple[str, ...], m: dict | None) -> dict:
    """One initializer: its option widgets, the images it chooses, their scores and places on the map.
    Returns the options set (those that differ from the defaults)."""
    st.subheader(f"{name}")
    st.caption(settings.init_summary(name))
    opts = settings.option_values(settings.init_options(name), f"init.{name}", columns=1)
    try:
        res = run_initializer(dataset, name, ipc, seed, json.dumps(opts, sort_keys=True))
    except ValueError as e:
        st.error(f"**{name} cannot start here:** {e}")
        return opts
    if res["weights"] is None:
        st.image(
            images.to_pil_grid(res["pixels"], ipc, len(class_names)),
            width="stretch",
            caption="the chosen images, " + ("one row per class" if ipc > 1 else "classes left to right, top to bottom"),
        )
    else:  # each image with the coreset weight it carries
        labels = np.repeat(np.arange(len(class_names)), ipc)
        st.image(
            [images.to_pil(p, 56) for p in res["pixels"]],
            caption=[f"{class_names[c]}: w {w:.3g}" for c, w in zip(labels, res["weights"], strict=True)],
            width=56,
        )
        st.caption(
            "The chosen images with their coreset weights w: how many real images of its class each one stands for "
            "when the class's cost is estimated from the sample (Des Raj weights of the draw; they average to the class size)."
        )
    scores, idx = res["scores"], res["indices"]
    meaning = INITIALIZERS.get(name).score_meaning or "score"
    if scores is not None:
        chartview.show(
            charts.histogram(
                scores, "Scores of all real images", "score", chosen=scores[idx] if idx is not None else None, height=260
            ),
            key=f"hist-{name}",
        )
        st.caption(f"Score: {meaning}. Red marks: the chosen images.")
    else:
        st.caption(
            f"{name} gives no score: "
            + ("every image of a class is equally likely." if idx is not None else "its images are not real images.")
        )
    if m is None:
        return opts
    if idx is None:
        st.caption("Not real images, so they have no place on the map.")
        return opts
    xy_all = m["xy"]
    chosen_xy = project(dataset, m, idx)
    xy = np.concatenate([xy_all, chosen_xy])
    labels = np.concatenate([m["labels"], np.asarray([int(c) for c in np.repeat(np.arange(len(class_names)), ipc)])])
    chosen = np.arange(len(xy_all), len(xy))
    sizes = None
    if scores is not None:
        sizes = np.zeros(len(xy))
        sizes[chosen] = scores[idx]
    chartview.show(
        charts.embedding_figure(xy, labels, class_names, chosen, sizes, "Map of the real images", height=380),
        key=f"map-{name}",
    )
    st.caption(
        "Each dot is a real image, coloured by class; similar images lie close together. Stars: the chosen images"
        + (", larger for a higher score." if scores is not None else ".")
    )
    return opts


CORESET_TEXT = (
    "A *coreset* is a small weighted sample that stands in for the whole class. Sensitivity sampling draws each "
    "real image with a probability that grows with how much it can matter to the k-means cost (far-out images, "
    "small clusters) and weights it by one over that probability, so that rare, costly images are neither missed "
    "nor over-counted. The theorem (Bachem, Lucic and Krause 2017) promises that the weighted sample's cost is "
    "within a small relative error of the full class's cost for *every* choice of centres at once, with the error "
    "shrinking like one over the square root of the sample size m. Uniform sampling, each image weighted n/m, "
    "promises no such thing. The chart measures both: for each m, twenty samples, the worst relative error over a "
    "few sets of centres (the k-means solution and k-means++ seedings), mean and spread. For kernel ridge "
    "regression the same idea uses ridge leverage scores, and the error is how well the sample keeps the "
    "regression's data term for every function of the kernel at once."
)


def coreset_view(dataset: str, class_names: tuple[str, ...], seed: int, init_values: dict[str, dict]) -> None:
    """The coreset guarantee: relative error against m for sensitivity vs uniform samples, on demand."""
    st.divider()
    st.subheader("The coreset guarantee")
    st.markdown(CORESET_TEXT)
    r = st.columns([1, 1, 1])
    name = r[0].selectbox(
        "Importance", coreset.COSTS, key="coreset_init", help="sensitivity: k-means cost; krr-sensitivity: kernel ridge regression"
    )
    which = r[1].selectbox("Class", ["all classes", *class_names], key="coreset_class")
    cls = None if which == "all classes" else class_names.index(which)
    with r[2]:
        st.write("")
        go = st.button("Measure the error", key="coreset_go", icon=":material/query_stats:")
    options = init_values.get(name, {})  # the options set in that initializer's column, where it has one
    settings_key = json.dumps([dataset, name, cls, seed, options], sort_keys=True)
    if go:
        st.session_state["coreset_shown"] = settings_key
    if st.session_state.get("coreset_shown") != settings_key:
        st.caption("Press the button to draw the samples (a few seconds on digits).")
        return
    try:
        res = coreset_result(dataset, name, cls, seed, json.dumps(options, sort_keys=True))
    except ValueError as e:
        st.error(f"**Cannot measure here:** {e}")
        return
    rows = res["rows"]
    ms = [row["m"] for row in rows]
    labels = {"importance": f"{name} (i.i.d., weights 1/(m p))", "uniform": "uniform (weights n/m)"}
    series = {
        label: (ms, [row[s]["mean"] for row in rows], [row[s]["std"] for row in rows]) for s, label in labels.items()
    }
    y = "relative error of the cost" if name == "sensitivity" else "spectral relative error"
    chartview.show(
        charts.error_bars_figure(series, "Error of a weighted sample against its size", "m: images per class", y),
        key="coreset-chart",
    )
    k = f", k = {res['k']}" if res["k"] is not None else ""
    st.caption(
        f"{res['dataset']}, {which}, features {res['features']}{k}; mean ± std over {res['draws']} draws. "
        f"Measured: {res['quantity']}. Same numbers from a terminal: `python -m distill_core coreset --dataset "
        f"{res['dataset']} --init {name}" + (f" --class {cls}" if cls is not None else "") + f" --seed {seed} --out DIR`."
    )


def curves_view(S, group: list[str]) -> None:
    """Accuracy curves of the runs started from each initializer, overlaid, updated live."""
    snaps = [S.snapshot(r) for r in group]
    active = any(s is not None and s.status in ACTIVE for s in snaps)

    @st.fragment(run_every=1.5 if active else None)
    def draw() -> None:
        ss = [S.snapshot(r) for r in group]
        ss = [s for s in ss if s is not None]
        if not ss:
            return
        runview.rerun_when_ended("init-group", any(s.status in ACTIVE for s in ss))
        base = next((s.baseline for s in ss if s.baseline), None)
        check_base = next((s.check_baseline for s in ss if s.check_baseline), None)
        iterations = max(s.iterations or 0 for s in ss)
        curves = [
            {"name": s.config["init"], "accuracy": list(s.accuracy), "final": s.final, "final_iteration": s.iteration,
             "check_words": runview.check_words(s)}
            for s in ss
        ]
        fig = charts.accuracy_figure(
            curves,
            base,
            None,
            iterations,
            ss[0].config.get("ipc"),
            title=f"{ss[0].config['method'].upper()} started from each initializer",
            check_baseline=check_base,
        )
        chartview.show(fig, key="init-curves")
        cols = st.columns(len(ss))
        for col, s in zip(cols, ss, strict=True):
            with col:
                pos = S.manager.queue_position(s.run_id)
                words = runview.STATUS_WORDS.get(s.status, s.status)
                extra = (
                    f" (position {pos} in the queue)"
                    if pos
                    else f", step {s.iteration} of {s.iterations}"
                    if s.status in ACTIVE
                    else ""
                )
                st.markdown(f"**{s.config['init']}**: {words}{extra}")
                if s.final:
                    st.metric("final accuracy", runview.pct(s.final))
                if s.status == "failed":
                    st.error(s.message)

    draw()


def main() -> None:
    S, me = nav.page_start(
        "Initializations side by side",
        "Where a method **starts** matters. Pick two to four ways of choosing the starting images: see which "
        "real images each picks, how it scores them, and where they lie on a map of the whole dataset. "
        "Then start the same method from each and compare the accuracy curves.",
    )
    names = DATASETS.names()
    inits = INITIALIZERS.names()
    # the dataset, IPC and seed in a row, the initializers on a row of their own: beside the others
    # the chosen initializers were cut off at a projector's 1024 px
    row = st.columns(3)
    pick = st.container()
    dataset = settings.bound_choice(row[0].selectbox, "Dataset", "dataset", names, "digits", help=settings.common_help("dataset"))
    preferred = [n for n in ("random", "herding", "sensitivity", "kcenter") if n in inits] or inits[:2]
    chosen = settings.bound(
        pick.multiselect,
        "Initializers (2 to 4)",
        "inits",
        options=inits,
        default=preferred[:3],
        max_selections=4,
        help=settings.common_help("init"),
    )
    ipc = settings.bound(
        row[1].number_input, "Images per class", "ipc", value=1, min_value=1, step=1, help=settings.common_help("ipc")
    )
    seed = settings.bound(row[2].number_input, "Seed", "seed", value=0, min_value=0, step=1, help=settings.common_help("seed"))
    if len(chosen) < 2:
        st.info("Choose at least two initializers to compare.")
        return
    try:
        data = data_mod.load(dataset)
        initializers.check_ipc(data, int(ipc))
    except (ValueError, DataError) as e:
        st.error(f"**Cannot choose images here:** {e}")
        return
    show_map = st.toggle(
        "Show the map of the real images (UMAP)",
        value=True,
        key="umap",
        help="A 2-D picture of the dataset in which similar images lie close together; computed once per dataset.",
    )
    m = umap_map(dataset) if show_map else None
    cols = st.columns(len(chosen))
    init_values = {}
    for col, name in zip(cols, chosen, strict=True):
        with col:
            init_values[name] = column(dataset, name, int(ipc), int(seed), data.class_names, m)

    coreset_view(dataset, data.class_names, int(seed), init_values)

    st.divider()
    st.subheader("Start the same method from each")
    methods = METHODS.names()
    r = st.columns([1, 1, 2])
    method = settings.bound_choice(r[0].selectbox, "Method", "method", methods, "dm", help=settings.common_help("method"))
    recommended = METHODS.get(method).default_iterations(data, int(ipc))
    steps = settings.bound(
        r[1].number_input,
        "Steps",
        "steps",
        value=min(recommended, 200),
        min_value=1,
        max_value=100_000,
        step=50,
        help=settings.common_help("steps") + f" {method.upper()} recommends {recommended}.",
    )
    with r[2]:
        st.write("")
        go = st.button(
            f"Start {method.upper()} from each of the {len(chosen)}",
            type="primary",
            icon=":material/play_arrow:",
            key="start_all",
            help=f"Starts {len(chosen)} runs with the same settings and seed; at most {S.manager.max_concurrent} "
            "work at once, the others wait.",
        )
    with st.expander("Settings of the runs", icon=":material/tune:"):
        net_values = settings.check_and_network_widgets(st.columns(4))
    if go:
        group = []
        for name in chosen:
            cfg = settings.override(
                resolve(
                    RunConfig(
                        dataset=dataset,
                        method=method,
                        init=name,
                        ipc=int(ipc),
                        iterations=int(steps),
                        seed=int(seed),
                        eval_every=max(1, int(steps) // 5),
                        init_options=init_values[name],
                    ),
                    data,
                ),
                net_values,
            )
            group.append(S.submit(cfg, owner=me, label=f"initializations: {', '.join(chosen)}").id)
        st.session_state[state.INIT_GROUP] = group
        st.query_params["group"] = ",".join(group)
    group = st.session_state.get(state.INIT_GROUP) or [g for g in st.query_params.get("group", "").split(",") if g]
    if group:
        curves_view(S, group)
    else:
        st.caption("The curves appear here. Each run also shows up on the Distill and Compare pages.")


main()
