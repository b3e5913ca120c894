"""What a run will cost in time and memory, known before it starts (the app shows it; the CLI can).

Sources, best first: for trajectory matching the experts' training time (a few timed steps,
``experts.estimate_seconds``) and storage, and one timed student step scaled to N
(``unroll_cost``); earlier runs of the same kind in the store; a few timed steps of the method
itself (``step_seconds``; automatic on small datasets). Results are cached per configuration.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from distill_core.config import RunConfig
from distill_core.data.datasets import Data
from distill_core.evaluation.protocol import evaluate_set
from distill_core.methods import experts, trajectory
from distill_core.nets.networks import create_net
from distill_core.nets.precision import autocast
from distill_core.paths import cache_dir as default_cache_dir
from distill_core.runs.run import Run, log_rows
from distill_core.runs.store import Store
from distill_core.units import duration, mb

PROBE_MAX_IMAGES = 5000  # datasets this small are probed automatically


@dataclass(frozen=True)
class ExpertCost:
    seconds: float  # training the missing experts on this device
    storage_bytes: int  # disk and memory of all of them
    cached: int  # already on disk
    count: int
    epochs: float  # passes over the real images each expert trains


_EXPERT_SECONDS: dict[str, float] = {}  # training all experts of a spec, by the experts' cache key
_UNROLL: dict[str, trajectory.UnrollEstimate] = {}  # one matching iteration, by the run's config


def expert_cost(data: Data, cfg: RunConfig, cache_dir: Path | None = None) -> ExpertCost:
    """The experts a trajectory-matching run (``cfg`` resolved, ``data`` on its device) asks for: how
    many are cached now (looked up every time), what training the rest will take (timed once)."""
    spec = cfg.method_config().expert_spec()
    root = Path(cache_dir or default_cache_dir())
    data, _ = cfg.data_for(data, root)  # a whitening run's experts are cached apart from the plain images' ones
    cached = experts.cached_count(root, data, cfg.net, cfg.strategy, spec)
    seconds = 0.0
    if cached < spec.count:
        key = f"{experts.cache_path(root, data, cfg.net, cfg.strategy, spec).name}:{spec.count}:{spec.epochs}:{data.x_train.device}"
        if key not in _EXPERT_SECONDS:
            _EXPERT_SECONDS[key] = experts.estimate_seconds(data, cfg.net, cfg.strategy, spec)
        seconds = _EXPERT_SECONDS[key] * (spec.count - cached) / spec.count
    passes = spec.epochs if spec.checkpoints == 1 else round(spec.epochs / spec.checkpoints, 2)  # snapshots every 1/u pass
    return ExpertCost(seconds, experts.storage_bytes(data, cfg.net, spec), cached, spec.count, passes)


def unroll_cost(data: Data, cfg: RunConfig) -> trajectory.UnrollEstimate:
    """Memory and time of one matching iteration of a trajectory-matching run (``cfg`` resolved),
    measured once per configuration on one student step of the real shapes."""
    key = json.dumps(cfg.to_dict(), sort_keys=True) + str(data.x_train.device)
    if key in _UNROLL:
        return _UNROLL[key]
    options = cfg.method_config()
    device = data.x_train.device
    net = create_net(cfg.net, data.channels, data.im_size, data.num_classes, torch.Generator().manual_seed(0), device)
    for p in net.parameters():
        p.requires_grad_(False)
    params = {k: v.detach() for k, v in net.named_parameters()}
    n = data.num_classes * cfg.ipc
    images = torch.randn(n, data.channels, *data.im_size, device=device)
    if cfg.declares.soft_labels and getattr(options, "soft_labels", True):
        labels = torch.randn(n, data.num_classes, device=device).requires_grad_(True)
    else:
        labels = torch.arange(n, device=device) % data.num_classes
    _UNROLL[key] = trajectory.estimate_unroll(
        net, params, images, labels, options.syn_steps, options.batch_syn, cfg.strategy, options.constant_memory
    )
    return _UNROLL[key]


@lru_cache(maxsize=64)
def step_seconds(config_json: str) -> float:
    """Seconds per distillation step: the fastest of 3 timed steps after 2 warm-up steps."""
    run = Run(RunConfig.from_dict(json.loads(config_json)))
    run.prepare()
    for i in range(2):  # the first steps are slower (allocations, kernel choices)
        log_rows([(i, run.method.step())])
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        log_rows([(i, run.method.step())])  # the host sync is part of the cost, once per step here
        times.append(time.perf_counter() - t0)
    return min(times)  # a busy machine only ever adds time


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


def evaluation_epochs(cfg: RunConfig, checks: int) -> int:
    """Network-epochs of a run's evaluations: the final one and ``checks`` checks (resolved ``cfg``)."""
    check = cfg.check or cfg.eval
    return cfg.eval.nets * cfg.eval.epochs + checks * check.nets * check.epochs


