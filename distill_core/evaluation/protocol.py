"""The evaluation protocol: train fresh networks on a (synthetic) set, report final test accuracy.

SGD with momentum, weight decay, lr x0.1 at half the epochs, DSA on each batch; hard labels (int64)
or soft labels (float logits, targets = softmax); the learned lr where the method has one. The
random-real baseline uses the same protocol at the same IPC, a fresh random subset per network.

With ``syn_weights="coreset"`` each synthetic image's cross entropy counts by its coreset weight,
normalised to mean 1 within its class (``synthetic.loss_weights``): a minibatch's loss is
mean_i w_i l_i, so equal weights give the unweighted loss's gradients to the bit. The random
baseline has no weights and trains as before.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill_core.data.augment import augment
from distill_core.data.datasets import Data
from distill_core.data.sampling import random_subset
from distill_core.evaluation import grouped
from distill_core.nets import stacked
from distill_core.nets.networks import NetConfig, create_net, in_passes
from distill_core.nets.precision import autocast, compiled, compiling, is_compiling, loop_precision
from distill_core.options import Options, option
from distill_core.synthetic import SYN_WEIGHTS, SYN_WEIGHTS_HELP, loss_weights, required_weights


@dataclass(frozen=True)
class EvalConfig(Options):
    """The evaluation protocol: fresh networks trained on the synthetic set, final test accuracy."""

    nets: int = option(5, "fresh networks trained on the set", min=1, max=20)
    epochs: int = option(300, "epochs each trains (lr x0.1 at half)", min=1, max=3000)
    lr: float = option(0.01, "SGD learning rate (a learned one replaces it)", above=0)
    momentum: float = option(0.9, "SGD momentum", min=0, max=0.999)
    weight_decay: float = option(5e-4, "SGD weight decay", min=0)
    batch: int = option(256, "minibatch", min=1)
    augment: bool = option(True, "DSA on every minibatch")
    test_images: int = option(
        0, "test images each network is scored on (0: all); a fixed random subset, the same for every network", min=0
    )
    arch: NetConfig | None = option(None, "the network evaluated (empty: the one the run distils with)")
    syn_weights: Literal[SYN_WEIGHTS] = option(
        "uniform", "the loss of each synthetic image: " + SYN_WEIGHTS_HELP + " (to mean 1)", what="syn_weights"
    )


# one evaluation network's work: (seed, images, labels, per-image loss weights (n,) or None)
Item = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]


class Stopped(Exception):
    """Raised between epochs when the caller's ``stop`` says so (a run's Stop button)."""


def never() -> bool:
    return False


@dataclass(frozen=True)
class Accuracy:
    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> "Accuracy":
        return cls(float(np.mean(values)), float(np.std(values)), len(values), tuple(values))

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}% (n={self.n})"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy with hard labels (int64, (n,)) or soft labels (float logits, (n, C)); with
    ``weights`` (n,) the mean of the per-image losses times their weights."""
    target = labels.softmax(dim=1) if labels.is_floating_point() else labels
    if weights is None:
        return F.cross_entropy(logits, target)
    return (F.cross_entropy(logits, target, reduction="none") * weights).mean()


def train_epoch(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    strategy: str,
    generator: torch.Generator,
    after_batch: Callable[[int], None] | None = None,
    weights: torch.Tensor | None = None,
) -> None:
    """One shuffled pass of SGD over (images, labels), each minibatch augmented with ``strategy``
    ("" for none); the loss is ``classification_loss`` (weighted by ``weights`` (n,) where given).
    No host sync. ``after_batch`` is told the number of images done after each minibatch (an epoch
    over a large set takes minutes)."""
    n = images.shape[0]
    perm = torch.randperm(n, generator=generator).to(images.device)
    for start in range(0, n, batch):
        idx = perm[start : start + batch]
        x = augment(images[idx], strategy, generator) if strategy else images[idx]
        y = labels[idx]
        w = None if weights is None else weights[idx]

        def closure(x: torch.Tensor = x, y: torch.Tensor = y, w: torch.Tensor | None = w) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = classification_loss(net(x), y, w)
            loss.backward()
            return loss

        opt.step(closure)  # an optimizer may take more than one gradient a step (FTD's GSAM: methods.ftd)
        if after_batch is not None:
            after_batch(min(start + batch, n))


def train_network(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: EvalConfig,
    strategy: str,
    generator: torch.Generator,
    lr: float | None = None,
    stop: Callable[[], bool] = never,
    weights: torch.Tensor | None = None,
) -> nn.Module:
    """Train ``net`` on ``images`` (n, C, H, W) for ``cfg.epochs`` epochs, each image's loss weighted
    by ``weights`` (n,) where given; no host sync per batch. ``stop`` is asked between epochs; when
    it says so, ``Stopped`` is raised."""
    base_lr = cfg.lr if lr is None else lr
    opt = torch.optim.SGD(net.parameters(), lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch, images.shape[0])
    net.train()
    for epoch in range(cfg.epochs):
        if stop():
            raise Stopped
        if epoch == cfg.epochs // 2:
            for group in opt.param_groups:
                group["lr"] = base_lr * 0.1
        train_epoch(net, opt, images, labels, batch, strategy if cfg.augment else "", generator, weights=weights)
    return net


