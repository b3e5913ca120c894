"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022).

Each iteration picks an expert and a start epoch t < T+ uniformly, starts a student at the expert's
parameters θ*_t, unrolls N SGD steps with a learned step size α on augmented synthetic minibatches
and pulls θ_N towards θ*_{t+M} (``trajectory.match``). The images follow SGD with momentum 0.5
(lr_img), α follows SGD with momentum 0.5 (lr_lr) from α₀ = 0.01; the learned α is the learning rate
the evaluation networks train with. Experts come from ``methods.experts`` (trained and cached
on first use, progress reported). ``MTT`` is also the skeleton DATM and IADD extend: they override
the start-epoch window, the labels, the loss over parameter tensors or the update rule.

With ``syn_weights="coreset"`` each student step's loss is the mean of its images' losses times their
coreset weights, normalised to mean 1 within each class (``synthetic.loss_weights``): the student
trains on the weighted set the initializer drew, as the evaluation's weighted loss does.

Defaults left as ``None`` are filled per dataset and IPC by ``Config.resolved``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

from distill_core.data.datasets import Data
from distill_core.methods import experts as experts_mod
from distill_core.methods import trajectory
from distill_core.methods.base import METHODS, Context, Declares, Synthetic
from distill_core.methods.experts import Experts, ExpertSpec, Params
from distill_core.options import Options, option
from distill_core.synthetic import SYN_WEIGHTS, SYN_WEIGHTS_HELP, loss_weights, required_weights


def last_target_epoch(max_start_epoch: int, expert_epochs: int) -> int:
    """The last expert epoch the matching reaches, so the epochs an expert must train: start epochs
    are drawn from [0, T+), so the last is T+ - 1, and its target M epochs later."""
    return max_start_epoch - 1 + expert_epochs


def digits_like(data: Data) -> bool:
    """Small, fast datasets (digits-sized: ``Data.small``) get their own, lighter defaults."""
    return data.small


def mnist_like(data: Data) -> bool:
    """One-channel sets of tens of thousands of images (MNIST, Fashion-MNIST). No paper gives
    trajectory settings for them, and an expert epoch over 60,000 images takes minutes on a CPU."""
    return data.channels == 1 and not data.small


# MNIST-like sets (N, T+, lr_img, lr_lr), with M = 1 and one expert: the matching covers the expert's
# first epoch, where it moves most (Fashion-MNIST: ~85% after it), and the expert trains that one
# epoch. At IPC 1 on Fashion-MNIST MTT reached 71.0 ± 0.7% in 17 min on one core, the expert trained
# from nothing, against DM's 69.8 ± 0.6% (README, "Fashion-MNIST on a CPU"); the rest as the CIFAR
# IPC 1 row. At IPC >= 5 the student steps on batches of MNIST_LIKE_BATCH_SYN images (N = 20 steps on
# all 100 images of IPC 10 take 45 s on one core, on 30 about 6 s) with the CIFAR IPC 10 row's lr_lr:
# 107 steps in 10 min on one core gave 77.6 ± 0.1% at IPC 10 (random real 73.5 ± 0.5%), below DM's
# 79.7 ± 0.3% after 5 min; the later epochs a larger set wants would cost an expert epoch each.
MNIST_LIKE_IPC1 = (20, 1, 1000.0, 1e-7)
MNIST_LIKE_IPC10 = (20, 1, 1000.0, 1e-5)
MNIST_LIKE_BATCH_SYN = 30
# steps: about 2.5 s each at IPC 1 and 6 s at IPC >= 5 on one core of this project's CPU
MNIST_LIKE_ITERATIONS = {1: 200, 10: 100}


