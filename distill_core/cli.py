"""``python -m distill_core``: headless runs, evaluation of saved sets, lists of what exists."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distill_core import data as data_mod
from distill_core import executor
from distill_core.artifacts import grid_image, load_synthetic, save_synthetic
from distill_core.config import DEVICES, SAMPLINGS, RunConfig, recount_overrides, resolve
from distill_core.data import zca as zca_mod
from distill_core.data.builtin import DATASETS
from distill_core.data.datasets import Data, DataError
from distill_core.evaluation import defaults
from distill_core.evaluation.baselines import random_baseline
from distill_core.evaluation.protocol import evaluate_set
from distill_core.initializers import INITIALIZERS
from distill_core.initializers.coreset import DEFAULT_MS, coreset_experiment, markdown_table, write
from distill_core.methods import METHODS
from distill_core.nets.networks import NetConfig
from distill_core.nets.precision import PRECISIONS, chosen, running_at
from distill_core.options import option_lines
from distill_core.paths import cache_dir
from distill_core.runs import cache as cache_mod
from distill_core.runs.estimates import estimate, heavy_advice, tier_cost
from distill_core.runs.recorder import Recorder
from distill_core.runs.run import Run, Snapshot, pick_device
from distill_core.runs.store import Store
from distill_core.studies import reproduce as reproduce_mod
from distill_core.studies import windows as windows_mod
from distill_core.studies.bench import arch_table, bench
from distill_core.studies.speed import speed
from distill_core.studies.sweep import REFUSE_SECONDS, estimate_sweep, parse_ipcs, parse_upto, plan, sweep
from distill_core.synthetic import SYN_WEIGHTS
from distill_core.threads import choose_threads
from distill_core.tiers import TIERS, default_tier, tier_label
from distill_core.units import duration, mb


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"option {pair!r} must be key=value, e.g. lr_img=1.0")
        k, v = pair.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def seed_number(text: str) -> int:
    """A seed torch takes (a 64-bit integer): refused by argparse in one line, not by torch mid-run."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text[:40]} is outside the allowed range (-2**63 to 2**64 - 1)")
    return value


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="a dataset name (see `list`) or a path to an .npz or .zip")
    p.add_argument("--method", default="dm", help=f"one of: {', '.join(METHODS.names())}")
    p.add_argument("--init", default="random", help=f"one of: {', '.join(INITIALIZERS.names())}")
    p.add_argument("--ipc", type=int, default=1, help="synthetic images per class")
    p.add_argument("--iterations", type=int, default=None, help="distillation steps (default: per method and dataset)")
    p.add_argument("--seed", type=seed_number, default=0)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="bf16: forward passes under autocast (fp32 leaves and optimizer state); auto: per loop, what "
                        "was measured faster on this device type (bf16 on a CPU with AVX512-BF16 or AMX, fp32 with TF32 on a CUDA GPU; "
                        "nets/precision.py) (default: fp32 on digits, auto elsewhere)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the networks of DM, the evaluation and the experts (10-25 s once; pays on runs of many minutes)")
    p.add_argument("--sampling", default="uniform", choices=SAMPLINGS, help="real batches: uniform or importance-sampled by loss")
    p.add_argument("--width", type=int, default=None, help="network width (default: per dataset)")
    p.add_argument("--depth", type=int, default=None, help="network depth (default: per dataset)")
    p.add_argument("--eval-nets", type=int, default=None, help="evaluation networks (default: per dataset)")
    p.add_argument("--eval-epochs", type=int, default=None, help="epochs per evaluation network (default: per dataset)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps during the run (0: only at the end)")
    p.add_argument("--eval-syn-weights", default=None, choices=SYN_WEIGHTS,
                   help="the evaluation's loss per synthetic image: uniform, or coreset (each weighted by its initializer's "
                        "coreset weight, normalised to mean 1 per class; sensitivity and krr-sensitivity give them). "
                        "The method's own use (DM's class mean, DC/DSA's gradients, KRR's regression, the trajectory "
                        "methods' student loss): --set syn_weights=coreset")
    p.add_argument("--time-budget", type=float, default=None, help="stop distilling after this many seconds, then evaluate")
    p.add_argument("--eval-archs", default="", metavar="NETS",
                   help="also evaluate the final set, beside a random baseline, on these networks, e.g. convnet,mlp,lenet,resnet")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --set lr_img=1.0 (repeatable)")
    p.add_argument("--init-set", dest="init_options", action="append", default=[], metavar="KEY=VALUE", help="an initializer option (repeatable)")
    add_zca_arg(p, "ZCA-whiten the training and test images first, as MTT's and DATM's authors do on CIFAR (default: the tier's "
                   "choice: on for mtt, iadd and datm on three-channel sets in the paper tier, off otherwise)")
    p.add_argument("--zca-eps", type=float, default=None, help="the whitening's eps (default: 0.1, the authors')")
    add_tier_arg(p)