@torch.no_grad()
def test_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((in_passes(net, x).argmax(1) == y).sum()) / x.shape[0]


def network_seeds(generator: torch.Generator, n: int) -> list[int]:
    """One seed per network, drawn from ``generator``: each network trains from a generator of its own,
    so the networks are independent pieces of work (one after another here, or tasks on a cluster)
    with the same numbers either way."""
    return torch.randint(0, 2**62, (n,), generator=generator).tolist()


@dataclass(frozen=True)
class NetworkTask:
    """One evaluation network as a task: an item ``(seed, images, labels[, loss weights])`` gives its test accuracy.
    Picklable (it holds the test set, travelling once per map), and it applies the precision and the
    compile choice itself, since a task elsewhere runs outside the caller's contexts."""

    x_test: torch.Tensor
    y_test: torch.Tensor
    shape: tuple[int, tuple[int, int], int]  # channels, image size, classes
    arch: NetConfig
    cfg: EvalConfig
    strategy: str
    lr: float | None = None
    precision: str = "fp32"
    compile: bool = False

    def __call__(self, item: Item) -> float:
        seed, images, labels, weights = item
        with autocast(self.precision, images.device), compiling(self.compile):
            return self.train_and_test(seed, images, labels, weights=weights)

    def train_and_test(self, seed: int, images: torch.Tensor, labels: torch.Tensor, stop: Callable[[], bool] = never,
                       weights: torch.Tensor | None = None) -> float:
        g = torch.Generator().manual_seed(seed)
        channels, size, classes = self.shape
        net = compiled(create_net(self.arch, channels, size, classes, g, images.device))
        train_network(net, images, labels, self.cfg, self.strategy, g, self.lr, stop, weights)
        return test_accuracy(net, self.x_test, self.y_test)


def train_networks(task: NetworkTask, items: list[Item], stop: Callable[[], bool] = never) -> Accuracy:
    """The test accuracy of each item's network. Here, one after another, asking ``stop`` each epoch;
    with several networks on CPU and ``$DISTILL_RAY_ADDRESS`` set (``run --ray``), each a Ray task
    of one CPU, ``stop`` asked as each network arrives (a task cannot be asked mid-way)."""
    from distill_core.executor import from_environment

    if groupable(task, items):
        return Accuracy.of(train_group(task, items, stop))
    if len(items) > 1 and items[0][1].device.type == "cpu":
        with from_environment() as executor:
            if not executor.in_process:
                def arrived(i: int, result: Any) -> None:
                    if any([stop() for _ in range(task.cfg.epochs)]):  # the ticker counts epochs
                        raise Stopped
                    if not result.ok:
                        raise RuntimeError(f"an evaluation network failed twice: {result.error}")

                return Accuracy.of([r.value for r in executor.map(task, items, on_done=arrived)])  # in the items' order
    return Accuracy.of([task.train_and_test(seed, images, labels, stop, weights) for seed, images, labels, weights in items])


# On a CPU a group is faster than one network after another only while each step is tiny, its time
# the interpreter's and the dispatcher's rather than the arithmetic's. Measured with 5 networks of the
# digits ConvNet (width 64, depth 2) on one thread, interleaved (3 repeats, medians), the group's time
# over one after another's: 0.60 at IPC 1 (a step of 10 images of 8x8: 640 pixels), 0.75 at IPC 2
# (1,280), 1.19 at IPC 3 (1,920), 1.33 at IPC 5, 1.25 at IPC 10.
CPU_GROUP_PIXELS = 1280


def groupable(task: NetworkTask, items: list[Item]) -> bool:
    """Whether the items' networks train as one group (``grouped``): on a GPU, or on a CPU where a
    step's images hold at most ``CPU_GROUP_PIXELS`` pixels; for the architectures that stack, on sets
    of one size, all weighted or none. Elsewhere a CPU trains one network after another: there a group
    was slower (its convolutions are as many multiply-adds, and a CPU has no launches to save)."""
    images = items[0][1]
    if images.device.type == "cpu":
        step = min(task.cfg.batch, images.shape[0]) * images.shape[-2] * images.shape[-1]
        if len(items) < 2 or step > CPU_GROUP_PIXELS:
            return False
    elif images.device.type != "cuda":
        return False
    return (stacked.supports(task.arch) and not task.compile
            and len({it[1].shape for it in items}) == 1 and len({it[2].shape for it in items}) == 1
            and len({it[3] is None for it in items}) == 1)


