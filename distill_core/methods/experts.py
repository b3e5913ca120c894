"""Expert trajectories for trajectory matching (MTT, DATM, IADD).

An expert is a network trained on the real training set with plain SGD (no momentum) and DSA, or with
FTD's sharpness-aware SGD (``ExpertSpec.recipe``: ``methods.ftd``, DATM's paper tier); its named
parameters are saved after every epoch, epoch 0 being the initialisation. Experts are cached
on disk (one safetensors file per expert) under ``cache_dir / "experts" / <key>``, the key hashing
the dataset's contents, the network config, the augmentation strategy and the ``ExpertSpec``. A run
that is stopped half-way keeps the experts it finished. Each expert also keeps its final logits on
the training images, which DATM's initialisation (``correct`` images, soft labels) needs. The cache
key leaves out the number of experts and their epochs: expert k is the same whatever the count, so
asking for 3 after 5 were trained loads the first 3, and asking for 8 trains only the last 3; and
its first E epochs are the same whatever it trains in all (SGD, or FTD, at a fixed rate, one generator
per expert), so a cached longer expert serves a shorter request: its trajectory cut at E, its
logits recomputed from the parameters at E. Each file names its epochs (``expert_file``).

Storage and time are estimated before any training (``storage_bytes``, ``estimate_seconds``), so the
app and the methods can show them or refuse a request that cannot be met.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from distill_core.data import augment as dsa
from distill_core.data.augment import augment
from distill_core.data.datasets import Data
from distill_core.data.zca import fingerprint, whitening_of
from distill_core.evaluation import grouped
from distill_core.evaluation.protocol import Stopped, train_epoch
from distill_core.executor import Executor, Result, from_environment
from distill_core.methods import ftd
from distill_core.nets import stacked
from distill_core.nets.networks import NetConfig, create_net, in_passes
from distill_core.nets.precision import autocast, compiled, loop_precision
from distill_core.options import Options, option
from distill_core.units import duration

Params = dict[str, torch.Tensor]
Trajectory = list[Params]  # one entry per epoch, 0 = initialisation; each maps parameter name -> tensor
FORMAT = 2  # bump when the file layout changes, so old caches are not misread
PROGRESS_SECONDS = 1.0  # an expert reports its progress inside an epoch at most this often
LOGITS_SHARE = 1 / 3  # the final logits, forward passes only, weigh about a third of a training epoch


def no_progress(phase: str, fraction: float) -> None:
    pass


@dataclass(frozen=True)
class ExpertSpec(Options):
    """How experts are trained. ``seed`` is independent of a run's seed so runs share the cache."""

    count: int = option(5, "experts", min=1)
    epochs: int = option(20, "epochs each trains", min=1)
    lr: float = option(0.01, "SGD learning rate (no momentum)", above=0)
    batch: int = option(256, "minibatch", min=1)
    seed: int = option(0, "seed of expert 0 (expert k: its own generator from it and k)")
    checkpoints: int = option(
        1, "parameter snapshots per pass over the training images: an 'epoch' of the trajectory is 1/checkpoints of a pass", min=1
    )
    # sgd: plain SGD (MTT's buffer.py); ftd: SGD with GSAM's sharpness-aware gradient, as DATM's
    # authors train their experts (buffer_FTD.py; ``methods.ftd``). A cache folder holds one recipe.
    recipe: Literal["sgd", "ftd"] = option("sgd", "how each step is taken: sgd (plain) or ftd (GSAM, DATM's experts)", what="expert recipe")


def default_spec(data: Data) -> ExpertSpec:
    """Per-dataset defaults. On digits (1,437 images) a batch of 32 gives 45 SGD steps an epoch, so
    an epoch moves the weights about as far as a few hundred steps do on CIFAR-sized experts, and
    20 epochs reach about 97% test accuracy in a few seconds. Other small datasets take the power of
    two batch that gives them about as many steps an epoch (a 300-image upload: 8), so the students'
    N steps cover a comparable stretch of an expert's trajectory."""
    if data.small:
        steps = data.x_train.shape[0] / 45
        return ExpertSpec(count=5, epochs=20, batch=int(min(256, 2 ** max(0, round(math.log2(max(steps, 1)))))))
    return ExpertSpec(count=5, epochs=30, batch=256)


@dataclass
class Experts:
    trajectories: list[Trajectory]  # expert x (epochs + 1)
    logits: list[torch.Tensor]  # per expert: final logits on data.x_train, (N_train, C), CPU
    spec: ExpertSpec
    path: Path

    @property
    def names(self) -> list[str]:
        return list(self.trajectories[0][0])

    def final_params(self, k: int) -> Params:
        return self.trajectories[k][-1]