def add_zca_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--zca", default=None, action=argparse.BooleanOptionalAction, help=text)


def add_tier_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", default=None, choices=TIERS,
                   help="paper: the authors' settings (iterations, real batch, loops, experts, 20 x 1000-epoch evaluation); "
                        "quick: this project's per-dataset defaults (default: paper on a CUDA GPU for mnist, fashion-mnist, "
                        "cifar10, cifar100; quick elsewhere). Anything set explicitly overrides the tier")


def run_config(args: argparse.Namespace, tier: str | None = None) -> tuple[RunConfig, Data]:
    """Build and validate the config, loading the dataset: every user error surfaces here. ``tier``:
    this tier instead of ``--tier`` (the estimate shows both)."""
    cfg = RunConfig(
        dataset=args.dataset, method=args.method, init=args.init, ipc=args.ipc, iterations=args.iterations,
        seed=args.seed, device=args.device, sampling=args.sampling, precision=args.precision, compile=args.compile,
        eval_every=args.eval_every,
        time_budget=args.time_budget, eval_archs=tuple(a.strip() for a in args.eval_archs.split(",") if a.strip()),
        options=parse_options(args.options), init_options=parse_options(args.init_options), tier=tier or args.tier,
        zca=args.zca, **({} if args.zca_eps is None else {"zca_eps": args.zca_eps}),
    )
    data = data_mod.load(cfg.dataset)
    pick_device(cfg.device)
    cfg = resolve(cfg, data)
    if args.width or args.depth:
        cfg = replace(cfg, net=replace(cfg.net, width=args.width or cfg.net.width, depth=args.depth or cfg.net.depth))
    if args.eval_nets or args.eval_epochs or args.eval_syn_weights:
        cfg = cfg.with_eval(args.eval_nets, args.eval_epochs, args.eval_syn_weights)
    return recount_overrides(cfg, data), data  # the overrides name the network and protocol set here too


class ProgressBar:
    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="it", file=sys.stderr, dynamic_ncols=True)
        self.phase = ""

    def __call__(self, snap: Snapshot) -> None:
        if snap.iterations and self.bar.total != snap.iterations:
            self.bar.total = snap.iterations
        if snap.iteration > self.bar.n:
            self.bar.update(snap.iteration - self.bar.n)
        phase = snap.phase
        if snap.phase_progress is not None and "%" not in phase:
            left = f", {duration(snap.phase_eta)} left" if snap.phase_eta else ""
            phase = f"{phase.split(':')[0]} ({100 * snap.phase_progress:.0f}%{left})"
        if phase != self.phase:
            self.phase = phase
            self.bar.set_description(phase[:48])
        if snap.metrics:
            self.bar.set_postfix(loss=f"{snap.metrics[-1].get('loss', float('nan')):.4g}", refresh=False)

    def close(self) -> None:
        self.bar.close()


RAY_HELP = ("run on a Ray cluster: its address (ray start --head prints it; auto: the one on this machine), "
            "or local: start one of this machine's cores and stop it after")


