"""A run's configuration, and ``resolve``: the one place where it is completed for a dataset.

This module sits above every registry (methods, initializers, networks, augmentation, defaults):
nothing below it imports it. ``RunConfig`` fields left ``None`` mean "the dataset's default";
``resolve`` fills them, and fills the method's and the initializer's options with every value they
will use (their ``Options.resolved``), so the saved ``config.json`` of a run holds all of it and
reads back exactly (``from_dict``): a default changed in code later does not change an old run.
``resolve`` is idempotent, so the page, the CLI and the run can each call it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from distill_core.data import zca as zca_mod
from distill_core.data.augment import parse_strategy
from distill_core.data.datasets import Data
from distill_core.evaluation import defaults
from distill_core.evaluation.protocol import EvalConfig
from distill_core.initializers import INITIALIZERS, check_ipc, options_of, weighing_initializers
from distill_core.methods import METHODS
from distill_core.nets.networks import MAX_DEPTH, MAX_WIDTH, NETS, NetConfig
from distill_core.nets.precision import PRECISIONS
from distill_core.options import Options, build
from distill_core.synthetic import SYN_WEIGHTS
from distill_core.tiers import check_tier, default_tier, paper_settings

__all__ = [
    "DEVICES", "LIMITS", "SAMPLINGS", "SYN_WEIGHTS", "EvalConfig", "RunConfig", "check_eval_archs", "eval_arch_names", "recount_overrides", "resolve",
]

DEVICES = ("auto", "cpu", "cuda", "mps")
SAMPLINGS = ("uniform", "importance")


def _most(cls: type, name: str) -> int:
    return next(f.metadata["max"] for f in fields(cls) if f.name == name)


# the largest check and network a run may ask for, in the CLI's and the app's names (the app's inputs
# and URL values stop there; the engine refuses more with the range)
LIMITS = {
    "eval_nets": _most(EvalConfig, "nets"), "eval_epochs": _most(EvalConfig, "epochs"), "width": MAX_WIDTH, "depth": MAX_DEPTH,
}


def eval_arch_names() -> tuple[str, ...]:
    """The networks a run's synthetic set can also be evaluated on (the nets registry)."""
    return tuple(NETS.names())


