"""Options of a component (a method, an initializer): a frozen dataclass whose fields carry their
own help text and limits in ``field(metadata=...)``, checked here once for every component.

``option(default, help, min=..., above=..., max=..., app=False)``:

* ``min`` / ``max``: inclusive bounds; ``above``: an exclusive lower bound (``above=0``: positive);
* ``app=False``: a setting for code and the command line, not offered as a widget in the app;
* ``what``: how an error names the option ("unknown feature space 'x'").

``Options.resolved(data, ipc, iterations)`` returns a copy whose ``None`` ("automatic") fields are
filled for a dataset, an IPC and a run length; ``config.resolve`` calls it once per run, so a saved
run holds every value it used.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

if typing.TYPE_CHECKING:
    from distill_core.data import Data

OptionsT = TypeVar("OptionsT", bound="Options")


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


@dataclass(frozen=True)
class Options:
    """Base of every component's options: checks each field's limits on creation."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            tp = hints.get(f.name)
            choices = [a for a in typing.get_args(tp) if typing.get_origin(tp) is typing.Literal]
            if choices and value not in choices:
                what = meta.get("what", f.name)
                raise ValueError(f"unknown {what} {value!r}; known: {', '.join(map(str, choices))}")
            if tp is bool and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {value!r}")
            if _is_int_field(tp) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be a whole number, got {value!r}")
            if not any(k in meta for k in ("min", "above", "max")):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if "min" in meta and not value >= meta["min"]:
                raise ValueError(f"{f.name} must be >= {meta['min']:g}, got {value!r}")
            if "above" in meta and not value > meta["above"]:
                what = "positive" if meta["above"] == 0 else f"> {meta['above']:g}"
                raise ValueError(f"{f.name} must be {what}, got {value!r}")
            if "max" in meta and not value <= meta["max"]:
                raise ValueError(f"{f.name} must be <= {meta['max']:g}, got {value!r}")

    def resolved(self: OptionsT, data: Data, ipc: int, iterations: int) -> OptionsT:
        """A copy with every automatic (``None``) field filled; the base has none to fill."""
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build(cls: type[Options], values: dict[str, Any], owner: str) -> Options:
    """``cls(**values)``, with an error naming ``owner`` and the known options on an unknown key."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)} for {owner}; known: {', '.join(sorted(known))}")
    return cls(**values)