def cmd_run(args: argparse.Namespace) -> int:
    if args.ray:
        # the run reaches expert training (Context -> load_or_train) and its evaluation networks
        # (evaluation.protocol.train_networks) through its method and its evaluation: the address
        # goes there through the one variable the engine reads (executor.from_environment), not as a
        # new field of every layer in between; a cell's subprocess or an app run reads it alike
        os.environ[executor.ENV] = args.ray
    cfg, data = run_config(args)
    out = Path(args.out)
    store = Store(args.store) if args.store else None
    run = Run(cfg, log_every=10, on_snapshot=None if store is None else Recorder(store))
    if store is not None:  # recorded as the app records its runs: the Compare page lists it
        store.add(run.snapshot(), owner="cli", label=args.label or f"command line: {cfg.method} ipc {cfg.ipc} seed {cfg.seed}")
    bar = ProgressBar()
    run.progress = bar
    # held for the whole run: its experts and its evaluation networks then share one connection (with
    # --ray local, one cluster) instead of starting and stopping one for each
    with executor.from_environment():
        snap = run.execute()
    bar.close()
    if snap.status == "failed" and snap.final is None:
        raise ValueError(snap.message)
    results = run.results()
    syn = run.method.synthetic()
    # write everything to a temporary folder first, then move it in: nothing half-written in DIR
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_dir = Path(tmp)
        (tmp_dir / "results.json").write_text(json.dumps(results, indent=2))
        pixels = run.pixels(syn.images)  # through the whitening's inverse where the run whitened
        meta = {"dataset": cfg.dataset, "method": cfg.method, "ipc": cfg.ipc, "config": cfg.to_dict()}
        save_synthetic(tmp_dir / "synthetic.safetensors", syn, pixels, meta)
        grid_image(pixels, cfg.ipc).save(tmp_dir / "synthetic.png")
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp_dir.iterdir():
            shutil.move(str(f), out / f.name)
    acc, base = results["accuracy"], results["baseline_random"]
    print(
        f"{cfg.method} on {cfg.dataset}, ipc {cfg.ipc}: accuracy {100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}% "
        f"(random real {100 * base['mean']:.1f} ± {100 * base['std']:.1f}%{', from the cache' if results['baseline_cached'] else ''}), "
        f"distill {results['seconds']['distill']:.1f} s, evaluate {results['seconds']['evaluate']:.1f} s -> {out}"
    )
    if results["accuracy_by_arch"]:
        print(arch_table(results["accuracy_by_arch"]))
    print(f"tier: {results['tier_label']}" + (f" (reduced against paper: {results['reduced']})" if results.get("reduced") else ""))
    if snap.status == "failed":
        print(f"error: {snap.message}", file=sys.stderr)
        return 1
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    syn, meta = load_synthetic(Path(args.synthetic))
    data = data_mod.load(args.dataset)
    device = pick_device(args.device)
    if tuple(syn.images.shape[1:]) != (data.channels, *data.im_size):
        raise ValueError(f"the synthetic images are {tuple(syn.images.shape[1:])} but {args.dataset} images are {(data.channels, *data.im_size)}")
    if int(syn.labels.max() if not syn.labels.is_floating_point() else syn.labels.shape[1] - 1) >= data.num_classes:
        raise ValueError(f"the synthetic labels name more classes than the {data.num_classes} of {args.dataset}")
    saved = RunConfig.from_dict(meta["config"]) if "config" in meta else None
    net = saved.net if saved and saved.net else defaults.net_for(data)
    strategy = saved.strategy if saved and saved.strategy is not None else defaults.strategy_for(data)
    ecfg = defaults.eval_for(data)
    # the loss weights the set's run evaluated with, unless asked otherwise
    syn_weights = args.syn_weights or (saved.eval.syn_weights if saved and saved.eval else "uniform")
    ecfg = replace(ecfg, nets=args.nets or ecfg.nets, epochs=args.epochs or ecfg.epochs, syn_weights=syn_weights)
    if args.arch:
        ecfg = replace(ecfg, arch=NetConfig(name=args.arch))
    data = data.to(device)
    # the images the set was distilled against: whitened as its run's were (or as --zca says)
    zca_on = args.zca if args.zca is not None else bool(saved and saved.zca)
    if zca_on:
        data, _ = zca_mod.whiten(data, saved.zca_eps if saved else zca_mod.EPS, cache_dir())
    ipc = syn.images.shape[0] // data.num_classes
    # the precision asked for, else the one the set was distilled and evaluated at, else the dataset's
    precision = args.precision or (saved.chosen_precision() if saved else defaults.precision_for(args.dataset))
    t0 = time.perf_counter()
    with running_at(precision, device, "evaluation"):
        gen = torch.Generator().manual_seed(args.seed + 1)
        acc = evaluate_set(syn.images.to(device), syn.labels.to(device), data, ecfg, net, strategy, gen, syn.lr, weights=syn.weights)
        base, _ = random_baseline(data, ipc, ecfg, net, strategy, args.seed + 2)
    result = {"synthetic": str(args.synthetic), "dataset": args.dataset, "ipc": ipc, "arch": (ecfg.arch or net).name,
              "precision": chosen(precision, device, "evaluation"), "zca": zca_on, "syn_weights": syn_weights, "accuracy": acc.to_dict(),
              "baseline_random": base.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(result, indent=2))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """The time and memory a run would take (the app's estimate), and its resolved configuration."""
    cfg, data = run_config(args)
    est = estimate(cfg, data.to(pick_device(cfg.device)), Store(args.runs), probe=args.probe)
    for line in est.lines:
        print(line.replace("**", ""))
    if est.heavy:
        print(heavy_advice(est).replace("**", ""))
    if not args.one_tier:
        device = pick_device(cfg.device)
        print(f"Both tiers on this machine ({device}; steps and one evaluation network timed here, your explicit settings in both):")
        for tier in TIERS:
            tier_cfg = cfg if tier == cfg.tier else run_config(args, tier)[0]
            cost = tier_cost(tier_cfg, data.to(device))
            print(("* " if tier == cfg.tier else "  ") + cost.line())
        print(f"This run: {tier_label(cfg.to_dict())} tier")
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.speed:
        precisions = [p for p in args.precisions.split(",") if p]
        names = [n.strip() for n in args.loops.split(",") if n.strip()] if args.loops else None
        print(speed(args.preset, precisions, args.repeats, Path(args.out), args.device, args.only, names))
        return 0
    return bench(args)


