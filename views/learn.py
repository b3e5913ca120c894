"""Learn: every method and initializer in plain words with its formula and a link that opens the
page set up to show it; a link builder for teachers (guided mode: the link's settings are locked)."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st
import tomllib

from distill_core.data.builtin import DATASETS
from distill_core.initializers import INITIALIZERS
from distill_core.methods import METHODS
from ui import nav, settings

LEARN = settings.ASSETS / "learn"


def text(kind: str, name: str, fallback: str) -> str:
    path = LEARN / kind / f"{name}.md"
    return path.read_text() if path.exists() else fallback


def presets() -> dict:
    path = LEARN / "presets.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def intro() -> None:
    st.markdown(
        "**Dataset distillation** compresses a training set of thousands of images into a handful of *synthetic* images "
        "per class, made so that a network trained only on them does nearly as well as one trained on everything. "
        "Every run in this app is compared with the simplest alternative: the same number of **random real images**."
    )
    st.latex(
        r"S^* = \arg\min_{S,\;|S| = C \cdot \mathrm{IPC}} \;"
        r"\mathcal{L}\big(\text{network trained on } S;\; \text{real test data}\big)"
    )
    st.markdown(
        "Directly optimising that is too expensive, so each method replaces it with a cheaper **matching** objective: "
        "match features (DM), gradients (DC, DSA), a kernel predictor (KRR) or training trajectories (MTT, DATM, IADD)."
    )


def teacher_links() -> None:
    st.subheader("For teachers: hand out a guided link")
    st.markdown(
        "Choose the settings; the link opens the **Distill** page with them preset and **locked**, so every student "
        "runs the same experiment with one click on Start."
    )
    methods, inits, names = METHODS.names(), INITIALIZERS.names(), DATASETS.names()
    c = st.columns(5)
    ds = c[0].selectbox("Dataset", names, index=names.index("digits") if "digits" in names else 0, key="t_dataset")
    md = c[1].selectbox("Method", methods, format_func=str.upper, key="t_method")
    it = c[2].selectbox("Start from", inits, index=inits.index("random") if "random" in inits else 0, key="t_init")
    ipc = c[3].number_input("Images per class", 1, 100, 1, key="t_ipc")
    steps = c[4].number_input("Steps (0: automatic)", 0, 100000, 0, step=50, key="t_steps")
    params = {"dataset": ds, "method": md, "init": it, "ipc": int(ipc)}
    if steps:
        params["steps"] = int(steps)
    params["guided"] = 1
    base = st.context.url.split("?")[0].rsplit("/learn", 1)[0] if st.context.url else ""
    st.code(f"{base}/?{urlencode(params)}", language=None)
    nav.link(
        "views/distill.py",
        label="Open this guided link",
        icon=":material/lock:",
        query_params={k: str(v) for k, v in params.items()},
    )


def main() -> None:
    st.title("Learn")
    intro()
    p = presets()
    tab_m, tab_i, tab_t = st.tabs(["Methods", "Initializers", "For teachers"])
    with tab_m:
        for name in METHODS.names():
            with st.expander(f"**{name.upper()}**: {settings.method_summary(name)}", expanded=name == "dm"):
                st.markdown(text("methods", name, settings.method_summary(name)))
                query = {"method": name, **{k: str(v) for k, v in p.get("method", {}).get(name, {}).items()}}
                nav.link(
                    "views/distill.py",
                    label=f"Try {name.upper()} on the Distill page",
                    icon=":material/play_arrow:",
                    query_params=query,
                )
        with st.expander("**Importance-sampled real batches** (DM, DC, DSA, KRR): what the code computes"):
            st.markdown(text("sampling", "importance", "Real batches drawn by loss; see the README."))
    with tab_i:
        for name in INITIALIZERS.names():
            with st.expander(f"**{name}**: {settings.init_summary(name)}"):
                st.markdown(text("initializers", name, settings.init_summary(name)))
                others = [n for n in ("random", "herding", "kcenter") if n != name and n in INITIALIZERS][:2]
                nav.link(
                    "views/initializations.py",
                    label=f"See {name} beside {' and '.join(others)}",
                    icon=":material/grass:",
                    query_params={"inits": [name, *others]},
                )
                nav.link(
                    "views/distill.py",
                    label=f"Distill starting from {name}",
                    icon=":material/play_arrow:",
                    query_params={"init": name, "dataset": "digits"},
                )
    with tab_t:
        teacher_links()


main()
