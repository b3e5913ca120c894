"""Two named tiers of settings: ``paper`` (the authors' settings, what a reproduction needs) and
``quick`` (this project's per-dataset defaults, sized for a laptop CPU; unchanged by tiers).

``paper_settings(method, dataset, num_classes, ipc)`` gives, for one cell, the paper tier's
iterations, the method options it changes (only options the method's ``Config`` has), and the
evaluation protocol; each value names its source: the reference code checked out read-only
(VICO-UoE/DatasetCondensation ``main.py``, ``main_DM.py``, ``utils.py``; GeorgeCazenavette/
mtt-distillation ``buffer.py``, ``distill.py``, ``readme.md``; NUS-HPC-AI-Lab/DATM ``configs/``,
``README.md``) or the papers' tables as METHODS.md lists them. Where the authors did not run a
dataset, the nearest published setting of the same IPC applies and ``notes`` says so. MTT and DATM
whiten their three-channel sets with ZCA (``--zca`` in readme.md and README.md, ``zca: True`` in every
DATM config; ``data.zca``): the paper tier does so too (``Paper.zca``). DATM's EMA of the images is not
implemented here: a note says so.

``config.resolve`` applies them as defaults: anything the user set explicitly wins, and the
resolved config lists what differs from the tier (``RunConfig.overrides``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from distill_core.methods import METHODS
from distill_core.methods.dc import reference_loops

TIERS = ("paper", "quick")
# the datasets the authors published figures for; a run on them defaults to ``paper`` on a GPU
PUBLISHED_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")
BEFORE_TIERS = "before tiers"  # how a run saved before tiers existed is shown


def check_tier(tier: str | None) -> None:
    if tier is not None and tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")


def default_tier(dataset: str, device: str) -> str:
    """``paper`` on a CUDA device for the datasets the authors published; ``quick`` on CPU (and MPS),
    on digits and on uploads, where the paper's budgets would take hours or days."""
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "paper" if on_cuda and dataset in PUBLISHED_DATASETS else "quick"


@dataclass(frozen=True)
class Paper:
    """One cell's paper-tier settings."""

    iterations: int | None  # None: the method's own default (no published budget)
    options: dict[str, Any] = field(default_factory=dict)
    eval_nets: int = 20
    eval_epochs: int = 1000
    eval_augment: bool = True
    eval_batch: int = 256
    precision: str = "fp32"  # the reference code trains in fp32
    notes: tuple[str, ...] = ()
    zca: bool = False  # ZCA-whiten the images (train and test) before anything sees them


# the built-in datasets' channels, for a caller that names a dataset without loading it
BUILTIN_CHANNELS = {"digits": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "cifar100": 3, "svhn": 3}


# ---- DC, DSA, DM (VICO-UoE/DatasetCondensation) --------------------------------------------------
# main.py:23 Iteration 1000; main_DM.py:22 Iteration 20000
DC_ITERATIONS = 1000
DM_ITERATIONS = 20000
# main.py:26 and main_DM.py:25 batch_real 256 (real images per class per matching)
BATCH_REAL = 256
# main.py:21, main_DM.py:20 num_eval 20 (per experiment; 5 experiments, num_exp)
DC_FAMILY_EVAL_NETS = 20
# main.py:110-123: DSA, or DC with augmentation (get_daparam gives crop_scale_rotate on MNIST only,
# utils.py:439), evaluates 1000 epochs; DC without augmentation 300; main_DM.py:21 1000 with DSA
EVAL_EPOCHS_AUGMENTED = 1000
EVAL_EPOCHS_PLAIN = 300