def cache_key(data: Data, net: NetConfig, strategy: str, spec: ExpertSpec) -> str:
    """Everything that shapes an expert except how many there are and how long they train: expert k
    depends only on the spec's seed and k, and its epoch e only on what came before, so a request
    for fewer (or more) experts, or fewer epochs, reuses the ones already trained."""
    how = {k: v for k, v in asdict(spec).items() if k not in ("count", "epochs")}
    if how["checkpoints"] == 1:  # a snapshot per pass, as every expert cached before the field
        del how["checkpoints"]
    if how["recipe"] == "sgd":  # plain SGD, as every expert cached before the field
        del how["recipe"]
    else:  # and FTD's constants, so a change to them never reuses older experts
        how["ftd"] = ftd.SETTINGS
    payload = {"format": FORMAT, "data": fingerprint(data), "net": asdict(net), "strategy": strategy, "spec": how,
               "draws": dsa.DRAWS if strategy else 1}  # experts trained under other draws are not reused
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, data: Data, net: NetConfig, strategy: str, spec: ExpertSpec) -> Path:
    """The experts' folder: the key's hash (``fingerprint`` names ZCA-whitened images apart from the
    plain ones), after the dataset's name, ``-zca`` for whitened images, and the network's."""
    name = f"{data.name}-zca" if whitening_of(data) is not None else data.name
    return Path(cache_dir) / "experts" / f"{name}-{net.name}-{cache_key(data, net, strategy, spec)}"


def expert_file(folder: Path, k: int, epochs: int) -> Path:
    return folder / f"expert_{k:03d}_e{epochs:04d}.safetensors"


def cached_file(folder: Path, k: int, epochs: int) -> tuple[Path, int] | None:
    """The readable file of expert ``k`` with the fewest epochs >= ``epochs``, and its epochs."""
    found = []
    for path in folder.glob(f"expert_{k:03d}_e*.safetensors"):
        e = path.stem.rsplit("_e", 1)[1]
        if e.isdigit() and int(e) >= epochs and _readable(path):
            found.append((int(e), path))
    return (min(found)[1], min(found)[0]) if found else None


def cached_count(cache_dir: Path, data: Data, net: NetConfig, strategy: str, spec: ExpertSpec) -> int:
    """How many of the spec's experts the cache can serve (from files of at least its epochs)."""
    folder = cache_path(cache_dir, data, net, strategy, spec)
    return sum(1 for k in range(spec.count) if cached_file(folder, k, spec.epochs) is not None)


def num_params(data: Data, net: NetConfig) -> int:
    model = create_net(net, data.channels, data.im_size, data.num_classes, torch.Generator().manual_seed(0))
    return sum(p.numel() for p in model.parameters())


def storage_bytes(data: Data, net: NetConfig, spec: ExpertSpec) -> int:
    """Disk (and memory) the experts take: count x (epochs + 1) x parameters, plus the final logits."""
    per_expert = (spec.epochs + 1) * num_params(data, net) + data.x_train.shape[0] * data.num_classes
    return 4 * spec.count * per_expert


def steps_per_epoch(data: Data, spec: ExpertSpec) -> int:
    """SGD steps between two snapshots of the trajectory (a pass, or 1/checkpoints of one)."""
    n = data.x_train.shape[0]
    return -(-n // (min(spec.batch, n) * spec.checkpoints))


def estimate_seconds(data: Data, net: NetConfig, strategy: str, spec: ExpertSpec, trials: int = 5) -> float:
    """Training time of all experts, from timing a few real training steps on the data's device."""
    n = data.x_train.shape[0]
    b = min(spec.batch, n)
    gen = torch.Generator().manual_seed(0)
    model = create_net(net, data.channels, data.im_size, data.num_classes, gen, data.x_train.device)
    opt = ftd.GSAM(model.parameters(), spec.lr) if spec.recipe == "ftd" else torch.optim.SGD(model.parameters(), lr=spec.lr)
    x, y = data.x_train[:b], data.y_train[:b]

    def train_step() -> None:
        xb = augment(x, strategy, gen)

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), y)
            loss.backward()
            return loss

        opt.step(closure)  # FTD's GSAM: two forward and backward passes a step

    train_step()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(trials):  # the fastest trial: a busy machine only ever adds time
        sync(x.device)
        t0 = time.perf_counter()
        train_step()
        sync(x.device)
        times.append(time.perf_counter() - t0)
    per_step = min(times)
    return per_step * steps_per_epoch(data, spec) * spec.epochs * spec.count


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def snapshot_params(model: torch.nn.Module) -> Params:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()}


