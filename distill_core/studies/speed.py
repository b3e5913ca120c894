"""``python -m distill_core bench --speed``: how fast each hot loop runs at stated settings.

For every loop it prints seconds per unit (a step, an epoch, an evaluation), images per second and
the achieved GFLOP/s (the FLOPs of one unit counted by ``torch.utils.flop_counter``, over its time):

* ``dm step``: one DM iteration (a fresh network, every class's real batch and synthetic images);
* ``dsa outer``: one DC/DSA step (a fresh network, ``outer_loop`` image updates, the network's
  epochs on the synthetic set in between), the reference's loops for the IPC;
* ``tm step``: one trajectory-matching iteration (N unrolled student steps and the backward through
  them), from random start and target parameters, so that no expert needs training;
* ``expert epoch``: SGD over the real training set once (timed on ``expert_batches`` minibatches,
  scaled to the set's size);
* ``evaluation``: one network trained on the synthetic set with the protocol (timed over
  ``eval_epochs_timed`` epochs and scaled to the protocol's), then its test pass;
* ``evaluation group``: MTT's 5 evaluation networks trained as one group (``evaluation.grouped``:
  what a run on a CUDA GPU does, each epoch a captured graph there), then their test passes: set
  beside 5 x ``evaluation``. On a GPU the whole protocol is timed (a group captures its epoch once,
  which scaling a part would inflate); elsewhere the part ``evaluation`` times. Default on CUDA only:
  a CPU trains networks one after another (``protocol.groupable``), so there it runs when asked.

Data are random tensors of the preset's shape (the loops' cost does not depend on the pixels), so
the benchmark runs anywhere, offline. Each loop runs in every asked variant: "fp32", "bf16" (under
``torch.autocast``, CPU or CUDA), and either with "+compile" (the networks that ``precision.compiled``
compiles, after one untimed run that compiles them); the variants are interleaved, repeat by repeat,
so that their ratios hold on a busy machine. Timings are medians over ``repeats``.
"""
from __future__ import annotations

import contextlib
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from distill_core.data.augment import DEFAULT_STRATEGY, NO_FLIP_STRATEGY
from distill_core.data.datasets import Data
from distill_core.evaluation.protocol import EvalConfig, NetworkTask, test_accuracy, train_epoch, train_group, train_network
from distill_core.initializers import create as create_init
from distill_core.methods import Context, create, trajectory
from distill_core.nets import precision
from distill_core.nets.networks import NetConfig, create_net
from distill_core.nets.precision import PRECISIONS, autocast, compiled, compiling, is_compiling
from distill_core.runs.run import pick_device


@dataclass(frozen=True)
class Preset:
    name: str
    channels: int
    side: int
    classes: int
    train_images: int  # the real set's size (the expert epoch is scaled to it)
    test_images: int
    net: NetConfig
    ipc: int
    batch_real: int  # DM and DC/DSA real images per class
    strategy: str
    syn_steps: int  # N of trajectory matching
    batch_syn: int
    expert_batch: int
    eval_epochs: int


REFERENCE_NET = NetConfig(width=128, depth=3, norm="instance")
PRESETS: dict[str, tuple[Preset, ...]] = {
    # the field's reference settings: DatasetCondensation (DM, DSA) and mtt-distillation at IPC 10
    "reference": (
        Preset("mnist 28x28x1", 1, 28, 10, 60000, 10000, REFERENCE_NET, 10, 256, DEFAULT_STRATEGY, 30, 100, 256, 1000),
        Preset("cifar 32x32x3", 3, 32, 10, 50000, 10000, REFERENCE_NET, 10, 256, DEFAULT_STRATEGY, 30, 100, 256, 1000),
    ),
    # what the app runs by default on its embedded digits
    "app": (Preset("digits 8x8x1", 1, 8, 10, 1437, 360, NetConfig(width=64, depth=2), 1, 64, NO_FLIP_STRATEGY, 20, 10, 32, 300),),
}


def random_data(p: Preset, device: torch.device, generator: torch.Generator) -> Data:
    """Normalised-looking random images of the preset's shape; at most 10,000 kept in memory (the
    loops draw batches; the expert epoch is scaled to ``train_images``)."""
    n = min(p.train_images, 10000)
    x = torch.randn(n, p.channels, p.side, p.side, generator=generator)
    y = torch.arange(n) % p.classes
    xt = torch.randn(p.test_images, p.channels, p.side, p.side, generator=generator)
    yt = torch.arange(p.test_images) % p.classes
    names = tuple(str(c) for c in range(p.classes))
    return Data(f"speed-{p.name}", x, y, xt, yt, names, (0.0,) * p.channels, (1.0,) * p.channels).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Loop:
    """One timed unit of work: ``run()`` does it once; ``images`` it processes; ``scale`` maps the
    timed work to the unit reported (an epoch from some of its batches)."""

    name: str
    run: Callable[[], Any]
    images: int
    scale: float = 1.0
    note: str = ""
    row: str = ""  # the loop whose ``precision.AUTO`` row "auto" takes (empty: its own name)