def dc_family(method: str, dataset: str, ipc: int) -> Paper:
    notes = []
    if method == "dm":
        options = {
            "batch_real": BATCH_REAL,
            "lr_img": 1.0,  # main_DM.py:23
            "momentum": 0.5,  # main_DM.py:102 SGD(image_syn, lr_img, momentum=0.5)
        }
        return Paper(DM_ITERATIONS, options, DC_FAMILY_EVAL_NETS, EVAL_EPOCHS_AUGMENTED, True, notes=tuple(notes))
    outer, inner = reference_loops(ipc)  # utils.py:275 get_loops: (1,1), (10,50), (20,25) ... (50,10)
    if ipc not in (1, 10, 20, 30, 40, 50):
        notes.append(f"the reference defines outer/inner loops for IPC 1, 10, 20-50 only; IPC {ipc} takes the next one up ({outer}, {inner})")
    options = {
        "batch_real": BATCH_REAL,
        "lr_img": 0.1,  # main.py:24
        "momentum": 0.5,  # main.py:100 SGD(image_syn, lr_img, momentum=0.5)
        "lr_net": 0.01,  # main.py:25
        "momentum_net": 0.0,  # main.py:150 SGD(net.parameters(), lr=lr_net): no momentum
        "batch_train": 256,  # main.py:27
        "outer_loop": outer,
        "inner_loop": inner,
    }
    if method == "dsa":
        return Paper(DC_ITERATIONS, options, DC_FAMILY_EVAL_NETS, EVAL_EPOCHS_AUGMENTED, True, notes=tuple(notes))
    if dataset == "mnist":
        # utils.py:439-440: DC evaluates on MNIST with its own crop/scale/rotate augmentation, 1000 epochs;
        # the nearest here is the DSA families on every evaluation batch
        notes.append("DC's MNIST evaluation augmentation (crop, scale, rotate, noise) is approximated by DSA's families")
        return Paper(DC_ITERATIONS, options, DC_FAMILY_EVAL_NETS, EVAL_EPOCHS_AUGMENTED, True, notes=tuple(notes))
    return Paper(DC_ITERATIONS, options, DC_FAMILY_EVAL_NETS, EVAL_EPOCHS_PLAIN, False, notes=tuple(notes))


# ---- MTT (GeorgeCazenavette/mtt-distillation) -----------------------------------------------------
MTT_ITERATIONS = 5000  # distill.py:431 Iteration
MTT_EXPERTS = 100  # buffer.py:116 num_experts
MTT_EXPERT_EPOCHS = 50  # buffer.py:126 train_epochs
EXPERT_LR = 0.01  # buffer.py:117 lr_teacher (and buffer.py:129 mom 0: plain SGD, experts.py's "sgd" recipe)
EXPERT_BATCH = 256  # buffer.py:118 batch_train
# not the authors' (this project's guard against expert training that would take too long): the paper
# tier asks for their experts whatever they cost, and the estimate shows the cost before a run
EXPERT_BUDGET_S = 7 * 86400.0
TRAJECTORY_EVAL_NETS = 5  # distill.py:426 num_eval
TRAJECTORY_EVAL_EPOCHS = 1000  # distill.py:430 epoch_eval_train
# the MTT paper's hyper-parameter table, CIFAR-10 (METHODS.md): IPC -> (N syn_steps, M expert_epochs,
# T+ max_start_epoch, lr_img, lr_lr); lr_img and lr_lr as methods/mtt.py's CIFAR rows
MTT_CIFAR10 = {1: (50, 2, 2, 1000.0, 1e-7), 10: (30, 2, 20, 1000.0, 1e-5), 50: (30, 2, 40, 1000.0, 1e-5)}
# readme.md:88, the published CIFAR-100 IPC 1 command: syn_steps 20, expert_epochs 3, max_start_epoch 20,
# lr_img 1000, lr_lr 1e-05
MTT_CIFAR100 = {1: (20, 3, 20, 1000.0, 1e-5)}


def nearest_ipc(table: dict[int, Any], ipc: int) -> int:
    """The table's IPC nearest to ``ipc`` (ties: the smaller)."""
    return min(table, key=lambda k: (abs(k - ipc), k))


def trajectory_note(dataset: str, method: str, row_source: str, zca: bool) -> list[str]:
    notes = []
    if dataset not in ("cifar10", "cifar100"):
        notes.append(f"the authors did not run {method.upper()} on {dataset}: {row_source}")
        if zca:
            notes.append("ZCA whitening as the authors' on CIFAR (their three-channel sets)")
    return notes


