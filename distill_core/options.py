"""Options of a component (a method, an initializer): a frozen dataclass whose fields carry their
own help text and limits in ``field(metadata=...)``, checked here once for every component.

``option(default, help, min=..., above=..., max=..., app=False)``:

* ``min`` / ``max``: inclusive bounds; ``above``: an exclusive lower bound (``above=0``: positive);
  every number must be finite, and a field without ``max`` is bounded by ``MAX_NUMBER`` (1e6);
* ``app=False``: a setting for code and the command line, not offered as a widget in the app;
* ``what``: how an error names the option ("unknown feature space 'x'").

``Options.resolved(data, ipc, iterations)`` returns a copy whose ``None`` ("automatic") fields are
filled for a dataset, an IPC and a run length; ``config.resolve`` calls it once per run, so a saved
run holds every value it used.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

OptionsT = TypeVar("OptionsT", bound="Options")


MAX_NUMBER = 1e6  # the largest magnitude of a number option without its own ``max``: a typo (1e308) or a
# crafted value must not overflow float32 or start work that does not end


def allowed(meta: Any, whole: bool) -> str:
    """The range a number option takes, in words, for an error message ("whole numbers 1 to 1e+06")."""
    kind = "whole numbers " if whole else ""
    hi = meta.get("max", MAX_NUMBER)
    if "above" in meta:
        lo = "positive" if meta["above"] == 0 else f"above {meta['above']:g}"
        return f"allowed: {kind}{lo}, at most {hi:g}"
    return f"allowed: {kind}{meta.get('min', -MAX_NUMBER):g} to {hi:g}"


def within(value: float, meta: Any) -> bool:
    """Whether a number is finite and lies in a field's limits (``MAX_NUMBER`` where the field sets no max)."""
    if not math.isfinite(value):
        return False
    if "min" in meta and not value >= meta["min"]:
        return False
    if "above" in meta and not value > meta["above"]:
        return False
    if "max" in meta:
        return value <= meta["max"]
    return abs(value) <= MAX_NUMBER


def option(default: Any, help: str, *, min: float | None = None, above: float | None = None, max: float | None = None,
           app: bool = True, what: str | None = None) -> Any:
    """A dataclass field with its help and limits (see the module docstring)."""
    meta = {"help": help, "min": min, "above": above, "max": max, "app": app, "what": what}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_int_field(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return all(a is int for a in args)


def _is_number_field(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return all(a in (int, float) for a in args)


def _bound_broken(value: float, meta: Any) -> str:
    """The first limit ``value`` breaks, in the words of a comparison ("positive", ">= 1", "<= 0.999")."""
    if "min" in meta and not value >= meta["min"]:
        return f">= {meta['min']:g}"
    if "above" in meta and not value > meta["above"]:
        return "positive" if meta["above"] == 0 else f"> {meta['above']:g}"
    if "max" in meta:
        return f"<= {meta['max']:g}"
    return f">= {-MAX_NUMBER:g}" if value < 0 else f"<= {MAX_NUMBER:g}"


def _short(value: Any) -> str:
    """A value for a message, cut short (a crafted option may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Options:
    """Base of every component's options: checks each field's limits on creation."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            tp = hints.get(f.name)
            if value is None:
                if type(None) not in typing.get_args(tp):
                    raise ValueError(f"{f.name} cannot be empty (null): give a value")
                continue
            choices = [a for a in typing.get_args(tp) if typing.get_origin(tp) is typing.Literal]
            if choices and value not in choices:
                what = meta.get("what", f.name)
                raise ValueError(f"unknown {what} {_short(value)}; known: {', '.join(map(str, choices))}")
            if tp is bool and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {_short(value)}")
            whole = _is_int_field(tp)
            if whole and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be a whole number, got {_short(value)} ({allowed(meta, True)})")
            if not (whole or _is_number_field(tp) or any(k in meta for k in ("min", "above", "max"))):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{f.name} must be a number, got {_short(value)} ({allowed(meta, whole)})")
            if not within(value, meta):  # inf and 1e308 exceed MAX_NUMBER where the field sets no max
                raise ValueError(f"{f.name} must be {_bound_broken(value, meta)}, got {_short(value)} ({allowed(meta, whole)})")

    def resolved(self: OptionsT, data: Any, ipc: int, iterations: int) -> OptionsT:
        """A copy with every automatic (``None``) field filled for ``data`` (a dataset's ``Data``, which
        this bottom module does not import: only the components above it read it); the base has none
        to fill."""
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option_lines(cls: type[Options]) -> list[str]:
    """One line per option of ``cls``: ``name = default: help (limits)``, for ``python -m distill_core list NAME``;
    an empty default is "automatic" (filled per dataset and IPC)."""
    hints = _hints(cls)
    out = []
    for f in fields(cls):
        meta, default = f.metadata, "automatic" if f.default is None else repr(f.default)
        tp = hints.get(f.name)
        choices = [a for a in typing.get_args(tp) if typing.get_origin(tp) is typing.Literal]
        if choices:
            limits = "one of " + ", ".join(map(str, choices))
        elif any(k in meta for k in ("min", "above", "max")):
            limits = allowed(meta, _is_int_field(tp)).removeprefix("allowed: ")
        else:
            limits = ""
        out.append(f"{f.name} = {default}: {meta.get('help', '')}" + (f" ({limits})" if limits else ""))
    return out


def build(cls: type[Options], values: dict[str, Any], owner: str) -> Options:
    """``cls(**values)``, with an error naming ``owner`` and the known options on an unknown key."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)} for {owner}; known: {', '.join(sorted(known))}")
    return cls(**values)
