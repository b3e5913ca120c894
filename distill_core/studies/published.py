"""The published figures this project holds itself against: ONE table (ConvNet, test accuracy %),
each figure with its source and the protocol it comes from. Copied from METHODS.md's "Published
results" table, which names where each row comes from.

Keys are (method, dataset, ipc); ``method`` is this project's method name where one matches
(``random`` for the random-real subset, ``full`` for the whole training set, ipc 0), the published
method's name otherwise (``kip``, ``rcig``, ``ncfm``). A missing key: no published figure.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    accuracy: float  # test accuracy, %
    source: str
    third_party: bool = False  # a rerun by others, not the method's authors
    comparable: bool = True  # False: another protocol (learned labels, a kernel instead of a trained network)
    note: str = ""


DC_README = "VICO-UoE/DatasetCondensation README (the DC and DSA authors)"
RANDOM_SOURCE = "DC (ICLR 2021) / DSA (ICML 2021) papers' random-real rows, as METHODS.md lists them"
DM_RERUN = "third-party reruns (the DM paper reports CIFAR only)"
DM_PAPER = "DM paper (Zhao & Bilen, WACV 2023)"
KIP_SOURCE = "KIP (Nguyen et al., ICLR 2021 / NeurIPS 2021)"
RCIG_SOURCE = "RCIG paper"
NCFM_SOURCE = "NCFM paper (2025)"
MTT_SOURCE = "MTT paper (Cazenavette et al., CVPR 2022)"
DATM_SOURCE = "DATM paper (Guo et al., ICLR 2024)"
FULL_SOURCE = "full training set, as METHODS.md lists it"

LEARNED_LABELS = "learned labels: not comparable with hard-label results"
KERNEL = "a kernel's accuracy, learned labels: not a trained network, not comparable"
MAX_OVER_CHECKPOINTS = "the maximum over evaluation checkpoints; this project reports the final accuracy"

DATASETS = ("mnist", "fashion-mnist", "cifar10")
IPCS = (1, 10, 50)


def _rows() -> dict[tuple[str, str, int], Figure]:
    # method: (figures for MNIST 1/10/50, Fashion-MNIST 1/10/50, CIFAR-10 1/10/50; None: not published), Figure fields
    table: dict[str, tuple[tuple[float | None, ...], dict]] = {
        "random": ((64.9, 95.1, 97.9, 51.4, 73.8, 82.5, 14.4, 26.0, 43.4), {"source": RANDOM_SOURCE}),
        "dc": ((91.7, 97.4, 98.8, 70.5, 82.3, 83.6, 28.3, 44.9, 53.9), {"source": DC_README}),
        "dsa": ((88.7, 97.8, 99.2, 70.6, 84.6, 88.7, 28.8, 52.1, 60.6), {"source": DC_README}),
        "kip": ((96.5, 99.1, 99.5, 76.7, 88.8, 91.0, 63.4, 75.5, 79.7), {"source": KIP_SOURCE, "comparable": False, "note": KERNEL}),
        "rcig": ((94.7, 98.9, 99.2, 79.8, 88.5, 90.2, 53.9, 69.1, 73.5),
                 {"source": RCIG_SOURCE, "comparable": False, "note": LEARNED_LABELS}),
        "ncfm": ((None,) * 6 + (49.5, 71.8, 77.4), {"source": NCFM_SOURCE}),
        "mtt": ((None,) * 6 + (46.3, 65.3, 71.6), {"source": MTT_SOURCE, "note": MAX_OVER_CHECKPOINTS}),
        "datm": ((None,) * 6 + (46.9, 66.8, 76.1), {"source": DATM_SOURCE, "note": "soft labels learned (the method's own protocol)"}),
    }
    out = {}
    for method, (values, kw) in table.items():
        for i, value in enumerate(values):
            if value is not None:
                out[(method, DATASETS[i // 3], IPCS[i % 3])] = Figure(value, **kw)
    # DM: MNIST and Fashion-MNIST from third-party reruns, CIFAR-10 the authors'
    for i, value in enumerate((89.7, 97.5, 98.6, 70.7, 83.5, 88.1)):
        out[("dm", DATASETS[i // 3], IPCS[i % 3])] = Figure(value, DM_RERUN, third_party=True)
    for ipc, value in zip(IPCS, (26.0, 48.9, 63.0), strict=True):
        out[("dm", "cifar10", ipc)] = Figure(value, DM_PAPER)
    for dataset, value in zip(DATASETS, (99.6, 93.5, 84.8), strict=True):
        out[("full", dataset, 0)] = Figure(value, FULL_SOURCE)
    return out


PUBLISHED: dict[tuple[str, str, int], Figure] = _rows()
# this project's methods whose figure is published under another name (KRR here: KIP's kernel figure)
PUBLISHED_AS = {"krr": "kip"}


def published(method: str, dataset: str, ipc: int) -> Figure | None:
    """The published figure of this project's ``method`` on ``dataset`` at ``ipc``, or None."""
    return PUBLISHED.get((PUBLISHED_AS.get(method, method), dataset, ipc))
