"""Settings widgets built from the registries, so a newly registered method or initializer shows up
with its own options and no page changes.

An option is a field of the method's or the initializer's ``Config`` dataclass (``distill_core.options``)
whose metadata does not say ``app=False``. Its help text comes from ``assets/options.toml`` (plain
words for the app, per method, then shared), else from the field's ``metadata["help"]``, else from
its name; its lower bound from ``metadata["min"]``. Every widget is bound to a URL query
parameter (``method``, ``ipc``, ``dm.lr_img``, ...), so a link reproduces the view; in guided mode
(``?guided=1``) the parameters the link set are locked.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import streamlit as st
import tomllib

from distill_core.config import LIMITS, SYN_WEIGHTS, eval_arch_names
from distill_core.initializers import INITIALIZERS
from distill_core.methods import METHODS
from ui import state
from ui.services import SID_PARAM

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # "int", "float", "bool", "str", "choice", "json"
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    optional: bool = False  # None is allowed (empty field)
    minimum: float | None = None  # the smallest value a number may take (``metadata["min"]`` of the field)


@lru_cache(maxsize=1)
def help_table() -> dict[str, Any]:
    path = ASSETS / "options.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def _kind(tp: Any, default: Any) -> tuple[str, tuple[Any, ...], bool]:
    optional = False
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else tp
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "choice", tuple(args), optional
    for t, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if tp is t:
            return name, (), optional
    if isinstance(default, bool):
        return "bool", (), optional
    for t, name in ((int, "int"), (float, "float"), (str, "str")):
        if isinstance(default, t):
            return name, (), optional
    return "json", (), optional


def describe(family: str, owner: str, name: str, metadata: Any = None) -> str:
    """The help text of one option (see the module docstring for the order of sources)."""
    table = help_table()
    section = table.get(family, {}).get(owner, {})
    if name in section:
        return section[name]
    shared = table.get(family, {}).get("shared", {})
    if name in shared:
        return shared[name]
    if metadata and metadata.get("help"):
        return str(metadata["help"])
    return name.replace("_", " ")


def config_options(config_cls: type, family: str, owner: str) -> list[Option]:
    """The app's settings of a component: its ``Config`` fields, but those marked ``app=False``."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if not f.init or f.name.startswith("_") or not f.metadata.get("app", True):
            continue
        kind, choices, optional = _kind(hints.get(f.name, type(f.default)), f.default)
        minimum = f.metadata.get("min")
        minimum = float(minimum) if minimum is not None and kind == "float" else minimum
        out.append(Option(f.name, kind, f.default, describe(family, owner, f.name, f.metadata), choices, optional, minimum))
    return out


def method_options(name: str) -> list[Option]:
    return config_options(METHODS.get(name).Config, "method", name)


def init_options(name: str) -> list[Option]:
    return config_options(INITIALIZERS.get(name).Config, "init", name)


def summary(obj: Any) -> str:
    """First paragraph of a docstring, in one line."""
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def method_summary(name: str) -> str:
    cls = METHODS.get(name)
    return (
        help_table().get("method", {}).get(name, {}).get("_summary")
        or summary(cls)
        or summary(inspect.getmodule(cls))
        or f"the {name} method"
    )


def init_summary(name: str) -> str:
    return help_table().get("init", {}).get(name, {}).get("_summary") or summary(INITIALIZERS.get(name)) or name


def common_help(name: str) -> str:
    return help_table().get("common", {}).get(name, name)


# ---- guided mode -----------------------------------------------------------------------------


def guided_keys() -> set[str]:
    """Query parameters a guided link set (locked for this session); empty outside guided mode."""
    if state.GUIDED not in st.session_state:
        qp = st.query_params
        if qp.get("guided") in ("1", "true", "yes"):
            st.session_state[state.GUIDED] = {k for k in qp.keys() if k not in ("guided", "run", SID_PARAM)}
        else:
            st.session_state[state.GUIDED] = set()
    return st.session_state[state.GUIDED]


def locked(key: str) -> bool:
    return key in guided_keys()


# ---- widgets ---------------------------------------------------------------------------------


def bound(widget: Callable[..., Any], label: str, key: str, **kw: Any) -> Any:
    """A widget bound to the URL query parameter ``key``, disabled when a guided link locked it. A number
    from the URL outside the widget's range is not taken, and the page says so in one line."""
    if "min_value" in kw or "max_value" in kw:
        whole = isinstance(kw.get("step"), int) and not isinstance(kw.get("step"), bool)  # an int widget
        warn_out_of_range(key, kw.get("min_value"), kw.get("max_value"), whole)
    return widget(label, key=key, bind="query-params", disabled=kw.pop("disabled", False) or locked(key), **kw)


def warn_out_of_range(key: str, lo: float | None, hi: float | None, whole: bool = False) -> None:
    """One line when the URL's ``key`` is not a number, not whole (``whole``: an int widget) or outside
    ``lo``..``hi`` (either may be None: no bound); the widget then keeps its default."""
    raw = st.query_params.get(key)
    if raw is None or raw == "":
        return
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if whole and hi is None:
        hi = float(2**53 - 1)  # the largest whole number a widget holds (a browser's safe integer)
    finite = value == value and abs(value) != float("inf")
    if finite and (lo is None or value >= lo) and (hi is None or value <= hi) and not (whole and value != int(value)):
        return
    if lo is not None and hi is not None:
        allowed = f"{lo:g} to {hi:g}"
    else:
        allowed = f"at least {lo:g}" if lo is not None else f"at most {hi:g}" if hi is not None else "any finite number"
    if value != value:
        problem = "is not a number"
    elif whole and finite and value != int(value):
        problem = "is not a whole number"
    else:
        problem = f"is outside the allowed range ({allowed})"
    st.warning(f"The link's {key}={raw[:20]!r} {problem}; this setting keeps its default.", icon=":material/link_off:")