def train_group(task: NetworkTask, items: list[Item], stop: Callable[[], bool] = never) -> list[float]:
    """The test accuracy of each item's network, the networks trained as groups (``grouped``): the same
    networks, data orders and augmentation draws as ``NetworkTask.train_and_test`` one by one."""
    channels, size, classes = task.shape
    cfg, images0, labels0, weights0 = task.cfg, items[0][1], items[0][2], items[0][3]
    device, n = images0.device, images0.shape[0]
    batch = min(cfg.batch, n)
    base_lr = cfg.lr if task.lr is None else task.lr
    shared = all(it[1] is images0 and it[2] is labels0 and it[3] is weights0 for it in items)
    accuracies = [0.0] * len(items)

    def train(part: range) -> None:
        def before(epoch: int) -> None:
            if any([stop() for _ in part]):  # asked once per network's epoch, as one after another asks (progress counts them)
                raise Stopped

        gens = [torch.Generator().manual_seed(items[i][0]) for i in part]
        nets = [create_net(task.arch, channels, size, classes, g, device) for g in gens]
        group = grouped.Group.of(nets, base_lr, cfg.momentum, cfg.weight_decay)
        images = images0.unsqueeze(0) if shared else torch.stack([items[i][1] for i in part])
        labels = labels0.unsqueeze(0) if shared else torch.stack([items[i][2] for i in part])
        weights = None if weights0 is None else weights0.unsqueeze(0) if shared else torch.stack([items[i][3] for i in part])
        trainer = grouped.Trainer(group, images, labels, batch, task.strategy if cfg.augment else "", gens, weights)
        trainer.train(cfg.epochs, lambda e: base_lr * 0.1 if e == cfg.epochs // 2 else None, before)
        for i, acc in zip(part, grouped.accuracies(group, task.x_test, task.y_test), strict=True):
            accuracies[i] = acc

    per_network = grouped.memory_per_network(batch, size, task.arch.width, task.arch.depth)
    grouped.in_groups(len(items), grouped.group_size(len(items), device, per_network), train, device)
    return accuracies


def evaluate_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: Data,
    cfg: EvalConfig,
    net_cfg: NetConfig,
    strategy: str,
    generator: torch.Generator,
    lr: float | None = None,
    nets: int | None = None,
    stop: Callable[[], bool] = never,
    weights: torch.Tensor | None = None,
) -> Accuracy:
    """Mean and std of the final test accuracy of ``nets`` fresh networks trained on (images, labels).
    ``weights`` (n,): the set's coreset weights, which ``cfg.syn_weights="coreset"`` needs and uses
    (``loss_weights``); with "uniform" they are not used."""
    images, labels = images.detach(), labels.detach()
    w = None
    if cfg.syn_weights == "coreset":
        weights = required_weights(weights, "the evaluation")
        if weights.shape != labels.shape[:1]:
            raise ValueError(f"{weights.shape[0]} coreset weights for {labels.shape[0]} synthetic images")
        w = loss_weights(weights, labels).to(images.device)
    seeds = network_seeds(generator, nets or cfg.nets)
    return train_networks(network_task(data, cfg, net_cfg, strategy, lr), [(s, images, labels, w) for s in seeds], stop)


def test_set(data: Data, images: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``data``'s test set, or a fixed random subset of ``images`` of it (the same for every network and
    every run: a quick check scores fewer images, with a standard error of about 1/(2 sqrt(images)))."""
    if not images or images >= data.x_test.shape[0]:
        return data.x_test[:], data.y_test
    idx = torch.randperm(data.x_test.shape[0], generator=torch.Generator().manual_seed(0))[:images].to(data.x_test.device)
    return data.x_test[idx], data.y_test[idx]


def network_task(data: Data, cfg: EvalConfig, net_cfg: NetConfig, strategy: str, lr: float | None = None) -> NetworkTask:
    x_test, y_test = test_set(data, cfg.test_images)
    return NetworkTask(x_test, y_test, (data.channels, data.im_size, data.num_classes), cfg.arch or net_cfg, cfg,
                       strategy, lr, loop_precision("evaluation", data.x_test.device), is_compiling())


def baseline_random(
    data: Data,
    ipc: int,
    cfg: EvalConfig,
    net_cfg: NetConfig,
    strategy: str,
    generator: torch.Generator,
    nets: int | None = None,
    stop: Callable[[], bool] = never,
) -> Accuracy:
    """The random-real-subset baseline: the same protocol, a new random subset for each network."""
    n = nets or cfg.nets
    subsets = [random_subset(data, ipc, generator) for _ in range(n)]
    seeds = network_seeds(generator, n)
    items = [(s, data.x_train[idx], data.y_train[idx], None) for s, idx in zip(seeds, subsets, strict=True)]
    return train_networks(network_task(data, cfg, net_cfg, strategy), items, stop)
