"""Distillation methods, one module each, all behind ``base.Method`` and the ``METHODS`` registry."""
from dataclasses import fields

from distill_core.methods import (
    datm,  # noqa: F401  (registers)
    dc,  # noqa: F401  (registers)
    dm,  # noqa: F401  (registers)
    iadd,  # noqa: F401  (registers)
    krr,  # noqa: F401  (registers)
    mtt,  # noqa: F401  (registers)
)
from distill_core.methods.base import METHODS, Context, Declares, Method, Synthetic
from distill_core.options import build

__all__ = ["METHODS", "Context", "Declares", "Method", "Synthetic", "create", "weighs"]


def weighs(name: str) -> str | None:
    """What method ``name`` weighs by the coreset weights with ``syn_weights="coreset"`` (its option's
    help up to the colon, e.g. "the synthetic mean of a class"); None: it has no such option."""
    option = {f.name: f for f in fields(METHODS.get(name).Config)}.get("syn_weights")
    return None if option is None else option.metadata["help"].split(":")[0]


def create(name: str, ctx: Context, options: dict | None = None) -> Method:
    cls = METHODS.get(name)
    return cls(ctx, build(cls.Config, options or {}, f"method {name}"))