def check_eval_archs(names: Any) -> tuple[str, ...]:
    """``names`` (a list or tuple of network names) as a tuple without repeats; an unknown name, or a
    bare string (which would be read letter by letter), is an error that lists the known names."""
    known = ", ".join(eval_arch_names())
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"eval_archs must be a list of network names (known: {known}), got {names!r}")
    for name in names:
        if name not in NETS:
            raise ValueError(f"unknown evaluation architecture {name!r}; known: {known}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "digits"
    method: str = "dm"
    init: str = "random"
    ipc: int = 1
    iterations: int | None = None
    seed: int = 0
    device: str = "auto"
    net: NetConfig | None = None
    eval: EvalConfig | None = None  # the final evaluation's protocol (and its random baseline's)
    check: EvalConfig | None = None  # the accuracy checks during the run (every eval_every steps, and at step 0)
    strategy: str | None = None  # DSA families joined by "_"; "" disables augmentation
    eval_every: int = 0  # 0: evaluate only at the end
    time_budget: float | None = None  # seconds of distillation; the run then evaluates what it has
    sampling: str = "uniform"  # how methods that draw real batches sample them
    precision: str | None = None  # "bf16": autocast forward passes; "auto": bf16 where native; None: the dataset's default
    compile: bool = False  # torch.compile the networks of first-order work (DM, evaluation, experts); pays on long runs
    eval_archs: tuple[str, ...] = ()  # networks the final set is also evaluated on, each beside its own random baseline
    options: dict[str, Any] = field(default_factory=dict)  # the method's own settings (its Config's fields)
    init_options: dict[str, Any] = field(default_factory=dict)  # the initializer's (its Config's fields)
    # "paper" (the authors' settings) or "quick" (this project's defaults); None: by device and dataset
    # (``tiers.default_tier``), and a config saved before tiers existed reads back with None
    tier: str | None = None
    # filled by ``resolve``: the settings that differ from the tier's (the user's explicit choices)
    overrides: tuple[str, ...] = ()
    # ZCA-whiten the training and test images before anything sees them (``data.zca``; None: the tier's
    # choice, on for the trajectory methods' three-channel sets in the paper tier); a config saved
    # before the field existed reads back with False (``retire``): those runs did not whiten
    zca: bool | None = None
    zca_eps: float = zca_mod.EPS

    def __post_init__(self) -> None:
        check_tier(self.tier)
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if isinstance(self.ipc, bool) or not isinstance(self.ipc, int) or self.ipc < 1:
            raise ValueError(f"ipc (images per class) must be a positive whole number, got {self.ipc!r}")
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be 0 or more, got {self.iterations}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(DEVICES)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (only at the end) or positive, got {self.eval_every}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; known: {', '.join(SAMPLINGS)}")
        if self.sampling == "importance" and self.method in METHODS.names() and not self.declares.real_batches:
            drawing = [m for m in METHODS.names() if METHODS.get(m).declares.real_batches]
            raise ValueError(
                f"{self.method} draws no real batches, so importance sampling does not apply to it; "
                f"use sampling uniform, or one of the methods that draw real batches: {', '.join(drawing)}"
            )
        if self.strategy:
            parse_strategy(self.strategy)
        if self.zca is not None and not isinstance(self.zca, bool):
            raise ValueError(f"zca must be true or false (or unset: the tier's choice), got {self.zca!r}")
        if isinstance(self.zca_eps, bool) or not isinstance(self.zca_eps, (int, float)) or not self.zca_eps > 0:
            raise ValueError(f"zca_eps must be a positive number, got {self.zca_eps!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        # frozen: a list (from JSON, a page) becomes the tuple the field holds, so equal configs compare equal
        object.__setattr__(self, "eval_archs", check_eval_archs(self.eval_archs))
        self.method_config()  # an unknown method or option, or a bad value, fails here
        self.init_config()
        self.check_syn_weights()

    def weights_used_by(self) -> list[str]:
        """What in this run weighs the synthetic images by their coreset weights (``syn_weights="coreset"``):
        "method" (its own option), "evaluation" (the final one's), "checks" (the checks'); empty: nothing."""
        used = ["method"] if getattr(self.method_config(), "syn_weights", "uniform") == "coreset" else []
        used += [name for name, protocol in (("evaluation", self.eval), ("checks", self.check))
                 if protocol is not None and protocol.syn_weights == "coreset"]
        return used

    def check_syn_weights(self) -> None:
        """``syn_weights="coreset"`` anywhere needs an initializer that gives coreset weights: refused
        here, before any work, rather than found missing mid-run."""
        used = self.weights_used_by()
        if used and self.init in INITIALIZERS and not INITIALIZERS.get(self.init).gives_weights:
            where = " and ".join(f"the {u}" if u != "method" else f"the method {self.method}" for u in used)
            raise ValueError(
                f"syn_weights=coreset ({where}) needs coreset weights, but the initializer {self.init} gives none; "
                f"start from {' or '.join(weighing_initializers())}, or use syn_weights=uniform"
            )

    def chosen_precision(self) -> str:
        """The precision asked for, or the dataset's default (known from its name, before loading it)."""
        return defaults.precision_for(self.dataset) if self.precision is None else self.precision

    def method_config(self) -> Options:
        return build(METHODS.get(self.method).Config, self.options, f"method {self.method}")

    def init_config(self) -> Options:
        return options_of(self.init, self.init_options)

    def eval_arch_nets(self) -> dict[str, NetConfig]:
        """Each of ``eval_archs`` as a network: the run's own network's fields (width, depth, norm,
        activation, pooling) where that architecture uses them, its own choices where it does not
        (an MLP's hidden size is at least 128, LeNet's sizes are fixed). Needs a resolved config."""
        if self.net is None:
            raise ValueError("resolve the configuration first: the run's network is not set yet")
        return {name: replace(self.net, name=name) for name in self.eval_archs}

    def data_for(self, data: Data, cache_dir: Path | None = None) -> tuple[Data, zca_mod.Whitening | None]:
        """The images this (resolved) run's networks see: ``data`` ZCA-whitened where ``zca`` is on
        (the fit read from or saved to ``cache_dir``), else ``data`` itself; and the whitening, if any."""
        if not self.zca:
            return data, None
        return zca_mod.whiten(data, self.zca_eps, cache_dir)

    @property
    def declares(self) -> Any:
        """What the run's method needs and publishes (``methods.base.Declares``)."""
        return METHODS.get(self.method).declares

    def with_eval(self, nets: int | None = None, epochs: int | None = None, syn_weights: str | None = None) -> RunConfig:
        """This resolved config with the final evaluation's networks, epochs and ``syn_weights`` changed
        (None: as they are), and the checks during the run following it by the dataset's rule
        (``defaults.check_for``)."""
        if self.eval is None:
            raise ValueError("resolve the configuration first: the evaluation protocol is not set yet")
        protocol = replace(self.eval, nets=nets or self.eval.nets, epochs=epochs or self.eval.epochs,
                           syn_weights=syn_weights or self.eval.syn_weights)
        return replace(self, eval=protocol, check=defaults.check_for(self.dataset, protocol))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config ``to_dict`` gave (a saved ``config.json``), exactly; an unknown key is an error."""
        d = dict(d)
        if d.get("net") is not None:
            d["net"] = NetConfig(**d["net"])
        for key in ("eval", "check"):
            if d.get(key) is not None:
                e = dict(d[key])
                if e.get("arch") is not None:
                    e["arch"] = NetConfig(**e["arch"])
                d[key] = EvalConfig(**e)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"not a run configuration: unknown field {', '.join(unknown)}")
        return cls(**retire(d))


# options that earlier versions saved and that no longer exist, per method: dropped on reading so
# that old runs stay viewable (KRR now scores real images by its own kernel fit, not a trained net)
RETIRED_OPTIONS = {"krr": ("score_steps",)}


def retire(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict readable by this version: retired options dropped, ``sampling`` set to
    uniform for a method that draws no real batches (earlier versions recorded it without effect), and
    ``zca`` False where it was not recorded."""
    d.setdefault("zca", False)  # saved before ZCA existed: the run did not whiten
    method = d.get("method", "")
    if method in RETIRED_OPTIONS and d.get("options"):
        d["options"] = {k: v for k, v in d["options"].items() if k not in RETIRED_OPTIONS[method]}
    if method in METHODS.names() and not METHODS.get(method).declares.real_batches:
        d["sampling"] = "uniform"
    return d


def resolve(cfg: RunConfig, data: Data) -> RunConfig:
    """``cfg`` complete for ``data``: the tier chosen (``tiers.default_tier`` where none is), every
    ``None`` filled with the tier's value (``paper``: the authors' settings, ``tiers.paper_settings``;
    ``quick``: the dataset's and the method's defaults), the method's and the initializer's options
    filled with every value they use, and ``overrides`` listing what differs from the tier. A config
    resolved before keeps its overrides (a default changed in code later is no override of the
    user's); ``recount_overrides`` finds them again after a resolved config was changed. Checks the IPC."""
    check_ipc(data, cfg.ipc)
    if is_resolved(cfg):
        return replace(_fill(cfg, data), overrides=cfg.overrides)
    return recount_overrides(cfg, data)


def is_resolved(cfg: RunConfig) -> bool:
    return None not in (cfg.tier, cfg.iterations, cfg.net, cfg.eval, cfg.check, cfg.strategy, cfg.precision, cfg.zca)


def recount_overrides(cfg: RunConfig, data: Data) -> RunConfig:
    """``cfg`` resolved, with ``overrides`` found afresh: the settings whose values differ from the
    tier's for this method, dataset and IPC (for a resolved config the page or the CLI changed)."""
    check_ipc(data, cfg.ipc)
    cfg = replace(cfg, tier=cfg.tier or default_tier(cfg.dataset, cfg.device))
    filled = _fill(cfg, data)
    bare = _fill(RunConfig(dataset=cfg.dataset, method=cfg.method, init=cfg.init, ipc=cfg.ipc, device=cfg.device,
                           iterations=filled.iterations, tier=cfg.tier), data)
    names = [] if filled.iterations == tier_iterations(cfg, data) else ["iterations"]
    names += [k for k in filled.options if filled.options[k] != bare.options.get(k)]
    names += [f"eval {f.name}" for f in fields(EvalConfig) if getattr(filled.eval, f.name) != getattr(bare.eval, f.name)]
    names += [label for label, key in (("network", "net"), ("augmentation", "strategy"), ("precision", "precision"), ("zca", "zca"))
              if getattr(filled, key) != getattr(bare, key)]
    if filled.zca and filled.zca_eps != bare.zca_eps:
        names.append("zca eps")
    return replace(filled, overrides=tuple(names))


def tier_iterations(cfg: RunConfig, data: Data) -> int:
    """The iterations of ``cfg``'s tier (set) for its method, dataset and IPC."""
    default = METHODS.get(cfg.method).default_iterations(data, cfg.ipc)
    if cfg.tier == "paper":
        return paper_settings(cfg.method, cfg.dataset, data.num_classes, cfg.ipc, data.channels).iterations or default
    return default


def _fill(cfg: RunConfig, data: Data) -> RunConfig:
    """Every ``None`` of ``cfg`` (its tier set) filled: the paper tier's values, then the defaults."""
    protocol = cfg.eval or defaults.eval_for(data)
    options, precision, zca = dict(cfg.options), cfg.precision, cfg.zca
    if cfg.tier == "paper":
        paper = paper_settings(cfg.method, cfg.dataset, data.num_classes, cfg.ipc, data.channels)
        if cfg.eval is None:
            protocol = replace(protocol, nets=paper.eval_nets, epochs=paper.eval_epochs, augment=paper.eval_augment,
                               batch=paper.eval_batch)
        options = {**paper.options, **options}  # the user's explicit options win
        precision = paper.precision if precision is None else precision
        if zca is None:  # images too large to whiten (``zca.MAX_FEATURES``) are not, whatever the tier
            zca = paper.zca and zca_mod.whitenable(tuple(data.x_train.shape[1:]))
    iterations = tier_iterations(cfg, data) if cfg.iterations is None else cfg.iterations
    cfg = replace(cfg, options=options, precision=precision, zca=bool(zca))
    if cfg.zca:
        zca_mod.check_features(tuple(data.x_train.shape[1:]))
    return replace(
        cfg,
        net=cfg.net or defaults.net_for(data),
        eval=protocol,
        check=cfg.check or defaults.check_for(cfg.dataset, protocol),
        strategy=defaults.strategy_for(data) if cfg.strategy is None else cfg.strategy,
        precision=cfg.chosen_precision(),
        iterations=iterations,
        options=cfg.method_config().resolved(data, cfg.ipc, iterations).to_dict(),
        init_options=cfg.init_config().resolved(data, cfg.ipc, iterations).to_dict(),
    )