def mtt(method: str, dataset: str, num_classes: int, ipc: int, zca: bool = False) -> Paper:
    if dataset == "cifar100" and ipc in MTT_CIFAR100:
        row, source = MTT_CIFAR100[ipc], "readme's CIFAR-100 IPC 1 command"
    else:
        k = nearest_ipc(MTT_CIFAR10, ipc)
        row, source = MTT_CIFAR10[k], f"the nearest published setting, CIFAR-10 IPC {k}"
    steps, m, t_plus, lr_img, lr_lr = row
    options = {
        "syn_steps": steps,
        "expert_epochs": m,
        "max_start_epoch": t_plus,
        "lr_img": lr_img,
        "lr_lr": lr_lr,
        "lr_init": 0.01,  # distill.py:435 lr_teacher, α's start
        "batch_syn": num_classes * ipc,  # distill.py:74-75: the whole synthetic set when batch_syn is unset
        "expert_count": MTT_EXPERTS,
        "expert_train_epochs": MTT_EXPERT_EPOCHS,
        "expert_lr": EXPERT_LR,
        "expert_batch": EXPERT_BATCH,
        "expert_recipe": "sgd",  # buffer.py:73 SGD(lr_teacher, momentum=mom, weight_decay=l2), buffer.py:129-130 both 0
        "expert_budget_s": EXPERT_BUDGET_S,
    }
    notes = trajectory_note(dataset, method, source, zca)
    if dataset == "cifar10" and ipc not in MTT_CIFAR10 or dataset == "cifar100" and ipc not in MTT_CIFAR100:
        notes.insert(0, f"no published setting for IPC {ipc} on {dataset}: {source}")
    if method == "iadd":
        notes.insert(0, "IADD's own settings are not available here: MTT's, on which it builds")
    # readme.md:80,88: buffer.py and distill.py with --zca on CIFAR (utils.py get_dataset)
    return Paper(MTT_ITERATIONS, options, TRAJECTORY_EVAL_NETS, TRAJECTORY_EVAL_EPOCHS, True, notes=tuple(notes), zca=zca)


# ---- DATM (NUS-HPC-AI-Lab/DATM) ---------------------------------------------------------------------
DATM_ITERATIONS = 10000  # configs/*/ConvIN/IPC*.yaml Iteration
DATM_EXPERTS = 100  # README.md:31 buffer_FTD.py --num_experts=100
DATM_EXPERT_EPOCHS = 100  # README.md:31 --train_epochs=100
DATM_EVAL_BATCH = 128  # configs batch_train: 128
# configs/<dataset>/ConvIN/IPC<k>.yaml: syn_steps, expert_epochs, lr_img, lr_lr, lr_y, threshold,
# min_start_epoch, current_max_start_epoch (T), max_start_epoch (T+), expansion_end_epoch (X; 0: no
# sequential generation), batch_syn
DATM_CONFIGS = {
    "cifar10": {
        1: (80, 2, 100.0, 1e-7, 5.0, 1.1, 0, 4, 4, 0, 10),
        10: (80, 2, 100.0, 1e-5, 2.0, 1.0, 0, 10, 20, 1000, 100),
        50: (80, 2, 1000.0, 1e-5, 2.0, 1.0, 0, 20, 40, 2000, 500),
    },
    "cifar100": {
        1: (40, 3, 1000.0, 1e-5, 10.0, 1.0, 0, 10, 20, 1000, 1000),
        10: (80, 2, 1000.0, 1e-5, 10.0, 1.0, 0, 30, 50, 2000, 1000),
        50: (80, 2, 1000.0, 1e-5, 10.0, 1.0, 20, 70, 70, 0, 1000),
    },
}