def bound_choice(selectbox: Callable[..., Any], label: str, key: str, options: list[Any], prefer: Any, **kw: Any) -> Any:
    """A ``bound`` select box over ``options`` that starts on ``prefer`` (the first option if absent)."""
    index = options.index(prefer) if prefer in options else 0
    return bound(selectbox, label, key, options=options, index=index, **kw)


def label_of(name: str) -> str:
    return help_table().get("label", {}).get(name) or name.replace("_", " ")


def option_widget(opt: Option, key: str) -> Any:
    label = label_of(opt.name)
    help_text = opt.help
    if opt.kind == "bool":
        return bound(st.checkbox, label, key, value=bool(opt.default), help=help_text)
    if opt.kind == "choice":
        return bound_choice(st.selectbox, label, key, list(opt.choices), opt.default, help=help_text)
    if opt.kind == "int":
        return bound(
            st.number_input,
            label,
            key,
            value=opt.default,
            min_value=opt.minimum,
            step=1,
            help=help_text,
            placeholder="automatic" if opt.optional else None,
        )
    if opt.kind == "float":
        value = None if opt.default is None else float(opt.default)
        fmt = "%g" if value is None or value == 0 or abs(value) >= 1e-3 else "%.2e"
        return bound(
            st.number_input,
            label,
            key,
            value=value,
            min_value=opt.minimum,
            format=fmt,
            step=_float_step(value),
            help=help_text,
            placeholder="automatic" if opt.optional else None,
        )
    if opt.kind == "str":
        return bound(st.text_input, label, key, value=opt.default or "", help=help_text)
    text = bound(st.text_input, label, key, value=json.dumps(opt.default), help=help_text + " (JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        st.error(f"{label}: {text!r} is not valid JSON")
        return opt.default


def _float_step(value: float | None) -> float:
    if not value:
        return 0.1
    from math import floor, log10

    return float(10 ** floor(log10(abs(value))))


def option_values(options: list[Option], prefix: str, columns: int = 3) -> dict[str, Any]:
    """Draw the widgets of ``options`` in columns; returns the values that differ from the defaults."""
    values: dict[str, Any] = {}
    if not options:
        return values
    cols = st.columns(columns)
    for i, opt in enumerate(options):
        with cols[i % columns]:
            v = option_widget(opt, f"{prefix}.{opt.name}")
        if opt.kind == "int" and v is not None:
            v = int(v)
        if v != opt.default and not (opt.kind == "str" and v == "" and opt.default is None):
            values[opt.name] = v
    return values


def check_and_network_widgets(cols: list[Any]) -> dict[str, Any]:
    """Networks and epochs of the final accuracy check, network width and depth (empty: automatic),
    bound to the URL parameters eval_nets, eval_epochs, width, depth; below them the networks the
    final set is also evaluated on (``eval_archs``, repeated in the URL: ``?eval_archs=mlp&eval_archs=lenet``),
    and how the checks weigh the synthetic images' losses (``eval_syn_weights``)."""
    spec = [
        ("eval_nets", "Networks in the final check", 1),
        ("eval_epochs", "Epochs per check network", 50),
        ("width", "Network width", 8),
        ("depth", "Network depth", 1),
    ]
    out: dict[str, Any] = {}
    for col, (key, label, step) in zip(cols, spec, strict=False):
        v = bound(
            col.number_input,
            label,
            key,
            value=None,
            min_value=1,
            max_value=LIMITS[key],
            step=step,
            placeholder="auto",
            help=common_help(key),
        )
        out[key] = None if v is None else int(v)
    archs = bound(
        st.multiselect,
        "Also evaluate on other networks",
        "eval_archs",
        options=list(eval_arch_names()),
        default=[],  # the registry's names, no display labels: the URL carries what the CLI takes
        placeholder="only the run's own network",
        help="Cross-architecture check: at the end, train the final synthetic set on each of these networks "
        "(width and depth as the run's network, where the network has them) beside a random-real baseline on "
        "the same network. Each one costs about as long as the final check.",
    )
    out["eval_archs"] = tuple(archs)
    out["eval_syn_weights"] = bound_choice(
        st.selectbox, "Weigh the synthetic images in the checks", "eval_syn_weights", list(SYN_WEIGHTS), "uniform",
        help=common_help("eval_syn_weights"),
    )
    return out


def override(cfg: Any, values: dict[str, Any]) -> Any:
    """``cfg`` (resolved) with the check's networks/epochs/loss weights, the network's width/depth and
    the cross-architecture networks the page set."""
    from dataclasses import replace

    if values.get("eval_nets") or values.get("eval_epochs") or values.get("eval_syn_weights") not in (None, "uniform"):
        cfg = cfg.with_eval(values.get("eval_nets"), values.get("eval_epochs"), values.get("eval_syn_weights"))
    if values.get("width") or values.get("depth"):
        cfg = replace(
            cfg, net=replace(cfg.net, width=values.get("width") or cfg.net.width, depth=values.get("depth") or cfg.net.depth)
        )
    if values.get("eval_archs"):
        cfg = replace(cfg, eval_archs=tuple(values["eval_archs"]))
    return cfg