def loops(p: Preset, data: Data, generator: torch.Generator) -> list[Loop]:
    device = data.x_train.device
    c = p.classes
    init = create_init("random", data, p.ipc, generator)

    def context() -> Context:
        return Context(data=data, ipc=p.ipc, net=p.net, strategy=p.strategy, generator=generator, init=init, iterations=100)

    dm = create("dm", context(), {"batch_real": p.batch_real})
    dsa = create("dsa", context(), {"batch_real": p.batch_real})
    outer, inner = dsa.outer_loop, dsa.inner_loop

    net = create_net(p.net, data.channels, data.im_size, c, generator, device)
    for q in net.parameters():
        q.requires_grad_(False)
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    target = {k: v + 0.01 * torch.randn(v.shape, generator=generator).to(device) for k, v in start.items()}
    images = init.images.detach().clone().requires_grad_(True)
    lr = torch.tensor(0.01, device=device, requires_grad=True)

    def tm_step() -> None:
        batches = trajectory.plan_batches(images.shape[0], p.syn_steps, p.batch_syn, p.strategy, generator)
        images.grad = lr.grad = None
        trajectory.match(net, images, init.labels, lr, start, target, batches)

    expert_batches = 8
    n_real = expert_batches * p.expert_batch
    per_epoch = p.train_images / p.expert_batch

    experts: dict[bool, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}  # one eager, one compiled, made once

    def expert_part() -> None:
        if is_compiling() not in experts:
            net = compiled(create_net(p.net, data.channels, data.im_size, c, generator, device))
            experts[is_compiling()] = (net, torch.optim.SGD(net.parameters(), lr=0.01))
        expert, opt = experts[is_compiling()]
        idx = torch.randint(data.x_train.shape[0], (n_real,), generator=generator).to(device)
        train_epoch(expert, opt, data.x_train[idx], data.y_train[idx], p.expert_batch, p.strategy, generator)

    eval_timed = min(p.eval_epochs, 30)
    ecfg = EvalConfig(nets=1, epochs=eval_timed)

    def evaluation() -> None:
        model = compiled(create_net(p.net, data.channels, data.im_size, c, generator, device))
        train_network(model, init.images, init.labels, ecfg, p.strategy, generator)
        test_accuracy(model, data.x_test, data.y_test)

    group = 5  # MTT's evaluation protocol
    group_epochs = p.eval_epochs if device.type == "cuda" else eval_timed
    task = NetworkTask(data.x_test, data.y_test, (data.channels, data.im_size, c), p.net, EvalConfig(nets=group, epochs=group_epochs),
                       p.strategy)

    def evaluation_group() -> None:
        seeds = torch.randint(0, 2**62, (group,), generator=generator).tolist()
        train_group(task, [(s, init.images, init.labels, None) for s in seeds])

    n_syn = c * p.ipc
    return [
        Loop("dm step", dm.step, c * (p.batch_real + p.ipc)),
        Loop("dsa outer", dsa.step, outer * c * (p.batch_real + p.ipc) + max(outer - 1, 0) * inner * n_syn,
             note=f"{outer} image updates, {inner} network epochs between"),
        Loop("tm step", tm_step, p.syn_steps * min(p.batch_syn, n_syn), note=f"N = {p.syn_steps}, batch {min(p.batch_syn, n_syn)}"),
        Loop("expert epoch", expert_part, n_real, scale=per_epoch / expert_batches,
             note=f"{expert_batches} batches of {p.expert_batch} timed, scaled to {p.train_images} images"),
        Loop("evaluation", evaluation, eval_timed * n_syn + p.test_images, scale=p.eval_epochs / eval_timed,
             note=f"{eval_timed} of {p.eval_epochs} epochs timed, scaled; test pass on {p.test_images} images"),
        Loop("evaluation group", evaluation_group, group * (group_epochs * n_syn + p.test_images), scale=p.eval_epochs / group_epochs,
             note=f"{group} networks as one group, {group_epochs} of {p.eval_epochs} epochs timed; beside {group} x evaluation",
             row="evaluation"),
    ]


