"""Time and memory a run will take, shown before it starts.

Sources, best first: the engine's own estimates for expert trajectories (``distill_core.experts``:
training time from a few timed steps, storage), earlier runs of the same kind in the store, and a
few timed steps of the method itself (methods that need no experts; quick on small datasets).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from distill_core import data as data_mod
from distill_core.config import RunConfig
from distill_core.methods import METHODS
from distill_core.run import Run, log_rows
from distill_core.store import Store

PROBE_MAX_IMAGES = 5000  # datasets this small are probed automatically


@dataclass
class Estimate:
    lines: list[str] = field(default_factory=list)
    seconds: float | None = None
    memory_mb: float = 0.0
    heavy: bool = False
    needs_experts: bool = False
    experts_ready: bool = False  # all experts trained and cached: a step can be timed
    expert_seconds: float = 0.0  # training still needed before the first step
    expert_budget: float | None = None  # the method refuses expert training longer than this


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def heavy_advice(est: Estimate) -> str:
    """What a person can do about a heavy run, in plain words."""
    out = f"**A heavy run for this machine** (about {duration(est.seconds or est.expert_seconds)} in all). "
    if est.expert_seconds > 60:
        out += (
            "Most of it is training the experts. To go faster: fewer or shorter experts (settings expert count, "
            "expert train epochs), a narrower network (Network width), or a computer with a GPU. "
        )
        if est.expert_budget is not None and est.expert_seconds > est.expert_budget:
            out += (
                f"As set, the run will stop at once and say so: the experts would take longer than the method's budget "
                f"(expert budget s = {duration(est.expert_budget)})."
            )
    else:
        out += "To go faster: fewer steps, fewer images per class, a narrower network, or a GPU."
    return out


def uses_experts(method: str) -> bool:
    cfg = METHODS.get(method).Config
    return any("expert" in f.name for f in dataclasses.fields(cfg))


def expert_spec(cfg: RunConfig, data: data_mod.Data) -> Any | None:
    """The ExpertSpec a trajectory method will ask for, through the engine's own function when it
    has one, else from the method's expert_* options over the dataset's defaults."""
    try:
        experts = importlib.import_module("distill_core.experts")
    except ImportError:
        return None
    options = cfg.method_config()
    try:
        if hasattr(options, "resolved"):
            options = options.resolved(data, cfg.ipc)
        if hasattr(options, "expert_spec"):
            return options.expert_spec()
    except Exception:  # noqa: BLE001 - fall back to the expert_* options below
        pass
    spec = experts.default_spec(data)
    changes = {}
    for opt, spec_field in (
        ("expert_count", "count"),
        ("expert_train_epochs", "epochs"),
        ("expert_epochs_trained", "epochs"),
        ("expert_lr", "lr"),
        ("expert_batch", "batch"),
    ):
        v = getattr(options, opt, None)
        if v is not None and spec_field in {f.name for f in dataclasses.fields(spec)}:
            changes[spec_field] = v
    return dataclasses.replace(spec, **changes)


@st.cache_data(show_spinner=False, max_entries=32)
def expert_cost(dataset: str, net: dict, strategy: str, spec: dict, cache_dir: str) -> dict[str, Any]:
    from distill_core import experts
    from distill_core.nets import NetConfig
    from distill_core.run import pick_device

    data = data_mod.load(dataset).to(pick_device("auto"))
    netcfg = NetConfig(**net)
    s = experts.ExpertSpec(**spec)
    folder = experts.cache_path(Path(cache_dir), data, netcfg, strategy, s)
    cached = sum(1 for k in range(s.count) if experts.expert_file(folder, k).exists())
    seconds = 0.0 if cached == s.count else experts.estimate_seconds(data, netcfg, strategy, s) * (s.count - cached) / s.count
    return {
        "seconds": seconds,
        "mb": experts.storage_bytes(data, netcfg, s) / 2**20,
        "cached": cached,
        "count": s.count,
        "epochs": s.epochs,
    }


@st.cache_data(show_spinner="Estimating the run's cost…", max_entries=32)
def trajectory_cost(config_json: str, cache_dir: str) -> dict[str, float] | None:
    """The engine's own estimate of a trajectory-matching run (experts, unrolled graph, step time),
    when ``distill_core.methods.trajectory`` offers one; None otherwise."""
    try:
        trajectory = importlib.import_module("distill_core.methods.trajectory")
    except ImportError:
        return None
    estimate_run = getattr(trajectory, "estimate_run", None)
    if estimate_run is None:
        return None
    from distill_core.run import pick_device

    cfg = RunConfig.from_dict(json.loads(config_json))
    data = data_mod.load(cfg.dataset).to(pick_device(cfg.device))
    return estimate_run(cfg, data, Path(cache_dir)).to_dict()


@st.cache_data(show_spinner=False, max_entries=64)
def step_seconds(config_json: str) -> float:
    """Seconds per distillation step: the fastest of 3 timed steps after 2 warm-up steps."""
    cfg = RunConfig.from_dict(json.loads(config_json))
    run = Run(cfg)
    run.prepare()
    for i in range(2):  # the first steps are slower (allocations, kernel choices)
        log_rows([(i, run.method.step())])
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        log_rows([(i, run.method.step())])  # the host sync is part of the cost, once per step here
        times.append(time.perf_counter() - t0)
    return min(times)  # a busy machine only ever adds time


def estimate(cfg: RunConfig, data: data_mod.Data, store: Store, probe: bool = False) -> Estimate:
    """``cfg`` resolved (no None fields)."""
    est = Estimate()
    n_syn = data.num_classes * cfg.ipc
    data_mb = (data.x_train.numel() + data.x_test.numel()) * 4 / 2**20
    est.memory_mb = data_mb + n_syn * data.x_train[0].numel() * 4 * 3 / 2**20
    expert_seconds = 0.0
    engine_step = None
    if uses_experts(cfg.method):
        est.needs_experts = True
        est.expert_budget = getattr(cfg.method_config(), "expert_budget_s", None)
        cache_dir = str(Path.home() / ".cache" / "distill_explorer")
        spec = expert_spec(cfg, data)
        quick = None
        if spec is not None and data.x_train.shape[0] <= PROBE_MAX_IMAGES:
            quick = expert_cost(cfg.dataset, dataclasses.asdict(cfg.net), cfg.strategy, dataclasses.asdict(spec), cache_dir)
        tc, error = None, None
        if quick is None or quick["cached"] < quick["count"]:
            # experts to train, or a large dataset: the engine's estimate (experts, unrolled graph,
            # step time) is worth its few seconds; small data with experts ready is timed directly
            try:
                tc = trajectory_cost(json.dumps(cfg.to_dict()), cache_dir)
            except Exception as e:  # noqa: BLE001 - the estimate is advice, never a blocker
                error = e
        if tc is not None:
            cost = {
                "mb": tc["expert_storage_bytes"] / 2**20,
                "seconds": tc["expert_seconds"],
                "cached": tc["experts_cached"],
                "count": tc["experts_needed"],
                "epochs": expert_spec(cfg, data).epochs,
            }
            engine_step = tc["seconds_per_iteration"]
            est.memory_mb += tc["graph_bytes"] / 2**20
            est.lines.append(f"Each step keeps about **{mb(tc['graph_bytes'] / 2**20)}** of unrolled student steps in memory.")
        else:
            cost = quick
            if cost is None and spec is not None:
                try:
                    cost = expert_cost(
                        cfg.dataset, dataclasses.asdict(cfg.net), cfg.strategy, dataclasses.asdict(spec), cache_dir
                    )
                except Exception as e:  # noqa: BLE001
                    error = e
        if cost is None:
            est.lines.append(f"Could not estimate the experts' cost: {error}")
        else:
            est.memory_mb += cost["mb"]
            expert_seconds = est.expert_seconds = cost["seconds"]
            est.experts_ready = cost["cached"] == cost["count"]
            if est.experts_ready:
                est.lines.insert(
                    0, f"Experts: {cost['count']} already trained and saved ({cost['mb']:.1f} MB); no training needed."
                )
            else:
                est.lines.insert(
                    0,
                    f"Experts: {cost['count'] - cost['cached']} of {cost['count']} networks must first be trained on all "
                    f"the real images for {cost['epochs']} epochs: about **{duration(cost['seconds'])}**, "
                    f"{cost['mb']:.1f} MB on disk (once; later runs reuse them).",
                )
                est.heavy = cost["seconds"] > 60
    per_step, source = None, ""
    past = [
        r
        for r in store.list(dataset=cfg.dataset, method=cfg.method, status="done", limit=20)
        if r.ipc == cfg.ipc and r.iteration and r.timing_dict.get("distill")
    ]
    overhead = 0.0
    if past:
        r = sorted(past, key=lambda r: r.timing_dict["distill"] / r.iteration)[len(past) // 2]
        t = r.timing_dict
        per_step = t["distill"] / r.iteration
        # baseline, final check and the checks during the run, scaled to this run's number of checks
        checks = (cfg.iterations or 0) // cfg.eval_every if cfg.eval_every else 0
        overhead = t.get("baseline", 0) + t.get("prepare", 0) + t.get("evaluate", 0) * (1 + checks) / (1 + r.checks)
        source = f"{len(past)} earlier run(s) like this one"
    elif (
        probe
        and (not est.needs_experts or est.experts_ready)
        or (not est.needs_experts and data.x_train.shape[0] <= PROBE_MAX_IMAGES)
    ):  # automatic only where a step is quick to time; trajectory methods warm up over seconds
        try:
            per_step = step_seconds(json.dumps(cfg.to_dict()))
            source = "timed steps on this machine; accuracy checks not included"
        except Exception as e:  # noqa: BLE001
            est.lines.append(f"Could not time a step: {e}")
    if per_step is None and engine_step is not None:
        per_step, source = engine_step, "the engine's estimate from one timed student step, scaled to N; often high"
    if per_step is not None:
        est.seconds = per_step * (cfg.iterations or 0) + expert_seconds + overhead
        est.lines.insert(
            0,
            f"Time: about **{duration(est.seconds)}** for {cfg.iterations} steps "
            f"({1000 * per_step:.0f} ms a step, from {source}).",
        )
        est.heavy = est.heavy or est.seconds > 300
    elif not est.needs_experts or est.experts_ready:
        est.lines.insert(0, "Time: not measured yet for this dataset (press *Measure a few steps* to time it).")
    est.lines.append(
        f"Memory: about **{mb(est.memory_mb)}** (the dataset {mb(data_mb)}"
        + (", experts included)." if est.needs_experts else ").")
    )
    return est


def mb(x: float) -> str:
    return f"{x:.0f} MB" if x >= 10 else f"{x:.1f} MB"