def past_config(record: Any, fallback: RunConfig) -> RunConfig:
    """An earlier run's config, with ``fallback``'s protocols where it did not record them."""
    try:
        past = RunConfig.from_dict(record.config_dict)
    except (ValueError, TypeError, KeyError):
        return fallback
    eval_cfg = past.eval or fallback.eval
    return replace(past, eval=eval_cfg, check=past.check or replace(eval_cfg, nets=1))


def estimate(cfg: RunConfig, data: Data, store: Store | None, probe: bool = False, cache_dir: Path | None = None) -> Estimate:
    """Time and memory of the run ``cfg`` (resolved) on ``data``, with the lines that explain them.
    ``probe``: time a few steps even where that is slow to do. ``store`` None: earlier runs not consulted."""
    est = Estimate()
    n_syn = data.num_classes * cfg.ipc
    data_mb = (data.x_train.nbytes + data.x_test.nbytes) / 2**20  # as kept: uint8 bytes or float32
    est.memory_mb = data_mb + n_syn * data.x_train[0].numel() * 4 * 3 / 2**20
    expert_seconds = 0.0
    engine_step = None
    if cfg.declares.experts:
        est.needs_experts = True
        est.expert_budget = cfg.method_config().expert_budget_s
        cost: ExpertCost | None = None
        error: Exception | None = None
        try:
            cost = expert_cost(data, cfg, cache_dir)
            if cost.cached < cost.count or data.x_train.shape[0] > PROBE_MAX_IMAGES:
                # experts to train, or a large dataset: the engine's estimate of a step (unrolled graph,
                # time) is worth its few seconds; small data with experts ready is timed directly
                unroll = unroll_cost(data, cfg)
                engine_step = unroll.seconds_per_iteration
                est.memory_mb += unroll.graph_bytes / 2**20
                est.lines.append(f"Each step keeps about **{mb(unroll.graph_bytes / 2**20)}** of unrolled student steps in memory.")
        except Exception as e:  # noqa: BLE001 - the estimate is advice, never a blocker
            error = e
        if cost is None:
            est.lines.append(f"Could not estimate the experts' cost: {error}")
        else:
            est.memory_mb += cost.storage_bytes / 2**20
            expert_seconds = est.expert_seconds = cost.seconds
            est.experts_ready = cost.cached == cost.count
            size = cost.storage_bytes / 2**20
            if est.experts_ready:
                est.lines.insert(0, f"Experts: {cost.count} already trained and saved ({size:.1f} MB); no training needed.")
            else:
                est.lines.insert(
                    0,
                    f"Experts: {cost.count - cost.cached} of {cost.count} networks must first be trained on all "
                    f"the real images for {cost.epochs} epoch{'s' if cost.epochs != 1 else ''}: about **{duration(cost.seconds)}**, "
                    f"{size:.1f} MB on disk (once; later runs reuse them).",
                )
                est.heavy = cost.seconds > 60
    per_step, source = None, ""
    past = [
        r
        for r in (store.list(dataset=cfg.dataset, method=cfg.method, status="done", limit=20) if store is not None else [])
        if r.ipc == cfg.ipc and r.iteration and r.timing_dict.get("distill")
    ]
    overhead = 0.0
    if past:
        r = sorted(past, key=lambda r: r.timing_dict["distill"] / r.iteration)[len(past) // 2]
        t = r.timing_dict
        per_step = t["distill"] / r.iteration
        # baseline, final check and the checks during the run, scaled by network-epochs to this run's
        # final protocol and checks (a quick check costs a fraction of the final evaluation)
        checks = (cfg.iterations or 0) // cfg.eval_every + 1 if cfg.eval_every else 0
        overhead = t.get("baseline", 0) + t.get("prepare", 0) + t.get("evaluate", 0) * (
            evaluation_epochs(cfg, checks) / max(1, evaluation_epochs(past_config(r, cfg), r.checks))
        )
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
        est.lines.insert(0, "Time: not measured yet for this dataset (time a few steps: *Measure a few steps* in the app, --probe in the CLI).")
    est.lines.append(
        f"Memory: about **{mb(est.memory_mb)}** (the dataset {mb(data_mb)}"
        + (", experts included)." if est.needs_experts else ").")
    )
    return est


# ---- the two tiers side by side ------------------------------------------------------------------
_EVAL_EPOCH: dict[str, tuple[float, float]] = {}  # (seconds per training epoch, seconds of the final test) by shape


def evaluation_costs(cfg: RunConfig, data: Data) -> tuple[float, float]:
    """(seconds per epoch of one evaluation network on ``cfg``'s synthetic set size, seconds of its
    final test), from timing one network for 1 and for 5 epochs (after a warm-up) on random images of
    the real shapes, at the run's precision."""
    key = json.dumps([cfg.dataset, cfg.ipc, cfg.to_dict()["net"], cfg.eval.batch, cfg.eval.augment, cfg.strategy,
                      cfg.eval.test_images, str(data.x_train.device)])
    if key not in _EVAL_EPOCH:
        n = data.num_classes * cfg.ipc
        images = torch.randn(n, data.channels, *data.im_size, device=data.x_train.device)
        labels = torch.arange(n, device=data.x_train.device) % data.num_classes
        times = []
        with autocast(cfg.precision or "fp32", data.x_train.device, "evaluation"):
            for epochs in (1, 1, 5):  # the first warms up (allocations, kernel choices) and is not counted
                protocol = replace(cfg.eval, nets=1, epochs=epochs, syn_weights="uniform")  # weights cost nothing to time
                t0 = time.perf_counter()
                evaluate_set(images, labels, data, protocol, cfg.net, cfg.strategy, torch.Generator().manual_seed(0))
                times.append(time.perf_counter() - t0)
        times = times[1:]
        per_epoch = max(1e-6, (times[1] - times[0]) / 4)
        _EVAL_EPOCH[key] = (per_epoch, max(0.0, times[0] - per_epoch))
    return _EVAL_EPOCH[key]


@dataclass(frozen=True)
class TierCost:
    tier: str
    iterations: int
    step_seconds: float | None  # None: not measured
    eval_seconds: float  # the final evaluation and its random baseline (the baseline's cache not counted)
    expert_seconds: float
    expert_bytes: int  # the experts' disk size (0: the method uses none)
    eval_nets: int
    eval_epochs: int

    @property
    def seconds(self) -> float | None:
        if self.step_seconds is None:
            return None
        return self.step_seconds * self.iterations + self.eval_seconds + self.expert_seconds

    def line(self) -> str:
        step = "steps not timed" if self.step_seconds is None else f"{1000 * self.step_seconds:.0f} ms a step"
        total = "not measured" if self.seconds is None else f"about {duration(self.seconds)}"
        out = (f"{self.tier} tier: {total} ({self.iterations} steps, {step}; evaluation {self.eval_nets} x {self.eval_epochs} "
               f"epochs and the random baseline alike: {duration(self.eval_seconds)}")
        if self.expert_bytes:
            out += f"; experts {duration(self.expert_seconds)} to train, {mb(self.expert_bytes / 2**20)} on disk"
        return out + ")"


def tier_cost(cfg: RunConfig, data: Data, cache_dir: Path | None = None) -> TierCost:
    """The time of the run ``cfg`` (resolved, ``data`` on its device) on this machine: a step timed
    here (a few steps; for trajectory methods whose experts are not trained yet, the engine's estimate
    from one student step), the evaluation timed on one network, the experts' training and disk size.
    Earlier runs are not consulted: their settings may be the other tier's."""
    est = estimate(cfg, data, None, cache_dir=cache_dir)
    step = None
    if cfg.iterations and est.seconds is not None:
        step = max(0.0, est.seconds - est.expert_seconds) / cfg.iterations
    elif not est.needs_experts or est.experts_ready:
        try:
            step = step_seconds(json.dumps(cfg.to_dict()))
        except Exception:  # noqa: BLE001 - advice, never a blocker
            step = None
    per_epoch, test = evaluation_costs(cfg, data)
    eval_seconds = 2 * cfg.eval.nets * (cfg.eval.epochs * per_epoch + test)
    expert_bytes = 0
    if cfg.declares.experts:
        expert_bytes = experts.storage_bytes(data, cfg.net, cfg.method_config().expert_spec())
    return TierCost(cfg.tier or "quick", cfg.iterations or 0, step, eval_seconds, est.expert_seconds, expert_bytes,
                    cfg.eval.nets, cfg.eval.epochs)