def grid_base(args: argparse.Namespace, data: Data, method: str, options: dict | None = None) -> RunConfig:
    """The configuration every run of a sweep (or windows comparison) starts from: the CLI's protocol,
    else the tier's (quick: the dataset's; paper: each method's own, as its authors evaluated it)."""
    tier = getattr(args, "tier", None) or default_tier(args.dataset, args.device)
    ecfg = None
    if args.eval_nets or args.eval_epochs or tier == "quick":
        # one protocol for every run; a value not given is the tier's (paper: the first method's)
        ecfg = resolve(RunConfig(dataset=args.dataset, method=method, device=args.device, tier=tier), data).eval
        ecfg = replace(ecfg, nets=args.eval_nets or ecfg.nets, epochs=args.eval_epochs or ecfg.epochs)
    return RunConfig(dataset=args.dataset, method=method, init=args.init, iterations=args.iterations, device=args.device,
                     eval=ecfg, options=options or {}, tier=tier)


def too_long(cfgs: list[RunConfig], data: Data, args: argparse.Namespace, full_epochs: int | None, fewer: str) -> bool:
    """Print the estimate of these runs; True (with an error line) when it passes REFUSE_SECONDS without --yes."""
    est = estimate_sweep(cfgs, data.to(pick_device(args.device)), full_epochs)
    print("\n".join(est.lines), flush=True)
    if est.seconds > REFUSE_SECONDS and not args.yes:
        print(f"error: this would take more than {REFUSE_SECONDS // 60} minutes; add --yes to run it anyway, or {fewer}",
              file=sys.stderr)
        return True
    return False


def cmd_sweep(args: argparse.Namespace) -> int:
    """Accuracy against IPC: the estimate first (refused above REFUSE_SECONDS without --yes), then the runs."""
    data = data_mod.load(args.dataset)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not methods:
        raise ValueError("no method given; e.g. --methods dm,mtt,datm")
    base = grid_base(args, data, methods[0])
    ipcs = parse_ipcs(args.ipcs, data)
    upto = parse_upto(args.upto)
    cfgs = plan(base, data, methods, ipcs, seeds, upto)
    if too_long(cfgs, data, args, args.full_epochs or cfgs[0].eval.epochs, "sweep fewer methods or IPCs"):
        return 2
    store = Store(args.store) if args.store else None
    with executor.make_executor(args.ray) as ex:
        result = sweep(base, data, methods, ipcs, seeds, upto, args.full_epochs, store, Path(args.out), executor=ex)
    print((Path(args.out) / "sweep.md").read_text())
    return 0 if all("synthetic" in r for r in result["rows"]) else 1