def datm(dataset: str, num_classes: int, ipc: int, zca: bool = False) -> Paper:
    table = DATM_CONFIGS.get(dataset, DATM_CONFIGS["cifar10"])
    k = nearest_ipc(table, ipc)
    name = dataset if dataset in DATM_CONFIGS else "cifar10"
    source = f"the nearest published setting, configs/{'CIFAR-10' if name == 'cifar10' else 'CIFAR-100'}/ConvIN/IPC{k}.yaml"
    steps, m, lr_img, lr_lr, lr_y, threshold, t_min, t_init, t_plus, x, batch_syn = table[k]
    options = {
        "syn_steps": steps,
        "expert_epochs": m,
        "lr_img": lr_img,
        "lr_lr": lr_lr,
        "lr_label": lr_y,
        "label_momentum": 0.9,  # configs Momentum_y
        "threshold": threshold,
        "min_start_epoch": t_min,
        "initial_max_start_epoch": t_init,
        "max_start_epoch": t_plus,
        "expansion_iterations": x,
        # the config's batch_syn, at most the whole set (a set smaller than the config's takes all of it)
        "batch_syn": min(batch_syn, num_classes * ipc),
        "lr_init": 0.01,  # configs lr_teacher
        "expert_count": DATM_EXPERTS,
        "expert_train_epochs": DATM_EXPERT_EPOCHS,
        "expert_lr": EXPERT_LR,  # README.md:31 --lr_teacher=0.01 --mom=0.
        "expert_batch": EXPERT_BATCH,  # README.md:31 --batch_train=256
        # README.md:31 trains the experts with buffer/buffer_FTD.py: GSAM steps (buffer_FTD.py:79-88), its
        # rho 0.01, alpha 0.3 and constant lr and rho as methods/ftd.py traces them
        "expert_recipe": "ftd",
        "expert_budget_s": EXPERT_BUDGET_S,
    }
    notes = trajectory_note(dataset, "datm", source, zca)
    if dataset in DATM_CONFIGS and ipc != k:
        notes.insert(0, f"no published setting for IPC {ipc} on {dataset}: {source}")
    notes.append("the authors' EMA of the images is not implemented here")
    # configs/*/ConvIN/IPC*.yaml zca: True (CIFAR-10, CIFAR-100, Tiny ImageNet); README.md:31 buffer_FTD.py --zca
    return Paper(DATM_ITERATIONS, options, TRAJECTORY_EVAL_NETS, TRAJECTORY_EVAL_EPOCHS, True, DATM_EVAL_BATCH, notes=tuple(notes),
                 zca=zca)


def paper_settings(method: str, dataset: str, num_classes: int, ipc: int, channels: int | None = None) -> Paper:
    """The paper tier's settings of one cell (``method`` a registered name). ``channels``: the dataset's
    image channels (None: a built-in dataset's, ``BUILTIN_CHANNELS``; an unknown one counts as one
    channel): the trajectory methods whiten three-channel sets, as their authors whiten CIFAR."""
    METHODS.get(method)  # an unknown name lists the known ones
    three = (BUILTIN_CHANNELS.get(dataset, 1) if channels is None else channels) == 3
    if method in ("dm", "dc", "dsa"):
        paper = dc_family(method, dataset, ipc)
        if dataset not in PUBLISHED_DATASETS:
            paper = with_note(paper, f"the authors did not run {dataset}: their settings as on MNIST and CIFAR")
    elif method in ("mtt", "iadd"):
        paper = mtt(method, dataset, num_classes, ipc, zca=three)
    elif method == "datm":
        paper = datm(dataset, num_classes, ipc, zca=three)
    else:
        # KIP's settings (an NTK in JAX, learned labels) do not map onto this project's random-feature KRR
        paper = Paper(None, {}, DC_FAMILY_EVAL_NETS, EVAL_EPOCHS_AUGMENTED, True,
                      notes=(f"no published settings for {method} map onto this project's: its own defaults, evaluated as DM's paper protocol",))
    # only options the method's Config has (a guard for the other engineers' renames)
    known = set(METHODS.get(method).Config.__dataclass_fields__)
    return replace(paper, options={k: v for k, v in paper.options.items() if k in known})


def with_note(paper: Paper, note: str) -> Paper:
    return replace(paper, notes=(*paper.notes, note))


def tier_label(config: dict[str, Any] | None) -> str:
    """How a run's tier reads in a headline or a table: ``paper``, ``quick, iterations overridden``, or
    ``before tiers`` for a config saved before tiers existed (no ``tier`` key, or None)."""
    if not config or not config.get("tier"):
        return BEFORE_TIERS
    overrides = config.get("overrides") or ()
    return config["tier"] + (f", {', '.join(overrides)} overridden" if overrides else "")