@dataclass(frozen=True)
class MTTConfig(Options):
    syn_steps: int | None = option(None, "N: student steps per iteration (empty: by dataset and IPC)", min=1)
    expert_epochs: int | None = option(None, "M: the target is the expert M epochs after the start (empty: by dataset and IPC)", min=1)
    max_start_epoch: int | None = option(None, "T+: start epochs are drawn from [0, T+) (empty: by IPC)", min=1)
    batch_syn: int | None = option(None, "synthetic minibatch of a student step (empty: by IPC)", min=1)
    lr_img: float | None = option(None, "learning rate of the images (empty: by dataset and IPC)", above=0)
    lr_lr: float | None = option(None, "learning rate of the learned step size α (empty: by IPC)", above=0)
    lr_init: float = option(0.01, "α₀, the learned step size's start", above=0)
    momentum: float = option(0.5, "momentum of the image and α optimizers", min=0, max=0.999)
    expert_count: int | None = option(None, "expert networks to train (empty: by dataset)", min=1)
    expert_train_epochs: int | None = option(None, "epochs each expert trains (needs >= T+ - 1 + M; empty: exactly that)", min=1)
    expert_lr: float = option(0.01, "learning rate of the experts' SGD", above=0)
    expert_batch: int | None = option(None, "the experts' minibatch (empty: by dataset)", min=1)
    expert_checkpoints: int | None = option(
        None, "expert snapshots per pass over the real images; epochs (T, M, ...) count snapshots (empty: by dataset)", min=1
    )
    expert_seed: int = option(0, "independent of the run's seed, so runs share cached experts")
    expert_recipe: Literal["sgd", "ftd"] = option(
        "sgd", "how the experts train: sgd (plain, MTT's) or ftd (sharpness-aware GSAM steps, DATM's authors')", what="expert recipe"
    )
    expert_budget_s: float = option(1800.0, "refuse to train experts estimated to take longer", above=0)
    constant_memory: bool = option(False, "TESLA-style gradient: memory constant in N, same result")
    syn_weights: Literal[SYN_WEIGHTS] = option("uniform", "the student's loss on each synthetic image: " + SYN_WEIGHTS_HELP, what="syn_weights")

    def defaults(self, data: Data, ipc: int, iterations: int) -> dict[str, Any]:
        """Values for the ``None`` fields. Digits: tuned on this project's CPU; MNIST-like sets: one
        expert's first epoch (``MNIST_LIKE_IPC1``, ``MNIST_LIKE_IPC10``); others: the MTT paper's CIFAR
        settings (N, T+, lr_img, lr_lr by IPC), M = 2."""
        spec = experts_mod.default_spec(data)
        n = data.num_classes * ipc
        m, count = 2, spec.count
        batch_syn = min(n, 256)
        if mnist_like(data):
            steps, t_plus, lr_img, lr_lr = MNIST_LIKE_IPC1 if ipc < 5 else MNIST_LIKE_IPC10
            m, count = 1, 1
            batch_syn = min(n, MNIST_LIKE_BATCH_SYN)
        elif digits_like(data):
            # normalised 8x8 pixels take larger steps than CIFAR's ZCA'd 32x32 ones
            table = {1: (20, 4, 100.0, 1e-5), 10: (20, 8, 100.0, 1e-5)}
            steps, t_plus, lr_img, lr_lr = table[1] if ipc < 5 else table[10]
        elif ipc < 5:
            steps, t_plus, lr_img, lr_lr = 50, 2, 1000.0, 1e-7
        elif ipc < 30:
            steps, t_plus, lr_img, lr_lr = 30, 20, 1000.0, 1e-5
        else:
            steps, t_plus, lr_img, lr_lr = 30, 40, 1000.0, 1e-5
        t_plus = self.max_start_epoch or t_plus
        m = self.expert_epochs or m
        return {
            "syn_steps": steps,
            "expert_epochs": m,
            "max_start_epoch": t_plus,
            "batch_syn": batch_syn,
            "lr_img": lr_img,
            "lr_lr": lr_lr,
            "expert_count": count,
            # only what the matching reaches: the last start epoch T+ - 1 plus M (a longer cached expert serves it)
            "expert_train_epochs": last_target_epoch(t_plus, m),
            "expert_batch": spec.batch,
            "expert_checkpoints": 1,
        }

    def resolved(self, data: Data, ipc: int, iterations: int) -> "MTTConfig":
        """A copy with every ``None`` field filled for ``data``, ``ipc`` and the run's ``iterations``."""
        filled = self.defaults(data, ipc, iterations)
        missing = [f.name for f in fields(self) if getattr(self, f.name) is None and f.name in filled]
        return replace(self, **{name: filled[name] for name in missing})

    def expert_spec(self) -> ExpertSpec:
        if self.expert_count is None or self.expert_train_epochs is None or self.expert_batch is None:
            raise ValueError("resolve the config (Config.resolved(data, ipc, iterations)) before asking for its expert spec")
        return ExpertSpec(
            self.expert_count, self.expert_train_epochs, self.expert_lr, self.expert_batch, self.expert_seed, self.expert_checkpoints or 1,
            self.expert_recipe,
        )


