"""A distillation run, usable from a thread (``manager.JobManager`` runs the app's runs in its own
threads, or ``workers`` hands them to worker processes or Ray actors).

The worker publishes immutable ``Snapshot`` objects; readers (pages, the CLI) only ever read the
latest one. Host syncs happen only where metrics are logged.
"""
from __future__ import annotations

import math
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from distill_core import data as data_mod
from distill_core import initializers
from distill_core.config import RunConfig, resolve
from distill_core.data import zca
from distill_core.data.datasets import Data, DataError
from distill_core.evaluation.baselines import random_baseline
from distill_core.evaluation.protocol import Accuracy, EvalConfig, Stopped, evaluate_set
from distill_core.methods import METHODS, Context, Synthetic, create
from distill_core.nets.precision import compiling, running_at
from distill_core.paths import cache_dir as default_cache_dir
from distill_core.synthetic import InitResult
from distill_core.tiers import paper_settings, tier_label

ACTIVE = ("queued", "preparing", "running", "paused")
ENDED = ("done", "stopped", "failed", "interrupted", "resumed")  # resumed: continued by another run


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but no CUDA GPU is available here; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device mps asked for, but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(name)


@dataclass(frozen=True)
class Snapshot:
    run_id: str
    config: dict[str, Any]
    status: str = "queued"
    phase: str = ""
    iteration: int = 0
    iterations: int = 0
    images: torch.Tensor | None = None  # (C * ipc, ch, H, W) pixels in [0, 1], CPU
    labels: torch.Tensor | None = None  # (C * ipc,) or soft logits (C * ipc, C), CPU
    lr: float | None = None
    weights: torch.Tensor | None = None  # (C * ipc,) the set's coreset weights (``Synthetic.weights``), CPU
    class_names: tuple[str, ...] = ()
    metrics: tuple[dict[str, float], ...] = ()  # one row per logged iteration
    accuracy: tuple[dict[str, float], ...] = ()  # {"iteration", "mean", "std", "n"}
    baseline: dict[str, Any] | None = None
    baseline_cached: bool = False  # the baseline was read from the cache (``baselines``), not trained now
    # the random-real baseline under the checks' protocol (cfg.check), drawn beside the checks; the
    # final one (``baseline``) when the checks use the final protocol with fewer networks
    check_baseline: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    # cfg.eval_archs at the end: {arch: {"synthetic": accuracy, "random": accuracy, "random_cached": bool}}
    accuracy_by_arch: dict[str, dict[str, Any]] = field(default_factory=dict)
    init_indices: torch.Tensor | None = None
    init_scores: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    message: str = ""
    elapsed: float = 0.0
    eta: float | None = None
    # the phase other than distilling (experts, baseline, evaluation) under way: its fraction done and
    # the seconds it has left (None: no such phase, or not known yet)
    phase_progress: float | None = None
    phase_eta: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    version: int = 0  # grows by one with every publish: (run_id, version) names a snapshot's content

    @property
    def done(self) -> bool:
        return self.status in ENDED


CHECK_BASELINE_PHASE = "baseline for the checks: training on random real images (quick protocol)"


class RunStopped(Stopped):
    pass


@dataclass(frozen=True)
class Resume:
    """Where a run continues from (an interrupted run's checkpoint): its synthetic set becomes the
    initial set, the step count and the curves carry on. The method's own state (optimizer momentum,
    a learned step size, soft labels) starts afresh: only the images and labels persist."""

    images: torch.Tensor  # (C * ipc, ch, H, W), normalised
    labels: torch.Tensor  # (C * ipc,) or soft logits (C * ipc, C)
    iteration: int
    metrics: tuple[dict[str, float], ...] = ()
    accuracy: tuple[dict[str, float], ...] = ()  # the checks made during the run (one network each)
    weights: torch.Tensor | None = None  # (C * ipc,) coreset weights; None: the re-run initializer's


# ``on_snapshot(snapshot, synthetic)``: called on every publish; ``synthetic`` is the method's current
# set (as networks see it) when the worker publishes, None when a control call (pause) does
SnapshotHook = Callable[[Snapshot, "Synthetic | None"], None]