def count_flops(fn: Callable[[], Any]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def check_variants(variants: list[str]) -> None:
    for v in variants:
        precision, _, extra = v.partition("+")
        if precision not in PRECISIONS or extra not in ("", "compile"):
            raise ValueError(f"unknown variant {v!r}; known: fp32, bf16, auto, each optionally with +compile (e.g. bf16+compile)")


def variant(name: str, device: torch.device, loop: str) -> contextlib.ExitStack:
    """The context a variant runs in: its autocast (``auto``: ``loop``'s row) and whether networks are compiled."""
    precision, _, extra = name.partition("+")
    stack = contextlib.ExitStack()
    stack.enter_context(autocast(precision, device, loop))
    stack.enter_context(compiling(extra == "compile"))
    return stack


def default_loops(device: torch.device) -> tuple[str, ...]:
    """The loops ``bench --speed`` times unless told: all of them on CUDA, all but the group elsewhere."""
    return LOOPS if device.type == "cuda" else tuple(n for n in LOOPS if n != "evaluation group")


def measure(
    preset: Preset, precisions: list[str], repeats: int, device: torch.device, names: list[str] | None = None,
    done: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
) -> list[dict[str, Any]]:
    """Per loop (those in ``names``, or all) and variant (``precisions``, see ``check_variants``):
    median seconds of the reported unit, images/s, GFLOP/s. ``done`` gets the rows so far after each
    loop (a long benchmark saves as it goes)."""
    generator = torch.Generator().manual_seed(0)
    data = random_data(preset, device, generator)
    rows: list[dict[str, Any]] = []
    for loop in loops(preset, data, generator):
        if loop.name not in (names or default_loops(device)):
            continue
        flops = count_flops(loop.run)  # also the warm-up
        for pr in precisions:
            if pr.endswith("+compile"):
                with variant(pr, device, loop.row or loop.name):
                    loop.run()  # compiles; not timed
        times: dict[str, list[float]] = {pr: [] for pr in precisions}
        for _ in range(repeats):
            for pr in precisions:  # interleaved: load on the machine hits every variant alike
                with variant(pr, device, loop.row or loop.name):
                    sync(device)
                    t0 = time.perf_counter()
                    loop.run()
                    sync(device)
                times[pr].append(time.perf_counter() - t0)
        for pr in precisions:
            timed = statistics.median(times[pr])
            rows.append({
                "preset": preset.name, "loop": loop.name, "precision": pr,
                "seconds": timed * loop.scale, "images_per_s": loop.images / timed,
                "gflops": flops / timed / 1e9, "note": loop.note,
            })
        done(rows)
    return rows


def machine() -> str:
    import os

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    lines = [header, "", "| settings | loop | variant | s per unit | images/s | GFLOP/s | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['loop']} | {r['precision']} | {r['seconds']:.3g} | {r['images_per_s']:.0f} | "
                     f"{r['gflops']:.1f} | {r['note']} |")
    if len(precisions) > 1:
        first, others = precisions[0], precisions[1:]
        lines += ["", "| settings | loop | " + " | ".join(f"{v} / {first} time" for v in others) + " |",
                  "|---|---|" + "---|" * len(others)]
        by = {(r["preset"], r["loop"], r["precision"]): r["seconds"] for r in rows}
        for preset, loop in dict.fromkeys((r["preset"], r["loop"]) for r in rows):
            lines.append(f"| {preset} | {loop} | " + " | ".join(f"{by[preset, loop, v] / by[preset, loop, first]:.2f}" for v in others) + " |")
    return "\n".join(lines) + "\n"


LOOPS = (*precision.LOOPS, "evaluation group")


def speed(preset: str, precisions: list[str], repeats: int, out: Path, device_name: str = "auto",
          only: str | None = None, names: list[str] | None = None) -> str:
    """Run the benchmark and write ``speed.json`` and ``speed.md`` under ``out`` (after every loop, so a
    long run keeps what it measured); returns the table."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    check_variants(precisions)
    unknown = sorted(set(names or ()) - set(LOOPS))
    if unknown:
        raise ValueError(f"unknown loop {', '.join(unknown)}; known: {', '.join(LOOPS)}")
    device = pick_device(device_name)
    presets = [p for p in PRESETS[preset] if only is None or only in p.name]
    header = f"Speed, preset `{preset}` on {device.type}; {machine()}; median of {repeats} interleaved repeats."
    out.mkdir(parents=True, exist_ok=True)
    finished: list[dict[str, Any]] = []

    def write(rows: list[dict[str, Any]]) -> None:
        every = finished + rows
        (out / "speed.json").write_text(json.dumps({"preset": preset, "machine": machine(), "device": str(device),
                                                    "presets": [asdict(p) for p in presets], "rows": every},
                                                   indent=2, default=str))
        (out / "speed.md").write_text(markdown(every, header))

    for p in presets:
        finished += measure(p, precisions, repeats, device, names, write)
    return markdown(finished, header)