@torch.no_grad()
def logits_on(model: torch.nn.Module, x: torch.Tensor, after_pass: Callable[[int], None] | None = None) -> torch.Tensor:
    """The model's logits on ``x``, in eval mode; ``after_pass`` is told the images done after each pass."""
    was_training = model.training
    model.eval()
    done = 0

    def scored(xb: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = model(xb)
        done += xb.shape[0]
        if after_pass is not None:
            after_pass(done)
        return out

    out = in_passes(scored, x)
    model.train(was_training)
    return out


def train_expert(
    data: Data,
    net: NetConfig,
    strategy: str,
    spec: ExpertSpec,
    k: int,
    report: Callable[[float], None] = lambda fraction: None,
) -> tuple[Trajectory, torch.Tensor]:
    """Train expert ``k``: its trajectory ((epochs + 1) parameter dicts, CPU) and final logits (N, C).

    Expert ``k`` draws from its own generator (seeded by ``spec.seed`` and ``k``), so each expert
    is reproducible on its own and a partly filled cache is completed with the same experts. With
    ``spec.checkpoints`` = u > 1 each pass's shuffled order is cut into u parts and the parameters
    are saved after each: epoch e of the trajectory is e/u passes.
    """
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + k)
    device = data.x_train.device
    model = compiled(create_net(net, data.channels, data.im_size, data.num_classes, gen, device))
    model.train()
    opt = ftd.GSAM(model.parameters(), spec.lr) if spec.recipe == "ftd" else torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.0)
    x, y = data.x_train, data.y_train
    b = min(spec.batch, x.shape[0])
    trajectory = [snapshot_params(model)]
    last = time.perf_counter()
    u = spec.checkpoints
    units = spec.epochs + LOGITS_SHARE * u  # the final logits count as a fraction of a pass
    parts: list[torch.Tensor] = []  # u > 1: what is left of the current pass, in its shuffled order

    def within(start: float, share: float, images: int = x.shape[0]) -> Callable[[int], None]:
        """Progress inside a pass over the training images that begins at ``start`` units and weighs
        ``share``, at most every ``PROGRESS_SECONDS``: an epoch of Fashion-MNIST takes minutes on a
        CPU, and a bar must not sit still (nor Stop wait) that long."""
        def after(done: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS:
                last = now
                report((start + share * done / images) / units)
        return after

    for epoch in range(spec.epochs):
        if u == 1:
            train_epoch(model, opt, x, y, b, strategy, gen, within(epoch, 1.0))
        else:
            if not parts:
                parts = list(torch.randperm(x.shape[0], generator=gen).tensor_split(u))
            part = parts.pop(0).to(x.device)
            train_epoch(model, opt, x[part], y[part], b, strategy, gen, within(epoch, 1.0, part.numel()))
        trajectory.append(snapshot_params(model))
        report((epoch + 1) / units)
    logits = logits_on(model, x, within(spec.epochs, LOGITS_SHARE * u)).cpu()
    report(1.0)
    return trajectory, logits


def trains_as_group(device: torch.device, net: NetConfig, spec: ExpertSpec, in_process: bool) -> bool:
    """Whether missing experts train as one group (``train_experts_grouped``): on a GPU, in this
    process, for networks that stack, with one snapshot per pass. Snapshots within a pass
    (``checkpoints`` > 1) cut each expert's own shuffled pass into parts, which a group's epoch plan
    does not do: those experts train one by one. So do FTD's (``recipe`` "ftd"): the group's step is
    plain SGD on stacked networks, and GSAM's two gradients with its norms over each network's own
    parameters are not implemented there."""
    return in_process and device.type == "cuda" and stacked.supports(net) and spec.checkpoints == 1 and spec.recipe == "sgd"


def train_experts_grouped(
    data: Data,
    net: NetConfig,
    strategy: str,
    spec: ExpertSpec,
    ks: list[int],
    arrived: Callable[[int, Trajectory, torch.Tensor], None],
    report: Callable[[float], None] = lambda fraction: None,
) -> None:
    """Experts ``ks`` trained as groups (``grouped``): the experts ``train_expert`` trains one by one
    (same generators, data orders and draws), each handed to ``arrived`` with its trajectory and final
    logits as its group ends. ``report`` gets the fraction of all their epochs done."""
    if spec.checkpoints != 1:
        raise ValueError("experts with snapshots within a pass (checkpoints > 1) train one by one, not as a group")
    if spec.recipe != "sgd":
        raise ValueError(f"experts of the {spec.recipe} recipe train one by one, not as a group (its step is plain SGD)")
    device, x, y = data.x_train.device, data.x_train[:], data.y_train  # read whole: the group's plan gathers on the device
    b = min(spec.batch, x.shape[0])
    done = 0

    def train(part: range) -> None:
        nonlocal done
        gens = [torch.Generator().manual_seed(spec.seed * 1_000_003 + ks[i]) for i in part]
        group = grouped.Group.of([create_net(net, data.channels, data.im_size, data.num_classes, g, device) for g in gens], spec.lr)
        trajectories: list[Trajectory] = [[] for _ in part]

        def snapshot(epoch: int = -1) -> None:
            on_cpu = {name: p.detach().cpu() for name, p in group.params.items()}  # one read-back an epoch
            for j, trajectory in enumerate(trajectories):
                trajectory.append({name: t[j].clone() for name, t in on_cpu.items()})
            if epoch >= 0:
                report((done + len(part) * (epoch + 1)) / (len(ks) * spec.epochs))

        snapshot()
        grouped.Trainer(group, x.unsqueeze(0), y.unsqueeze(0), b, strategy, gens).train(spec.epochs, after_epoch=snapshot)
        logits = grouped.logits_of(group, x).cpu()
        done += len(part) * spec.epochs
        for j, i in enumerate(part):
            arrived(ks[i], trajectories[j], logits[j].clone())

    per_network = grouped.memory_per_network(b, data.im_size, net.width, net.depth)
    grouped.in_groups(len(ks), grouped.group_size(len(ks), device, per_network), train, device)


def save_expert(path: Path, trajectory: Trajectory, logits: torch.Tensor, spec: ExpertSpec) -> None:
    tensors = {f"{e:04d}/{name}": t.contiguous() for e, params in enumerate(trajectory) for name, t in params.items()}
    tensors["logits"] = logits.contiguous()
    names = list(trajectory[0])
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"spec": json.dumps(asdict(spec)), "names": json.dumps(names), "format": str(FORMAT)})
    os.replace(tmp, path)  # atomic: a half-written expert is never loaded