class Run:
    """One distillation run. ``execute()`` runs it in the calling thread; ``start()`` in a new one."""

    def __init__(
        self,
        cfg: RunConfig,
        run_id: str | None = None,
        cache_dir: Path | None = None,
        log_every: int = 10,
        publish_seconds: float = 0.5,
        on_snapshot: SnapshotHook | None = None,
        resume: Resume | None = None,
    ) -> None:
        self.cfg = cfg
        self.id = run_id or uuid.uuid4().hex[:10]
        self.cache_dir = cache_dir or default_cache_dir()
        if resume is not None and cfg.iterations is not None and resume.iteration >= cfg.iterations:
            raise ValueError(f"the run had already done {resume.iteration} of its {cfg.iterations} steps")
        self.resume_from = resume
        self.log_every = log_every
        self.publish_seconds = publish_seconds
        self.on_snapshot = on_snapshot
        self._lock = threading.Lock()
        self._stop = threading.Event()  # end the distillation (the run then evaluates what it has)
        self._abort = threading.Event()  # end the work under way: baseline, checks, final evaluation
        self._interrupted = False  # the process is going away: end as "interrupted", resumable
        self._distilling = False
        self._resume = threading.Event()
        self._resume.set()
        self._steps_requested = 0
        self._snapshot = Snapshot(self.id, cfg.to_dict())
        self._thread: threading.Thread | None = None
        self.metrics: list[dict[str, float]] = []
        self.accuracy: list[dict[str, float]] = []
        self.progress: Callable[[Snapshot], None] | None = None
        self.method = None
        self.data: Data | None = None  # the images as networks see them: whitened where cfg.zca is on
        self.whitening: zca.Whitening | None = None
        self.baseline_cached = False
        self._phase_started = ("", 0.0)  # (phase, when) of the phase _report last reported

    # ---- control (any thread) ----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.execute, name=f"run-{self.id}", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        """While distilling: stop there and evaluate what the run has; pressed again, or in any other
        phase (baseline, final evaluation): end that work too (between two epochs)."""
        if self._stop.is_set() or not self._distilling:
            self._abort.set()
        self._stop.set()
        self._resume.set()

    def interrupt(self) -> None:
        """The process is going away: end the work under way now (between two steps or epochs); the
        run ends "interrupted", resumable from its checkpoint, as after a crash."""
        self._interrupted = True
        self._abort.set()
        self._stop.set()
        self._resume.set()

    def pause(self) -> None:
        """Pause before the next iteration. While distilling, the loop itself publishes "paused" with
        the iteration it stopped at (publishing it here could show an iteration that the step in
        flight then advances); before distilling (preparation, experts) it shows at once."""
        self._resume.clear()
        if not self._distilling:
            self._publish(status="paused")

    def resume(self) -> None:
        self._resume.set()

    def step_once(self) -> None:
        """While paused: do exactly one more iteration."""
        with self._lock:
            self._steps_requested += 1
        self._resume.set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def cancel_if_stopped(self) -> bool:
        """Stopped while queued: recorded as such, never started (the job manager asks before starting it)."""
        if self._stop.is_set():
            self._publish(status="stopped", phase="", message="stopped while queued")
        return self._stop.is_set()

    # ---- worker ------------------------------------------------------------------------------
    def _publish(self, syn: Synthetic | None = None, **changes: Any) -> None:
        """A new snapshot with ``changes``; ``syn``: the current set, given only by the worker."""
        if "phase" in changes and "phase_progress" not in changes:
            changes.update(phase_progress=None, phase_eta=None)  # a new phase's progress is not known yet
        with self._lock:
            self._snapshot = replace(self._snapshot, version=self._snapshot.version + 1, **changes)
            snap = self._snapshot
        if self.on_snapshot is not None:
            self.on_snapshot(snap, syn)
        if self.progress is not None:
            self.progress(snap)

    def _report(self, phase: str, fraction: float) -> None:
        """A method's long preparation (experts) reports ``fraction`` of ``phase`` done."""
        if self._stop.is_set():
            raise RunStopped
        now = time.perf_counter()
        if phase != self._phase_started[0]:
            self._phase_started = (phase, now)
        self._publish(phase=f"{phase} ({100 * fraction:.0f}%)", **progress_fields(fraction, now - self._phase_started[1]))

    def _ticker(self, total_epochs: int) -> Callable[[], bool]:
        """The ``stop`` callable an evaluation asks once per epoch of each network: it also publishes
        the current phase's progress (epochs done of ``total_epochs``), at most every ``publish_seconds``."""
        every = self.publish_seconds
        t0 = last = time.perf_counter()
        done = 0

        def tick() -> bool:
            nonlocal done, last
            done += 1
            now = time.perf_counter()
            if now - last >= every and not self._distilling:  # a check while distilling is brief: no bar of its own
                last = now
                self._publish(**progress_fields(min(1.0, done / max(total_epochs, 1)), now - t0))
            return self._abort.is_set()

        return tick

    def _wait_if_paused(self) -> None:
        while not self._resume.wait(0.1):
            pass
        with self._lock:
            if self._steps_requested > 0:
                self._steps_requested -= 1
                if self._steps_requested == 0:
                    self._resume.clear()  # pause again after the requested steps

    def _images_for_display(self, syn: Synthetic) -> dict[str, Any]:
        """The snapshot's view of ``syn``; passes ``syn`` on to the snapshot hook."""
        return {
            "syn": syn,
            "images": self.pixels(syn.images),
            "labels": syn.labels.detach().cpu(),
            "lr": syn.lr,
            "weights": None if syn.weights is None else syn.weights.detach().cpu(),
        }

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the run's networks see them (normalised, or whitened) as pixels in [0, 1] on the
        CPU, for display and export: through the whitening's inverse where the run whitens."""
        assert self.data is not None
        return zca.display(self.data, self.whitening, images.detach()).cpu()

    def prepare(self) -> None:
        """Load data, resolve the config (a no-op when the caller did), build the initial set and the
        method; a resumed run then continues from its checkpoint."""
        self._publish(status="preparing", phase="loading data")
        device = pick_device(self.cfg.device)
        data = data_mod.load(self.cfg.dataset)
        self.cfg = cfg = resolve(self.cfg, data)
        data = data.to(device)
        if cfg.zca:
            self._publish(phase="whitening the images (ZCA)")
        # every later use (initial set, method, experts, checks, final evaluation, random baseline)
        # sees these images; the snapshots show the synthetic ones through the whitening's inverse
        data, self.whitening = cfg.data_for(data, self.cache_dir)
        self.data = data
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._publish(phase="initializing", config=cfg.to_dict(), iterations=cfg.iterations, class_names=data.class_names)
        init = initializers.create(cfg.init, data, cfg.ipc, self.generator, self.cache_dir, **cfg.init_options)
        self._publish(
            init_indices=None if init.indices is None else init.indices.cpu(),
            init_scores=None if init.scores is None else init.scores.cpu(),
        )
        if self.resume_from is not None:
            init = self._resumed_init(self.resume_from, init.weights)
        self.ctx = Context(
            data, cfg.ipc, cfg.net, cfg.strategy, self.generator, init, cfg.sampling,
            self.cache_dir, self._report, cfg.iterations,
        )
        self.method = create(cfg.method, self.ctx, cfg.options)
        changes: dict[str, Any] = {}
        if self.resume_from is not None:
            r = self.resume_from
            self.metrics, self.accuracy = list(r.metrics), list(r.accuracy)
            changes = {"iteration": r.iteration, "metrics": r.metrics, "accuracy": r.accuracy, "phase": f"resumed at step {r.iteration}"}
        self._publish(**changes, **self._images_for_display(self.method.synthetic()))

    def _resumed_init(self, r: Resume, fresh_weights: torch.Tensor | None = None) -> InitResult:
        """The checkpoint as the initial set, with its coreset weights (else ``fresh_weights``, those of
        the initializer run again with the run's seed: the same draw, for a checkpoint saved without them)."""
        assert self.data is not None
        hard = r.labels.argmax(1) if r.labels.is_floating_point() else r.labels
        if r.images.shape[1:] != self.data.x_train.shape[1:] or hard.shape[0] != r.images.shape[0]:
            raise ValueError("the checkpoint does not match the run's dataset; start the run again instead")
        weights = r.weights if r.weights is not None else fresh_weights
        if weights is not None and weights.shape[0] != hard.shape[0]:
            raise ValueError("the checkpoint's coreset weights do not match its images; start the run again instead")
        device = self.data.x_train.device
        return InitResult(r.images.to(device), hard.to(device), weights=None if weights is None else weights.to(device))

    def _evaluate(self, syn: Synthetic, nets: int | None = None, protocol: EvalConfig | None = None) -> Accuracy:
        cfg = self.cfg
        protocol = protocol or cfg.eval
        gen = torch.Generator().manual_seed(cfg.seed + 1)  # evaluation draws don't shift distillation's
        tick = self._ticker((nets or protocol.nets) * protocol.epochs)
        return evaluate_set(syn.images, syn.labels, self.data, protocol, cfg.net, cfg.strategy, gen, syn.lr, nets, tick, syn.weights)

    def _random_baseline(self, protocol: EvalConfig) -> tuple[Accuracy, bool]:
        """(random-real baseline under ``protocol``, whether it came from the cache)."""
        cfg = self.cfg
        tick = self._ticker(protocol.nets * protocol.epochs)
        return random_baseline(self.data, cfg.ipc, protocol, cfg.net, cfg.strategy, cfg.seed + 2, cfg.precision, self.cache_dir, tick)

    def baseline(self) -> Accuracy:
        acc, self.baseline_cached = self._random_baseline(self.cfg.eval)
        return acc

    def _quick_checks(self) -> bool:
        """The checks during the run use a quicker protocol than the final evaluation (not only fewer
        networks): their baseline is then a quick one of its own, and the final baseline is measured
        after the final evaluation, so the first accuracy comes soon after Start."""
        cfg = self.cfg
        return bool(cfg.eval_every) and cfg.check is not None and replace(cfg.check, nets=cfg.eval.nets) != cfg.eval

    def _measure_baseline(self, seconds: dict[str, float], quick: bool = False) -> Accuracy:
        """The final random baseline (``baseline``), or with ``quick`` the checks' own (``check_baseline``),
        published with its phase; its time is added to ``seconds["baseline"]``."""
        self._publish(phase=CHECK_BASELINE_PHASE if quick else "baseline: training on random real images")
        tb = time.perf_counter()
        if quick:
            base, _ = self._random_baseline(self.cfg.check)
            changes: dict[str, Any] = {"check_baseline": base.to_dict()}
        else:
            base = self.baseline()
            changes = {"baseline": base.to_dict(), "baseline_cached": self.baseline_cached}
        seconds["baseline"] += time.perf_counter() - tb
        self._publish(**changes, seconds=dict(seconds))
        return base

    def _cross_arch(self, syn: Synthetic, final: Accuracy, base: Accuracy) -> None:
        """The final set, and a random-real baseline, on each of ``cfg.eval_archs`` with the run's protocol;
        published after each architecture, so a Stop keeps those already measured."""
        cfg = self.cfg
        own = cfg.eval.arch or cfg.net
        nets = cfg.eval_arch_nets()
        by_arch: dict[str, dict[str, Any]] = {}
        for k, (name, net) in enumerate(nets.items()):
            if net == own:  # the run's own evaluation and baseline, same seeds: already measured
                syn_acc, rnd, cached = final, base, self.baseline_cached
            else:
                protocol = replace(cfg.eval, arch=net)
                self._publish(phase=f"cross-arch evaluation: {2 * k + 1}/{2 * len(nets)} {name}, synthetic set")
                syn_acc = self._evaluate(syn, protocol=protocol)
                self._publish(phase=f"cross-arch evaluation: {2 * k + 2}/{2 * len(nets)} {name}, random real")
                rnd, cached = self._random_baseline(protocol)
            by_arch[name] = {"synthetic": syn_acc.to_dict(), "random": rnd.to_dict(), "random_cached": cached}
            self._publish(accuracy_by_arch=dict(by_arch))

    def execute(self) -> Snapshot:
        """Run to the end (or to stop); returns the last snapshot. Never raises."""
        t0 = time.perf_counter()
        seconds = {"prepare": 0.0, "distill": 0.0, "evaluate": 0.0, "baseline": 0.0}
        try:
            loop = METHODS.get(self.cfg.method).declares.loop  # the experts and the evaluations take their own rows
            with running_at(self.cfg.chosen_precision(), pick_device(self.cfg.device), loop), compiling(self.cfg.compile):
                self._phases(seconds, t0)
        except Stopped:
            # a stop during preparation, the baseline or the final evaluation: what was made is kept
            # (the synthetic set is in the last snapshot and, in the app, in the checkpoint)
            phase = self._snapshot.phase
            message = (
                "stopped before distillation began"
                if self._snapshot.iteration == 0 and not phase.startswith(("final evaluation", "cross-arch"))
                else f"stopped during the {phase.split(':')[0] or 'run'}; the synthetic images so far are kept"
            )
            # stopped in the cross-arch evaluation: the final accuracy stands, so its set is saved with it
            syn = self.method.synthetic() if self._snapshot.final is not None and self.method is not None else None
            if self._interrupted:
                message = "the app stopped while this run was active; what it had saved is kept"
            self._publish(syn=syn, status="interrupted" if self._interrupted else "stopped", phase="", message=message,
                          seconds=dict(seconds))
        except (ValueError, DataError) as e:
            self._publish(status="failed", phase="", message=str(e), seconds=dict(seconds))
        except Exception as e:  # noqa: BLE001 - a crash of the worker becomes a message, not a dead thread
            traceback.print_exc()
            self._publish(status="failed", phase="", message=f"{type(e).__name__}: {e}")
        return self.snapshot()

    def _phases(self, seconds: dict[str, float], t0: float) -> None:
        """Prepare, baseline (the checks' quick one first where they have their own, ``_quick_checks``),
        check the initial set, distil, evaluate, then the final baseline where it was not measured first
        (at the run's precision, see ``execute``)."""
        self.prepare()
        seconds["prepare"] = time.perf_counter() - t0
        self._publish(syn=self.method.synthetic(), status="running")
        quick = self._quick_checks()
        if quick:
            self._measure_baseline(seconds, quick=True)
        else:
            base = self._measure_baseline(seconds)
            self._publish(check_baseline=base.to_dict())
        if self.cfg.eval_every and self._snapshot.iteration == 0:  # where distillation starts from
            self._publish(phase="checking the initial images")
            self._check(self.method.synthetic(), 0, seconds)
            self._publish(accuracy=tuple(self.accuracy))
        self._publish(phase="distilling")
        message = ""
        try:
            self._loop(seconds)
        except NonFinite as e:
            message = str(e)
        syn = self.method.synthetic()
        self._publish(syn=syn, phase="final evaluation", message=message or self._snapshot.message)
        te = time.perf_counter()
        final = self._evaluate(syn)
        seconds["evaluate"] += time.perf_counter() - te
        self.accuracy.append({"iteration": self._snapshot.iteration, **final.to_dict()})
        self._publish(final=final.to_dict(), accuracy=tuple(self.accuracy))  # kept if what follows is stopped
        if quick:
            base = self._measure_baseline(seconds)
        if self.cfg.eval_archs:
            tc = time.perf_counter()
            self._cross_arch(syn, final, base)
            seconds["cross_arch"] = time.perf_counter() - tc
        status = "failed" if message else "stopped" if self._stop.is_set() else "done"
        self._publish(
            syn=syn, status=status, phase="", final=final.to_dict(), accuracy=tuple(self.accuracy),
            seconds=dict(seconds), elapsed=time.perf_counter() - t0, eta=0.0,
        )
        # keep only the synthetic set, not the method's working state (experts' trajectories,
        # optimizers), which a long-lived app would pile up
        self.method = Frozen(syn)

    def _loop(self, seconds: dict[str, float]) -> None:
        self._distilling = True
        try:
            self._distill(seconds)
        finally:
            self._distilling = False

    def _distill(self, seconds: dict[str, float]) -> None:
        cfg = self.cfg
        last_good = self.method.synthetic()
        last_publish = 0.0
        t_distill = time.perf_counter()
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        it = self._snapshot.iteration

        def flush(final: bool) -> None:
            """Log the pending iterations (one host sync), check them, evaluate and publish when due."""
            nonlocal last_good, last_publish, t_distill
            eval_due = bool(cfg.eval_every) and it % cfg.eval_every == 0 and not final
            rows = log_rows(pending)
            pending.clear()
            syn = self.method.synthetic()
            bad = [k for k, v in rows[-1].items() if not math.isfinite(v)]
            if bad or not torch.isfinite(syn.images).all() or (syn.lr is not None and not syn.lr > 0):
                self._nonfinite(last_good, bad, syn, it)
            last_good = Synthetic(syn.images.clone(), syn.labels.clone(), syn.lr, syn.weights)
            elapsed = time.perf_counter() - t_distill
            for row in rows:
                row["seconds"] = elapsed
            self.metrics.extend(rows)
            if eval_due:
                t_distill += self._check(syn, it, seconds)
            now = time.perf_counter()
            if now - last_publish >= self.publish_seconds or final or self.paused or eval_due:
                last_publish = now
                rate = (now - t_distill) / it if it else 0.0
                self._publish(
                    status="paused" if self.paused else "running", iteration=it,
                    metrics=tuple(self.metrics), accuracy=tuple(self.accuracy),
                    extras={k: v.detach().cpu() for k, v in self.method.extras().items()},
                    eta=rate * (cfg.iterations - it), elapsed=now - t_distill,
                    **self._images_for_display(syn),
                )

        while it < cfg.iterations and not self._stop.is_set():
            self._wait_if_paused()
            if self._stop.is_set():
                break
            step_metrics = self.method.step()
            it += 1
            pending.append((it, step_metrics))
            out_of_time = cfg.time_budget is not None and time.perf_counter() - t_distill > cfg.time_budget
            final = it == cfg.iterations or out_of_time or self._stop.is_set()
            eval_due = bool(cfg.eval_every) and it % cfg.eval_every == 0 and not final
            if it % self.log_every == 0 or final or self.paused or eval_due:
                flush(final)  # the host sync happens here, once per log interval
            if out_of_time and it < cfg.iterations:
                self._publish(message=f"time budget of {cfg.time_budget:g} s reached at iteration {it} of {cfg.iterations}")
                break
        if pending:  # stopped while paused between log intervals
            flush(True)
        seconds["distill"] = time.perf_counter() - t_distill

    def _check(self, syn: Synthetic, it: int, seconds: dict[str, float]) -> float:
        """An accuracy check of ``syn`` at step ``it`` under the checks' protocol, appended to the
        curve; returns the seconds it took (not counted as distillation)."""
        te = time.perf_counter()
        acc = self._evaluate(syn, protocol=self.cfg.check)
        took = time.perf_counter() - te
        seconds["evaluate"] += took
        self.accuracy.append({"iteration": it, **acc.to_dict()})
        return took

    def _nonfinite(self, last_good: Synthetic, bad: list[str], syn: Synthetic, it: int) -> None:
        what = ", ".join(bad) if bad else ("images" if not torch.isfinite(syn.images).all() else "learned step size")
        self._publish(**self._images_for_display(last_good), iteration=it)
        self.method = Frozen(last_good)
        raise NonFinite(
            f"stopped at iteration {it}: {what} became {'non-positive' if what == 'learned step size' else 'NaN or infinite'}. "
            "The learning rate of the images (or of the step size) is probably too high for this setting: lower "
            "lr_img / lr_lr, or the number of unrolled steps. The last good synthetic set is kept."
        )

    def results(self) -> dict[str, Any]:
        snap = self.snapshot()
        cfg = self.cfg
        return {
            "dataset": cfg.dataset,
            "method": cfg.method,
            "init": cfg.init,
            "ipc": cfg.ipc,
            "iterations": snap.iteration,
            "seed": cfg.seed,
            "device": str(pick_device(cfg.device)),
            "status": snap.status,
            "message": snap.message,
            "accuracy": _acc(snap.final),
            "baseline_random": _acc(snap.baseline),
            "baseline_random_checks": _acc(snap.check_baseline),
            "baseline_cached": snap.baseline_cached,
            "accuracy_by_arch": {
                arch: {"synthetic": _acc(a["synthetic"]), "random": _acc(a["random"]), "random_cached": a["random_cached"]}
                for arch, a in snap.accuracy_by_arch.items()
            },
            "accuracy_curve": list(snap.accuracy),
            "seconds": {k: round(v, 3) for k, v in snap.seconds.items()},
            "peak_memory_mb": peak_memory_mb(),
            "lr": snap.lr,
            "tier": cfg.tier,
            "tier_label": tier_label(cfg.to_dict()),
            "overrides": list(cfg.overrides),
            "reduced": reduced_against_paper(cfg, self.data) if cfg.tier == "quick" and self.data is not None else None,
            "tier_notes": tier_notes(cfg, self.data) if self.data is not None else [],
            "zca": None if self.whitening is None else self.whitening.describe(),
            "seeds": {"run": cfg.seed, "evaluation": cfg.seed + 1, "baseline": cfg.seed + 2},
            "commit": engine_commit(),
            "versions": versions(),
            "device_name": device_name(pick_device(cfg.device)),
            "config": cfg.to_dict(),
        }


