"""The built-in datasets, by name (``DATASETS``): scikit-learn digits (embedded default),
Fashion-MNIST from the Debian package or a torchvision-style root, torchvision datasets (download
only when online), MNIST-like IDX files.
"""
from __future__ import annotations

import functools
import gzip
import os
import socket
from pathlib import Path
from typing import Callable

import numpy as np

from distill_core.data.datasets import Data, DataError, from_pixels
from distill_core.paths import cache_dir
from distill_core.registry import Registry

DATASETS: Registry[Callable[[], Data]] = Registry("dataset")

DATA_ROOT = Path(os.environ.get("DISTILL_DATA", cache_dir() / "data"))
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")



@DATASETS.register("digits")
def load_digits() -> Data:
    """scikit-learn's 1,797 8x8 digits, a fixed stratified 80/20 split (seed 0)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = d.images.astype(np.uint8)[:, None]  # whole numbers 0..16: bytes, read as byte / 16
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    return from_pixels("digits", xtr, ytr, xte, yte, tuple(str(i) for i in range(10)), top=16)


def read_idx(path: Path) -> np.ndarray:
    """Read a (possibly gzipped) IDX file, the format of (Fashion-)MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def find_idx(folders: list[Path]) -> dict[str, Path] | None:
    for folder in folders:
        found = {}
        for key, stem in IDX_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.exists():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def load_idx_dataset(name: str, folders: list[Path], class_names: tuple[str, ...], hint: str) -> Data:
    files = find_idx(folders)
    if files is None:
        where = ", ".join(str(f) for f in folders)
        raise DataError(
            f"{name} not found; looked in {where}. {hint} "
            f"Expected files: {', '.join(s + '[.gz]' for s in IDX_FILES.values())}."
        )
    arrays = {k: read_idx(p) for k, p in files.items()}
    # the uint8 pixels are kept as bytes (a copy of the read-only buffers read_idx returns)
    return from_pixels(name, arrays["x_train"][:, None], arrays["y_train"], arrays["x_test"][:, None],
                       arrays["y_test"], class_names)


@DATASETS.register("fashion-mnist")
def load_fashion() -> Data:
    root = DATA_ROOT
    folders = [FASHION_DEBIAN, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    return load_idx_dataset(
        "fashion-mnist",
        folders,
        FASHION_CLASSES,
        "Install the Debian package (apt-get install dataset-fashion-mnist) or put the IDX files in "
        f"{root / 'FashionMNIST' / 'raw'} (or set DISTILL_DATA to a torchvision-style root).",
    )


def online(host: str = "pypi.org", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


TORCHVISION = {
    # name: (torchvision class, constructor kwargs for train/test, folder, files the user can provide)
    "mnist": ("MNIST", ({"train": True}, {"train": False}), "MNIST/raw", "the four MNIST IDX files (train-images-idx3-ubyte.gz, ...)"),
    "cifar10": ("CIFAR10", ({"train": True}, {"train": False}), "cifar-10-batches-py",
                "cifar-10-python.tar.gz extracted (data_batch_1..5, test_batch)"),
    "cifar100": ("CIFAR100", ({"train": True}, {"train": False}), "cifar-100-python", "cifar-100-python.tar.gz extracted (train, test, meta)"),
    "svhn": ("SVHN", ({"split": "train"}, {"split": "test"}), "", "train_32x32.mat and test_32x32.mat"),
}


def load_torchvision(name: str) -> Data:
    cls_name, (train_kw, test_kw), folder, files = TORCHVISION[name]
    root = DATA_ROOT
    if name == "mnist":
        files_found = find_idx([root / "MNIST" / "raw"])
        if files_found:
            return load_idx_dataset("mnist", [root / "MNIST" / "raw"], tuple(str(i) for i in range(10)), "")
    try:
        import torchvision.datasets as tvd
    except Exception as e:  # noqa: BLE001 - torchvision missing or built for another torch
        raise DataError(f"{name} needs torchvision, which cannot be imported here ({e}).") from None
    cls = getattr(tvd, cls_name)

    def make(download: bool):
        kw_root = str(root / "svhn") if name == "svhn" else str(root)
        return cls(kw_root, download=download, **train_kw), cls(kw_root, download=download, **test_kw)

    try:
        train, test = make(download=False)
    except (RuntimeError, FileNotFoundError, OSError):
        if not online():
            raise DataError(
                f"{name} is not on this machine and there is no internet connection to download it. "
                f"Put {files} in {root / folder if folder else root / 'svhn'} "
                "(or set DISTILL_DATA to the folder holding them) and try again."
            ) from None
        try:
            train, test = make(download=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"downloading {name} failed ({e}); put {files} in {root} and try again.") from None

    def arrays(ds):
        x = np.asarray(ds.data)
        y = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)))
        if x.ndim == 3:
            x = x[:, None]
        elif x.shape[-1] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.uint8), y  # kept as bytes, normalised on every read

    xtr, ytr = arrays(train)
    xte, yte = arrays(test)
    names = tuple(getattr(train, "classes", None) or [str(i) for i in range(int(ytr.max()) + 1)])
    return from_pixels(name, xtr, ytr, xte, yte, names, own=True)


for _name in TORCHVISION:
    DATASETS.register(_name)(functools.partial(load_torchvision, _name))