def load_expert(path: Path) -> tuple[Trajectory, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        names = json.loads(f.metadata()["names"])
        keys = set(f.keys())
        epochs = sorted({int(k.split("/", 1)[0]) for k in keys if k != "logits"})
        trajectory = [{name: f.get_tensor(f"{e:04d}/{name}") for name in names} for e in epochs]
        logits = f.get_tensor("logits")
    return trajectory, logits


@dataclass(frozen=True)
class ExpertTask:
    """Expert ``k`` of a spec as one independent piece of work: what an executor runs per expert
    (it travels to the workers once, dataset included). ``progress`` (epochs done of one expert)
    only where the task runs in the caller's process: a callback does not cross to a worker."""

    data: Data
    net: NetConfig
    strategy: str
    spec: ExpertSpec
    progress: Callable[[int, float], None] | None = None
    precision: str = "fp32"  # "fp32" or "bf16", applied here: a worker runs outside the caller's contexts

    def __call__(self, k: int) -> tuple[Trajectory, torch.Tensor]:
        report = (lambda f: self.progress(k, f)) if self.progress is not None else (lambda f: None)
        with autocast(self.precision, self.data.x_train.device):
            return train_expert(self.data, self.net, self.strategy, self.spec, k, report)


def load_or_train(
    data: Data,
    net: NetConfig,
    strategy: str,
    spec: ExpertSpec,
    cache_dir: Path,
    report: Callable[[str, float], None] = no_progress,
    budget_seconds: float | None = None,
    executor: Executor | None = None,
) -> Experts:
    """The experts for this configuration: loaded from the cache, the missing ones trained first,
    each an independent task of ``executor`` (default: the one ``$DISTILL_RAY_ADDRESS`` names, in
    this process when unset); this process writes each expert's file as it arrives.

    Raises ``ValueError`` (with what to do) when the missing experts would take longer than
    ``budget_seconds`` to train on this device, or when an expert's training failed twice.
    """
    folder = cache_path(cache_dir, data, net, strategy, spec)
    missing = [k for k in range(spec.count) if cached_file(folder, k, spec.epochs) is None]
    if missing and budget_seconds is not None:
        seconds = estimate_seconds(data, net, strategy, spec) * len(missing) / spec.count
        if seconds > budget_seconds:
            mb = storage_bytes(data, net, spec) / 2**20
            raise ValueError(
                f"training {len(missing)} expert(s) x {spec.epochs} epochs of {net.name} (width {net.width}, depth "
                f"{net.depth}) on {data.name} would take about {duration(seconds)} on {data.x_train.device.type} "
                f"(storage {mb:.1f} MB), more than the budget of {duration(budget_seconds)}. Use a GPU, lower "
                "expert_count / expert_train_epochs or the network width, raise expert_budget_s, or pick a method "
                "that needs no experts (dm, dc, dsa, krr)."
            )
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        if executor is None:
            with from_environment() as own:
                train_missing(data, net, strategy, spec, folder, missing, report, own)
        else:
            train_missing(data, net, strategy, spec, folder, missing, report, executor)
    report("loading experts", 1.0)
    loaded = [load_cut(data, net, folder, k, spec.epochs) for k in range(spec.count)]
    return Experts([t for t, _ in loaded], [lg for _, lg in loaded], spec, folder)


def train_missing(
    data: Data,
    net: NetConfig,
    strategy: str,
    spec: ExpertSpec,
    folder: Path,
    missing: list[int],
    report: Callable[[str, float], None],
    executor: Executor,
) -> None:
    """Experts ``missing`` through ``executor``, each file written (atomically) the moment its expert
    arrives, so a stopped or failed run keeps the finished ones. One phase name for all of them, so
    the run's time estimate is from the rate of the whole phase (workers in parallel included)."""
    mb = storage_bytes(data, net, spec) / 2**20
    phase = f"training experts: {len(missing)} of {spec.count} ({mb:.1f} MB, {executor.workers} at once)"
    finished: set[int] = set()

    def epochs_done(k: int, fraction: float) -> None:  # in process only: one expert's epochs
        report(phase, (len(finished) + fraction) / len(missing))

    def arrived(i: int, result: Result[tuple[Trajectory, torch.Tensor]]) -> None:
        if result.ok and result.value is not None:
            save_expert(expert_file(folder, missing[i], spec.epochs), *result.value, spec)
            finished.add(i)
            report(phase, len(finished) / len(missing))

    report(phase, 0.0)
    precision = loop_precision("expert epoch", data.x_train.device)
    if trains_as_group(data.x_train.device, net, spec, executor.in_process):
        def saved(k: int, trajectory: Trajectory, logits: torch.Tensor) -> None:
            save_expert(expert_file(folder, k, spec.epochs), trajectory, logits, spec)
            finished.add(k)

        with autocast(precision, data.x_train.device):
            train_experts_grouped(data, net, strategy, spec, missing, saved, lambda f: report(phase, f))
        return
    # a task that crosses to a worker takes the dataset on the CPU: the worker may have no GPU
    shipped = data if executor.in_process else data.to(torch.device("cpu"))
    task = ExpertTask(shipped, net, strategy, spec, epochs_done if executor.in_process else None, precision)
    failed = [(missing[i], r.error) for i, r in enumerate(executor.map(task, missing, on_done=arrived, passes=(Stopped,))) if not r.ok]
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(missing)} expert(s) failed to train (each tried twice): "
            + "; ".join(f"expert {k}: {e}" for k, e in failed) + f". The {len(finished)} finished are cached in {folder}."
        )