def reduced_against_paper(cfg: RunConfig, data: Data) -> str:
    """What a resolved quick-tier run reduced against the paper tier of the same cell, e.g.
    "iterations 400 of 20000, eval 3 x 300 epochs of 20 x 1000, batch_real 64 of 256"."""
    try:
        paper = resolve(RunConfig(dataset=cfg.dataset, method=cfg.method, init=cfg.init, ipc=cfg.ipc, device=cfg.device, tier="paper"), data)
    except (ValueError, TypeError) as e:
        return f"no paper tier to compare with: {e}"
    parts = []
    if cfg.iterations != paper.iterations:
        parts.append(f"iterations {cfg.iterations} of {paper.iterations}")
    mine, theirs = cfg.eval, paper.eval
    if (mine.nets, mine.epochs) != (theirs.nets, theirs.epochs):
        parts.append(f"eval {mine.nets} x {mine.epochs} epochs of {theirs.nets} x {theirs.epochs}")
    parts += [f"{k} {cfg.options.get(k)} of {v}" for k, v in paper.options.items() if cfg.options.get(k) != v]
    if cfg.zca != paper.zca:
        parts.append(f"ZCA whitening {'on' if cfg.zca else 'off'} (paper: {'on' if paper.zca else 'off'})")
    return ", ".join(parts) or "nothing: the same settings as the paper tier"