def cmd_windows(args: argparse.Namespace) -> int:
    """DATM with early and late matching windows at each IPC: which part of the experts' epochs wins."""
    data = data_mod.load(args.dataset)
    base = grid_base(args, data, "datm", parse_options(args.options))
    ipcs = parse_ipcs(args.ipcs, data)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs, _ = windows_mod.plan(base, data, ipcs, args.windows, seeds)
    if too_long([cfg for cfg, _ in runs], data, args, None, "compare fewer IPCs or windows"):
        return 2
    store = Store(args.store) if args.store else None
    result = windows_mod.windows(base, data, ipcs, args.windows, seeds, store, Path(args.out))
    print((Path(args.out) / "windows.md").read_text())
    return 0 if all("synthetic" in r for r in result["rows"]) else 1


def cmd_coreset(args: argparse.Namespace) -> int:
    """How well sensitivity (or leverage-score) samples keep the full class's cost, against uniform samples."""
    ms = tuple(int(m) for m in args.ms.split(",") if m.strip())
    result = coreset_experiment(data_mod.load(args.dataset), args.init, args.cls, ms, args.draws, args.seed,
                                **parse_options(args.init_options))
    write(result, Path(args.out))
    print(markdown_table(result))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``cache list``: the cached experts and baselines; ``cache clear``: delete them (or one kind)."""
    root = Path(args.cache_dir) if args.cache_dir else cache_dir()
    kinds = tuple(k for k in cache_mod.KINDS if getattr(args, k, False)) or cache_mod.KINDS
    if args.action == "list":
        found = cache_mod.entries(root, kinds)
        for e in found:
            size = mb(e.bytes / 2**20) if e.bytes >= 2**20 else f"{e.bytes / 1024:.1f} KB"
            print(f"{size:>9}  {e.kind:<9} {e.path}\n           {e.what}")
        total = sum(e.bytes for e in found)
        print(f"{len(found)} cached item(s), {mb(total / 2**20)} in all, under {root}")
        return 0
    n, freed = cache_mod.clear(root, kinds)
    print(f"cleared {n} cached item(s) ({' and '.join(kinds)}), {mb(freed / 2**20)} freed, under {root}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """The cells the authors published, run here beside their figures: reproduce.json and reproduce.md."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        METHODS.get(m)  # an unknown name fails at once, with the known names
    ipcs = [int(i) for i in args.ipcs.split(",") if i.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    extra = list(args.extra or [])
    for flag, value in (("--iterations", args.iterations), ("--eval-nets", args.eval_nets), ("--eval-epochs", args.eval_epochs),
                        ("--device", args.device)):
        if value is not None:
            extra += [flag, str(value)]
    out = Path(args.out)
    result = reproduce_mod.reproduce(args.dataset, methods, ipcs, seeds, args.tier, out, extra, args.all, args.ray, store=args.store)
    print((out / "reproduce.md").read_text())
    return 0 if all("error" not in r for r in result["rows"]) else 1


def cmd_list(args: argparse.Namespace) -> int:
    if args.name:  # one method's or initializer's options, as --set / --init-set take them
        kinds = (("method", "--set", METHODS), ("initializer", "--init-set", INITIALIZERS))
        found = [(kind, flag, registry.get(args.name).Config) for kind, flag, registry in kinds if args.name in registry]
        if not found:
            print(f"error: {args.name!r} is neither a method ({', '.join(METHODS.names())}) nor an initializer "
                  f"({', '.join(INITIALIZERS.names())})", file=sys.stderr)
            return 2
        for kind, flag, config in found:
            print(f"options of the {kind} {args.name} ({flag} KEY=VALUE):")
            print("\n".join("  " + line for line in option_lines(config)))
        return 0
    print("datasets:     " + ", ".join(DATASETS.names()) + ", or a path to an .npz / .zip")
    print("methods:      " + ", ".join(METHODS.names()))
    print("initializers: " + ", ".join(INITIALIZERS.names()))
    print("a method's or initializer's options: python -m distill_core list NAME")
    return 0


def add_grid_args(p: argparse.ArgumentParser, stem: str) -> None:
    """The protocol, device, store and output options of the commands that run a grid of runs."""
    p.add_argument("--eval-nets", type=int, default=None, help="evaluation networks (default: per dataset)")
    p.add_argument("--eval-epochs", type=int, default=None, help="epochs per evaluation network (default: per dataset)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--store", default=None, help="also record every run in this runs directory (the app's Compare page)")
    p.add_argument("--yes", action="store_true", help=f"run even when the estimate exceeds {REFUSE_SECONDS // 60} minutes")
    p.add_argument("--out", required=True, help=f"folder for {stem}.json and {stem}.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distill_core", description="Dataset distillation, headless.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads on CPU (default: OMP_NUM_THREADS if set, else the cores the load average leaves free)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="distil a dataset and evaluate the result beside a random-real baseline")
    add_run_args(p)
    p.add_argument("--out", required=True, help="folder for results.json, synthetic.safetensors, synthetic.png")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help=RAY_HELP + " (here: the experts the method trains and the evaluation's networks)")
    p.add_argument("--store", default=None, metavar="RUNS", help="also record the run in this runs directory, as the app does "
                   "(start the app in the folder that holds it, ./runs, and its Compare page lists the run)")
    p.add_argument("--label", default="", help="the run's label in that store")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("estimate", help="time and memory a run would take, before starting it")
    add_run_args(p)
    p.add_argument("--probe", action="store_true", help="time a few steps even where that is slow")
    p.add_argument("--runs", default=None, help="runs directory whose earlier runs inform the estimate (default ./runs)")
    p.add_argument("--show-config", action="store_true", help="print the fully resolved run configuration")
    p.add_argument("--one-tier", action="store_true", help="estimate only the run's tier (the other tier's steps are not timed)")
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("eval", help="evaluate a saved synthetic set with the protocol")
    p.add_argument("--synthetic", required=True, help="a synthetic.safetensors written by `run`")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--nets", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--arch", default=None, help="evaluate on another network (cross-architecture), e.g. mlp, lenet, resnet")
    p.add_argument("--seed", type=seed_number, default=0)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="default: the precision the set's run used (auto off digits: see run --precision)")
    add_zca_arg(p, "whiten the dataset (ZCA) before evaluating (default: as the set's run did, from its saved config)")
    p.add_argument("--syn-weights", default=None, choices=SYN_WEIGHTS,
                   help="uniform, or coreset: each image's loss weighted by the coreset weight saved with the set "
                        "(default: what the set's run evaluated with)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("bench", help="a grid of methods x initializers x IPC x seeds; writes bench.md and bench.json")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--methods", default="dm", help="comma-separated, e.g. dm,dc,dsa,mtt,datm,iadd,krr")
    p.add_argument("--inits", default="random", help="comma-separated initializers")
    p.add_argument("--ipc", default="1", help="comma-separated, e.g. 1,10")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of distillation per run")
    p.add_argument("--eval-archs", default="", metavar="NETS",
                   help="every run also evaluates on these networks (comma-separated); the table gets a column pair each")
    p.add_argument("--out", required=True, help="folder for bench.md and bench.json")
    add_tier_arg(p)
    p.add_argument("--ray", default=None, metavar="ADDRESS", help=RAY_HELP + " (here: each cell a task of one CPU)")
    p.add_argument("extra", nargs="*", help="after --, arguments passed to every `run` (e.g. -- --eval-nets 3)")
    p.add_argument("--speed", action="store_true", help="time the hot loops instead (writes speed.md and speed.json)")
    p.add_argument("--preset", default="app", help="with --speed: app (digits defaults) or reference (the field's settings)")
    p.add_argument("--precisions", default="fp32,bf16",
                   help="with --speed: variants, interleaved: fp32, bf16, each optionally +compile (e.g. fp32,bf16,bf16+compile)")
    p.add_argument("--repeats", type=int, default=3, help="with --speed: timed repeats per loop (median)")
    p.add_argument("--only", default=None, help="with --speed: only the presets whose name contains this (e.g. mnist)")
    p.add_argument("--loops", default=None,
                   help="with --speed: comma-separated loops (dm step, dsa outer, tm step, expert epoch, evaluation; "
                        "evaluation group, by default on CUDA only)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("sweep", help="accuracy against IPC: methods x IPCs, random baseline, full data; writes sweep.json and sweep.md")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--methods", default="dm", help="comma-separated, e.g. dm,mtt,datm")
    p.add_argument("--ipcs", default="1,10,50", help="comma-separated; 'max' is the smallest class's size (the whole set)")
    p.add_argument("--init", default="random", help=f"one of: {', '.join(INITIALIZERS.names())}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (rows pool them)")
    p.add_argument("--upto", action="append", default=[], metavar="METHOD=IPC", help="run METHOD only up to this IPC (repeatable)")
    p.add_argument("--iterations", type=int, default=None, help="distillation steps (default: per method, dataset and IPC)")
    p.add_argument("--full-epochs", type=int, default=None, help="epochs of the full-data networks (default: the protocol's)")
    add_tier_arg(p)
    p.add_argument("--ray", default=None, metavar="ADDRESS", help=RAY_HELP + " (here: each run a task of one CPU)")
    add_grid_args(p, "sweep")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("windows", help="DATM with early and late windows of the experts' epochs at each IPC; writes windows.json")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipcs", default="1,10", help="comma-separated IPCs, e.g. 1,10,50")
    p.add_argument("--windows", type=int, default=2, help="windows the experts' start epochs are cut into (2: early, late; 3: +middle)")
    p.add_argument("--init", default="random", help=f"one of: {', '.join(INITIALIZERS.names())}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (rows pool them)")
    p.add_argument("--iterations", type=int, default=None, help="distillation steps (default: DATM's per dataset and IPC)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE", help="a DATM option for every run (repeatable)")
    add_grid_args(p, "windows")
    p.set_defaults(func=cmd_windows)
    p = sub.add_parser("coreset", help="the coreset guarantee: relative error of sensitivity vs uniform samples against m")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--init", default="sensitivity", choices=("sensitivity", "krr-sensitivity"))
    p.add_argument("--class", dest="cls", default=None, help="a class index or name (default: all classes, costs summed)")
    p.add_argument("--ms", default=",".join(map(str, DEFAULT_MS)), help="comma-separated sample sizes m per class")
    p.add_argument("--draws", type=int, default=20, help="draws per m and scheme")
    p.add_argument("--seed", type=seed_number, default=0)
    p.add_argument("--init-set", dest="init_options", action="append", default=[], metavar="KEY=VALUE",
                   help="an initializer option, e.g. --init-set k=20 or --init-set kernel=linear (repeatable)")
    p.add_argument("--out", required=True, help="folder for coreset.json and coreset.md")
    p.set_defaults(func=cmd_coreset)
    p = sub.add_parser("reproduce", help="the cells the authors published, run here beside their figures; writes reproduce.json and reproduce.md")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--methods", default="dm,dc,dsa", help="comma-separated, e.g. dm,dc,dsa (mtt,datm: CIFAR-10)")
    p.add_argument("--ipcs", default="1,10", help="comma-separated IPCs")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--iterations", type=int, default=None, help="distillation steps (default: the tier's)")
    p.add_argument("--eval-nets", type=int, default=None, help="evaluation networks (default: the tier's)")
    p.add_argument("--eval-epochs", type=int, default=None, help="epochs per evaluation network (default: the tier's)")
    p.add_argument("--device", default=None, choices=DEVICES)
    p.add_argument("--all", action="store_true", help="also run the cells with no published figure (their published column stays empty)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help=RAY_HELP + " (here: each cell a task of one CPU)")
    p.add_argument("--out", required=True, help="folder for reproduce.json and reproduce.md")
    p.add_argument("--store", default=None, metavar="RUNS", help="also record every run in this runs directory (the app's "
                   "Compare page, \"Against the published figures\", then shows the table too)")
    p.add_argument("extra", nargs="*", help="after --, arguments passed to every `run`")
    add_tier_arg(p)
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("cache", help="the cached expert trajectories and random baselines: list them, or clear them")
    p.add_argument("action", choices=("list", "clear"))
    p.add_argument("--experts", action="store_true", help="only the expert trajectories")
    p.add_argument("--baselines", action="store_true", help="only the random-real baselines")
    p.add_argument("--cache-dir", default=None, help="default ~/.cache/distill_explorer")
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("list", help="known datasets, methods and initializers; with a name, its options")
    p.add_argument("name", nargs="?", default="", help="a method or initializer: list its options, defaults and limits")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        choose_threads(args.threads)
        return args.func(args)
    except (ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