def load_cut(data: Data, net: NetConfig, folder: Path, k: int, epochs: int) -> tuple[Trajectory, torch.Tensor]:
    """Expert ``k`` for ``epochs`` epochs from its cached file: a longer one cut at ``epochs``, with
    the logits of its parameters there (what an expert trained ``epochs`` epochs ends with)."""
    found = cached_file(folder, k, epochs)
    assert found is not None, "trained above"
    trajectory, logits = load_expert(found[0])
    if found[1] == epochs:
        return trajectory, logits
    trajectory = trajectory[: epochs + 1]
    model = create_net(net, data.channels, data.im_size, data.num_classes, torch.Generator().manual_seed(0), data.x_train.device)
    model.load_state_dict({n: t.to(data.x_train.device) for n, t in trajectory[-1].items()}, strict=False)
    return trajectory, logits_on(model, data.x_train).cpu()


def _readable(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata().get("format") == str(FORMAT)
    except Exception:  # noqa: BLE001 - a corrupt file is retrained
        return False


def distances_from_start(data: Data, net: NetConfig, strategy: str, spec: ExpertSpec, cache_dir: Path) -> list[list[float]]:
    """Per cached expert of this spec: ||θ*_t − θ*_0|| for every epoch t (experts not trained yet are left out)."""
    folder = cache_path(cache_dir, data, net, strategy, spec)
    out = []
    for k in range(spec.count):
        found = cached_file(folder, k, spec.epochs)
        if found is None:
            continue
        trajectory = load_expert(found[0])[0][: spec.epochs + 1]
        start = trajectory[0]
        out.append([float(sum(((p[n] - start[n]) ** 2).sum() for n in start) ** 0.5) for p in trajectory])
    return out