def tier_notes(cfg: RunConfig, data: Data) -> list[str]:
    """Where the paper tier's settings of this cell are not the authors' own (nearest published setting)."""
    if cfg.tier != "paper":
        return []
    return list(paper_settings(cfg.method, cfg.dataset, data.num_classes, cfg.ipc, data.channels).notes)


_COMMIT: list[str] = []


def engine_commit() -> str:
    """The engine's git commit (``git rev-parse HEAD`` of the checkout it runs from), else "unknown"."""
    if not _COMMIT:
        import subprocess

        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                 text=True, timeout=10)
            commit = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
            if commit != "unknown":  # tracked files changed since the commit: say so
                dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=10)
                commit += "-dirty" if dirty.returncode == 1 else ""
            _COMMIT.append(commit)
        except (OSError, subprocess.SubprocessError):
            _COMMIT.append("unknown")
    return _COMMIT[0]


engine_commit()  # read once at import: the commit of the code this process runs, not of a checkout changed since


def versions() -> dict[str, str | None]:
    import platform

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{device.type} ({platform.processor() or platform.machine()})"


def progress_fields(fraction: float, elapsed: float) -> dict[str, float | None]:
    """``phase_progress`` and ``phase_eta`` (from the rate so far) of a snapshot."""
    return {"phase_progress": fraction, "phase_eta": elapsed * (1 - fraction) / fraction if fraction > 0 else None}


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process, and of the CUDA allocator when a GPU is used."""
    import resource

    out = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _acc(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {"mean": d["mean"], "std": d["std"], "n": d["n"], "values": list(d["values"])}


class NonFinite(ValueError):
    pass


class Frozen:
    """Stands in for a method after a failure: hands out the last good synthetic set."""

    def __init__(self, syn: Synthetic) -> None:
        self.syn = syn

    def synthetic(self) -> Synthetic:
        return self.syn

    def extras(self) -> dict[str, torch.Tensor]:
        return {}


def log_rows(pending: list[tuple[int, dict[str, torch.Tensor]]]) -> list[dict[str, float]]:
    """Metrics of the pending iterations as floats, with a single host transfer."""
    if not pending:
        return []
    keys = sorted({k for _, m in pending for k in m})
    nan = torch.tensor(float("nan"))
    stacked = torch.stack([
        torch.stack([m.get(k, nan).detach().float().cpu().reshape(()) for k in keys]) for _, m in pending
    ]).tolist()
    return [{"iteration": it, **dict(zip(keys, vals, strict=True))} for (it, _), vals in zip(pending, stacked, strict=True)]