@METHODS.register("mtt")
class MTT:
    Config = MTTConfig
    declares = Declares(experts=True, learned_lr=True, metrics=("loss", "lr_syn", "start_epoch"), loop="tm step")

    def __init__(self, ctx: Context, cfg: MTTConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg = ctx.options(cfg)
        self.experts = self.load_experts()
        self.iteration = 0
        # the network is only an architecture: its parameters come from the expert at each step
        self.net = ctx.fresh_net()
        self.net.train()
        for p in self.net.parameters():
            p.requires_grad_(False)
        device = ctx.device
        # trajectories small enough live on the device; large ones move two epochs per step
        on_device = experts_mod.storage_bytes(ctx.data, ctx.net, cfg.expert_spec()) < 512 * 2**20
        self.expert_order: list[int] = []  # what is left of the current walk through the buffer (``endpoints``)
        self.trajectories = [
            [{k: v.to(device) for k, v in params.items()} for params in traj] if on_device else traj
            for traj in self.experts.trajectories
        ]
        self.images_syn = self.initial_images().detach().clone().requires_grad_(True)
        self.labels_syn = self.initial_labels()
        self.lr_syn = torch.tensor(cfg.lr_init, device=device).requires_grad_(True)
        self.opt_img = torch.optim.SGD([self.images_syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.opt_lr = torch.optim.SGD([self.lr_syn], lr=cfg.lr_lr, momentum=0.5)
        self.loss_weights = None  # (n,) the student's per-image loss weights; None: the plain mean
        if cfg.syn_weights == "coreset":
            self.loss_weights = loss_weights(required_weights(ctx.init.weights, type(self).__name__), self.labels_syn).to(device)

    # ---- pieces DATM and IADD override ---------------------------------------------------------
    def load_experts(self) -> Experts:
        ctx, cfg = self.ctx, self.cfg
        spec = cfg.expert_spec()
        assert cfg.max_start_epoch is not None  # resolved
        needed = last_target_epoch(cfg.max_start_epoch, cfg.expert_epochs)
        if spec.epochs < needed:
            raise ValueError(
                f"experts train {spec.epochs} epochs, but start epochs up to {cfg.max_start_epoch - 1} plus "
                f"M={cfg.expert_epochs} need {needed}; set expert_train_epochs >= {needed} or lower max_start_epoch"
            )
        return experts_mod.load_or_train(ctx.data, ctx.net, ctx.strategy, spec, ctx.cache_dir, ctx.report, cfg.expert_budget_s)

    def initial_images(self) -> torch.Tensor:
        return self.ctx.init.images

    def initial_labels(self) -> torch.Tensor:
        return self.ctx.init.labels.clone()

    def start_epoch(self) -> int:
        return int(torch.randint(0, self.cfg.max_start_epoch, (1,), generator=self.ctx.generator))

    def loss_fn(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return trajectory.normalised_loss(num, den)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_img, self.opt_lr]

    def update(self, loss: torch.Tensor) -> None:
        for opt in self.optimizers():
            opt.step()

    # ---- the protocol ----------------------------------------------------------------------------
    @staticmethod
    def default_iterations(data: Data, ipc: int) -> int:
        if digits_like(data):
            return 500 if ipc < 5 else 200
        if mnist_like(data):
            return MNIST_LIKE_ITERATIONS[1 if ipc < 5 else 10]
        return 1000 if ipc < 5 else 2000

    def endpoints(self) -> tuple[Params, Params, int]:
        """(θ*_t, θ*_{t+M}, t) of the next expert of a shuffled walk through the buffer: each expert
        once before any twice, reshuffled when all were used, as the reference walks its buffer
        (mtt-distillation distill.py:305-322 and DATM.py:465-482 without ``--load_all``)."""
        gen = self.ctx.generator
        if not self.expert_order:
            self.expert_order = torch.randperm(len(self.trajectories), generator=gen).tolist()
        k = self.expert_order.pop()
        t = self.start_epoch()
        traj = self.trajectories[k]
        device = self.ctx.device
        start = {n: v.to(device, non_blocking=True) for n, v in traj[t].items()}
        target = {n: v.to(device, non_blocking=True) for n, v in traj[t + self.cfg.expert_epochs].items()}
        return start, target, t

    def step(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        start, target, t = self.endpoints()
        n = self.images_syn.shape[0]
        batches = trajectory.plan_batches(n, cfg.syn_steps, cfg.batch_syn, self.ctx.strategy, self.ctx.generator, self.loss_weights)
        for opt in self.optimizers():
            opt.zero_grad(set_to_none=True)
        loss = trajectory.match(
            self.net, self.images_syn, self.labels_syn, self.lr_syn, start, target, batches,
            loss_fn=self.loss_fn, constant_memory=cfg.constant_memory,
        )
        self.update(loss)
        self.iteration += 1
        return {"loss": loss, "lr_syn": self.lr_syn.detach().clone(), "start_epoch": torch.tensor(float(t))}

    def synthetic(self) -> Synthetic:
        labels = self.labels_syn.detach()
        labels = labels.clone() if labels.is_floating_point() else labels
        # the weights stay with their places in the set, also where DATM swapped a starting image (init_correct)
        return Synthetic(self.images_syn.detach(), labels, float(self.lr_syn.detach()), self.ctx.init.weights)

    def extras(self) -> dict[str, torch.Tensor]:
        return {}
