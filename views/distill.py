"""Distill: choose a dataset, a starting point and a method, start a run and watch it live."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import streamlit as st

from distill_core import data as data_mod
from distill_core.config import DEVICES, SAMPLINGS, RunConfig, recount_overrides, resolve
from distill_core.data.builtin import DATASETS
from distill_core.data.datasets import DataError
from distill_core.initializers import INITIALIZERS
from distill_core.methods import METHODS
from distill_core.runs.estimates import Estimate, estimate, heavy_advice, tier_cost
from distill_core.runs.run import ACTIVE
from distill_core.runs.store import is_run_id
from distill_core.tiers import TIERS, default_tier, paper_settings
from ui import nav, runview, settings, state, uploads
from ui.cache import VIEWS
from ui.services import Services

MAX_STEPS = 100_000  # a link cannot start a run of days
QUICK_STEPS = 300  # the app's default length: a first result within a minute on a laptop
CELL_MAX_CHECKS = 6  # accuracy checks per run when "check every" is left automatic
FULL_REFRESH = 10.0  # seconds a full-data reference lookup is reused (it changes once, when measured)
AUTO_TIER = "auto"
# the run's ZCA whitening: the tier's choice (on for MTT, IADD and DATM on colour images in the paper tier), or the user's
ZCA_CHOICES = {"auto": "as the tier says", "on": "on", "off": "off"}
TIER_COSTS = "tier_costs_for"  # session state: the configs whose tiers' time was asked for
TIER_HELP = (
    "**quick**: settings sized for this machine (fewer steps, smaller real batches, a shorter final check). "
    "**paper**: the authors' settings (DM 20,000 steps with 256 real images per class, DC/DSA's loops, MTT/DATM's 100 "
    "experts, a final check of 20 networks x 1,000 epochs): hours on a GPU, days on a CPU; compare with the published "
    "figures. **auto**: paper on a CUDA GPU for MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, quick elsewhere. "
    "Whatever you set yourself (steps, settings, the check) overrides the tier, and the run says so."
)


def uploads_dir(S: Services) -> Path:
    return S.store.root / "uploads"


def dataset_options(S: Services, me: str) -> list[str]:
    return DATASETS.names() + uploads.visible(uploads_dir(S), me)


def on_upload(S: Services, me: str) -> None:
    """Save and validate the uploaded file (in this session's folder unless shared); select it when it
    loads, else say why not."""
    f = st.session_state.get(state.UPLOAD)
    if f is None:
        return
    root = uploads_dir(S)
    folder = uploads.shared_folder(root) if st.session_state.get(state.SHARE_UPLOAD) else uploads.session_folder(root, me)
    # getvalue() of an UploadedFile (a BytesIO over Streamlit's bytes, unread) is those same bytes, not a
    # copy (getbuffer() would copy them); save_and_validate judges their length before anything else
    ok, message, path = uploads.save_and_validate(f.name, f.getvalue(), folder)
    st.session_state[state.UPLOAD_MESSAGE] = ("success" if ok else "error", message)
    if ok:
        st.session_state["dataset"] = str(path)


@st.cache_data(show_spinner="Loading the dataset…", max_entries=8)
def dataset_facts(name: str) -> dict:
    d = data_mod.load(name)
    return {
        "n": d.x_train.shape[0],
        "classes": d.num_classes,
        "min_count": min(d.class_counts()),
        "size": d.im_size,
        "channels": d.channels,
    }


def my_runs(S: Services, me: str) -> list:
    return sorted(S.manager.runs(owner=me), key=lambda r: r.snapshot().created, reverse=True)


def choose_run(S: Services, me: str) -> str | None:
    """The run this view shows: ?run=<id> from a link, else the session's latest."""
    mine = my_runs(S, me)
    url_run = st.query_params.get("run")
    url_run = url_run if is_run_id(url_run) else None  # a crafted ?run= names no run
    current = st.session_state.get(state.CURRENT_RUN) or url_run
    if url_run and url_run != st.session_state.get(state.URL_RUN_SEEN):
        st.session_state[state.URL_RUN_SEEN] = url_run
        current = url_run
    if len(mine) > 1:
        ids = [r.id for r in mine]
        if current not in ids and current is not None:
            ids.insert(0, current)
        labels = {
            r.id: f"{runview.title(r.snapshot())} · {runview.STATUS_WORDS.get(r.snapshot().status, '')} · {r.id}" for r in mine
        }
        current = st.selectbox(
            "Show run",
            ids,
            index=ids.index(current) if current in ids else 0,
            format_func=lambda i: labels.get(i, f"run {i}"),
            key="show_run",
            help="Your runs in this browser session, newest first. They keep going while you look at another page.",
        )
    if current:
        st.session_state[state.CURRENT_RUN] = current
        st.query_params["run"] = current
    return current


def controls(S: Services, run_id: str, me: str, status: str) -> None:
    run = S.manager.get(run_id)
    if run is None or status not in ACTIVE:
        return
    if S.manager.owner(run_id) != me:
        st.caption("Started in another browser session: you can watch it, not control it.")
        return
    c1, c2, c3, _ = st.columns([1, 1, 1, 3])
    paused = status == "paused"
    # callbacks run before the rerun the click causes, so the redraw already shows the new state
    c1.button(
        "Resume" if paused else "Pause",
        key="pause",
        icon=":material/play_arrow:" if paused else ":material/pause:",
        width="stretch",
        disabled=status in ("queued", "preparing"),
        on_click=run.resume if paused else run.pause,
        help="Pause after the current step; the images stay as they are until you resume.",
    )
    c2.button(
        "Step",
        key="step",
        icon=":material/skip_next:",
        width="stretch",
        disabled=not paused,
        on_click=run.step_once,
        help="While paused: make exactly one more step and look at what changed.",
    )
    c3.button(
        "Stop",
        key="stop",
        icon=":material/stop:",
        width="stretch",
        on_click=S.manager.stop,
        args=(run_id,),
        help="End the run now; its images are still checked (final accuracy) and saved.",
    )


def live_view(S: Services, run_id: str, me: str, full_of) -> None:
    snap = S.snapshot(run_id)
    if snap is None:
        st.warning(f"No run {run_id} here: it may have been deleted.")
        return
    owned = S.manager.owner(run_id) == me
    every = runview.poll_seconds(snap.status, owned, S.manager.queue_position(run_id))
    first = [snap]  # the first draw uses the snapshot read above; the fragment's reruns read anew

    @st.fragment(run_every=every)
    def draw() -> None:
        s = first.pop() if first else S.snapshot(run_id)
        runview.rerun_when_ended(run_id, s.status in ACTIVE)
        if every is not None and runview.poll_seconds(s.status, owned, S.manager.queue_position(run_id)) != every:
            st.rerun()  # queued -> running, paused <-> running: the whole page sets the new interval
        st.subheader(runview.title(s))
        runview.status_block(s, S.manager.queue_position(run_id), S)
        controls(S, run_id, me, s.status)
        if s.status == "queued":
            return
        full = full_of(s)
        runview.headline(s, full)
        st.markdown("##### Synthetic images, one column per class")
        runview.show_images(s)
        runview.curves(s, full, key=run_id)
        runview.downloads(s, S, key=run_id)

    draw()


def main() -> None:
    S, me = nav.page_start(
        "Distill a dataset",
        "Compress a training set into **a few synthetic images per class**, then check how well a network "
        "trained on them alone does, beside the same number of **random real images**.",
    )
    guided = settings.guided_keys()
    if guided:
        st.info(
            "**Guided mode**: the settings chosen by the link you opened are locked. Press **Start**.", icon=":material/lock:"
        )

    with st.expander("Use your own images (.npz or a .zip of class folders)", icon=":material/upload:"):
        st.markdown(
            "An **.npz** with arrays `x_train`, `y_train`, `x_test`, `y_test` (images N×H×W, N×H×W×C or N×C×H×W, "
            "uint8 or float in [0, 1]; labels 0…C−1), or a **.zip** with one folder of images per class "
            "(optionally under `train/` and `test/`)."
        )
        st.checkbox(
            "Share it with everyone using this app",
            key=state.SHARE_UPLOAD,
            help="Off: only this browser session sees the file in its dataset list. On: every session on this server does.",
        )
        st.file_uploader(
            "Dataset file", type=None, key=state.UPLOAD, on_change=on_upload, args=(S, me), disabled=settings.locked("dataset")
        )
        st.caption(uploads.upload_caption())
        msg = st.session_state.get(state.UPLOAD_MESSAGE)
        if msg:
            (st.error if msg[0] == "error" else st.success)(msg[1])

    names = dataset_options(S, me)
    # two rows of three: six in one row cut the chosen values off at a projector's 1024 px ("rand…")
    c = [*st.columns(3), *st.columns(3)]
    dataset = settings.bound_choice(
        c[0].selectbox, "Dataset", "dataset", names, "digits", format_func=runview.dataset_label, help=settings.common_help("dataset")
    )
    inits = INITIALIZERS.names()
    init_help = settings.common_help("init") + "\n\n" + "\n\n".join(f"**{n}**: {settings.init_summary(n)}" for n in inits)
    init = settings.bound_choice(c[1].selectbox, "Start from", "init", inits, "random", help=init_help)
    methods = METHODS.names()
    method_help = (
        settings.common_help("method")
        + "\n\n"
        + "\n\n".join(f"**{n.upper()}**: {settings.method_summary(n)}" for n in methods)
    )
    method = settings.bound_choice(c[2].selectbox, "Method", "method", methods, "dm", help=method_help)
    ipc = settings.bound(
        c[3].number_input, "Images per class", "ipc", value=1, min_value=1, step=1, help=settings.common_help("ipc")
    )

    try:
        facts = dataset_facts(dataset)
        data = data_mod.load(dataset)
    except DataError as e:
        st.error(f"**The dataset {runview.dataset_label(dataset)} cannot be loaded here.** {e}")
        facts = data = None

    tier_choice = settings.bound_choice(
        c[5].selectbox, "Settings tier", "tier", [AUTO_TIER, *TIERS], AUTO_TIER, help=TIER_HELP
    )
    tier = default_tier(dataset, st.session_state.get("device") or "auto") if tier_choice == AUTO_TIER else tier_choice
    recommended = METHODS.get(method).default_iterations(data, int(ipc)) if data is not None else QUICK_STEPS
    auto_steps = min(recommended, QUICK_STEPS)
    if tier == "paper" and data is not None:
        # the paper tier's own length, not the app's quick cap
        recommended = auto_steps = paper_settings(method, dataset, data.num_classes, int(ipc), data.channels).iterations or recommended
    steps = settings.bound(
        c[4].number_input,
        "Steps",
        "steps",
        value=None,
        min_value=1,
        max_value=MAX_STEPS,
        step=50,
        placeholder=f"{auto_steps} ({tier})",
        help=settings.common_help("steps") + f" {method.upper()} recommends {recommended} for this dataset.",
    )
    explicit_steps = bool(steps)
    steps = int(steps) if steps else auto_steps

    with st.expander(f"Settings of {method.upper()} and of the run", icon=":material/tune:"):
        st.markdown(f"**{method.upper()}**: {settings.method_summary(method)}")
        method_values = settings.option_values(settings.method_options(method), method)
        init_opts = settings.init_options(init)
        if init_opts:
            st.markdown(f"**Start from {init}**: {settings.init_summary(init)}")
        init_values = settings.option_values(init_opts, f"init.{init}")
        st.markdown("**The run**")
        r = st.columns(4)
        draws = METHODS.get(method).declares.real_batches
        seed = settings.bound(r[0].number_input, "Seed", "seed", value=0, min_value=0, step=1, help=settings.common_help("seed"))
        sampling = settings.bound(
            r[1].selectbox,
            "Real images drawn",
            "sampling",
            options=list(SAMPLINGS),
            disabled=not draws,
            help=settings.common_help("sampling")
            + ("" if draws else f" {method.upper()} does not draw real batches, so this does not apply."),
        )
        check_every = settings.bound(
            r[2].number_input,
            "Check accuracy every",
            "check_every",
            value=None,
            min_value=0,
            step=10,
            placeholder=f"{auto_check(steps)} steps (auto)",
            help=settings.common_help("check_every"),
        )
        device = settings.bound(r[3].selectbox, "Device", "device", options=list(DEVICES), help=settings.common_help("device"))
        net_values = settings.check_and_network_widgets(st.columns(4))
        zca_choice = settings.bound_choice(
            st.columns(4)[0].selectbox, "ZCA whitening", "zca", list(ZCA_CHOICES), "auto", format_func=ZCA_CHOICES.get,
            help=settings.common_help("zca"),
        )

    cfg, problem, other = None, None, None
    if data is not None:
        try:
            base = RunConfig(
                dataset=dataset,
                method=method,
                init=init,
                ipc=int(ipc),
                # the paper tier's length is its own (not an override); the quick tier's app length caps it
                iterations=steps if explicit_steps or tier != "paper" else None,
                seed=int(seed),
                device=device,
                sampling=sampling if draws else "uniform",
                eval_every=auto_check(steps) if check_every is None else int(check_every),
                options=method_values,
                init_options=init_values,
                tier=tier,
                zca=None if zca_choice == "auto" else zca_choice == "on",
            )
            cfg = recount_overrides(settings.override(resolve(base, data), net_values), data)  # overrides name the page's check too
        except ValueError as e:
            problem = str(e)
    if cfg is not None:
        # the other tier with the same explicit settings (its own length unless steps were typed)
        other_tier = next(t for t in TIERS if t != tier)
        if explicit_steps or other_tier == "paper":
            other_steps = steps if explicit_steps else None
        else:
            other_steps = min(METHODS.get(method).default_iterations(data, int(ipc)), QUICK_STEPS)
        try:
            other = recount_overrides(settings.override(resolve(replace(base, tier=other_tier, iterations=other_steps), data), net_values), data)
        except ValueError:
            other = None  # the user's settings do not fit the other tier: only this run's tier is timed
    if problem:
        if "ipc" in problem and facts:
            st.error(f"**{ipc} images per class is more than this dataset has.** {problem}.")
        else:
            st.error(f"**These settings cannot run:** {problem}")

    b1, b2 = st.columns([1, 4])
    start = b1.button(
        "Start",
        type="primary",
        icon=":material/play_arrow:",
        width="stretch",
        disabled=cfg is None,
        key="start",
        help="Start a run with these settings. It keeps going while you visit other pages.",
    )
    with b2:
        if cfg is not None:
            full_reference(S, cfg, data)
            est = estimate_block(S, cfg, data)
            if est is not None and est.heavy:
                st.warning(heavy_advice(est), icon=":material/hourglass_top:")
            if other is not None:
                tiers_block(cfg, other, data)
    if start and cfg is not None:
        run = S.submit(cfg, owner=me, label="")
        st.session_state[state.CURRENT_RUN] = run.id
        st.session_state[state.URL_RUN_SEEN] = run.id
        st.query_params["run"] = run.id

    queue = S.manager.active()
    if queue:
        waiting = sum(1 for r in queue if r.snapshot().status == "queued")
        st.caption(
            f"On this machine now: {len(queue) - waiting} run(s) working, {waiting} waiting (at most "
            f"{S.manager.max_concurrent} at once)."
        )
    st.divider()
    run_id = choose_run(S, me)
    if run_id is None:
        st.markdown("#### Press **Start** to begin.")
        st.markdown(
            "The synthetic images appear within seconds; the accuracy curve follows, with the random-images "
            "baseline and the full training set as reference lines."
        )
        return

    def full_of(snap) -> dict | None:
        """The full-data accuracy for the run's dataset and network: the config check and the store
        lookup once per run every FULL_REFRESH seconds, shared by every viewer, not once per redraw."""

        def lookup() -> dict | None:
            try:
                d = data_mod.load(snap.config["dataset"])
                return S.references.get(RunConfig.from_dict(snap.config), d)
            except (ValueError, TypeError, KeyError, DataError):
                return None

        return VIEWS.get(("full", snap.run_id), lookup, max_age=FULL_REFRESH)

    live_view(S, run_id, me, full_of)


def auto_check(steps: int) -> int:
    """About CELL_MAX_CHECKS checks a run, at round step counts."""
    raw = max(1, steps // CELL_MAX_CHECKS)
    return max(10, int(round(raw / 10.0)) * 10) if raw >= 10 else raw


def full_reference(S: Services, cfg: RunConfig, data) -> None:
    """Small datasets: measured in the background. Large ones: on request (it trains on all images)."""
    S.references.request(cfg, data)
    state = S.references.state(cfg, data)
    if state == "measuring":
        return
    if state:
        st.caption(state)
        return
    known = S.references.get(cfg, data)
    if known is None or not known["source"].startswith("measured"):
        what = "" if known is None else f" (shown now: {100 * known['mean']:.1f}%, {known['source']})"
        if st.button(
            "Measure the full-data accuracy here",
            key="measure_full",
            icon=":material/straighten:",
            help=f"Trains one network on all {data.x_train.shape[0]} training images with this run's network and "
            f"augmentation{what}; it takes a while on a large dataset and runs beside your runs.",
        ):
            S.references.request(cfg, data, force=True)
            st.rerun()


def tiers_block(cfg: RunConfig, other: RunConfig, data) -> None:
    """Both tiers' time on this machine, on request (timing steps and an evaluation network takes
    seconds on digits, a minute or two on MNIST-sized data)."""
    key = [cfg.to_dict(), other.to_dict()]
    if st.session_state.get(TIER_COSTS) != key:
        if st.button("Time both tiers here", key="tier_costs", icon=":material/compare_arrows:",
                     help="Times a few steps and one evaluation network of the quick and the paper tier on this machine."):
            st.session_state[TIER_COSTS] = key
            st.rerun()
        return
    try:
        lines = [tier_cost(c, data).line() for c in sorted((cfg, other), key=lambda c: c.tier != cfg.tier)]
    except Exception as e:  # noqa: BLE001 - advice only
        st.caption(f"Could not time the tiers: {e}")
        return
    st.markdown("**Both tiers on this machine** (this run's first):\n\n" + "\n".join(f"- {line}" for line in lines))


def estimate_block(S: Services, cfg: RunConfig, data) -> Estimate | None:
    probe = st.session_state.get(state.PROBE) == cfg.to_dict()
    try:
        est = estimate(cfg, data, S.store, probe=probe)
    except Exception as e:  # noqa: BLE001 - advice only
        st.caption(f"No estimate: {e}")
        return None
    st.markdown("**Before you start:** " + " ".join(est.lines))
    if est.seconds is None and (not est.needs_experts or est.experts_ready):
        if st.button("Measure a few steps", key="probe", icon=":material/timer:"):
            st.session_state[state.PROBE] = cfg.to_dict()
            st.rerun()
    return est


main()
