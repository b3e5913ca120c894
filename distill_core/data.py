"""Datasets as whole tensors.

Every dataset becomes ``Data``: normalised float images ``(N, C, H, W)``, int64 labels, class
names and the per-channel mean/std used to normalise (so pages can show pixels again).
Sources: scikit-learn digits (embedded default), Fashion-MNIST from the Debian package or a
torchvision-style root, torchvision datasets (download only when online), a user's ``.npz``
or a zip of one folder of images per class.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import socket
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from distill_core.paths import cache_dir
from distill_core.registry import Registry

SMALL_MAX = 5000  # training images up to which a dataset is "small": digits-sized, its own lighter defaults


class DataError(ValueError):
    """A dataset that cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Data:
    name: str
    x_train: torch.Tensor  # (N, C, H, W) float32, normalised
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def im_size(self) -> tuple[int, int]:
        return (self.x_train.shape[2], self.x_train.shape[3])

    @property
    def small(self) -> bool:
        """Digits-sized (at most ``SMALL_MAX`` training images): trajectory matching's defaults follow
        the digits' tuning, not CIFAR's (an upload of a few hundred images included)."""
        return self.x_train.shape[0] <= SMALL_MAX

    def class_indices(self) -> list[torch.Tensor]:
        """Indices into x_train of each class, in class order."""
        return [torch.nonzero(self.y_train == c).flatten() for c in range(self.num_classes)]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()

    def to(self, device: torch.device | str) -> "Data":
        return Data(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.class_names,
            self.mean,
            self.std,
        )

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images back to [0, 1] pixels, for display."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


DATASETS: Registry[Callable[[], Data]] = Registry("dataset")

DATA_ROOT = Path(os.environ.get("DISTILL_DATA", cache_dir() / "data"))
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def from_pixels(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...],
    own: bool = False,
) -> Data:
    """Build ``Data`` from float pixels in [0, 1] of shape (N, C, H, W); normalise by train stats.
    ``own``: the arrays are this call's to change (normalised in place: no second copy of the data)."""
    xt = torch.as_tensor(np.ascontiguousarray(x_train), dtype=torch.float32)
    xv = torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32)
    mean = xt.mean(dim=(0, 2, 3))
    std = xt.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x if own else x.clone()).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))

    return Data(
        name,
        norm(xt),
        torch.tensor(np.asarray(y_train), dtype=torch.int64),
        norm(xv),
        torch.tensor(np.asarray(y_test), dtype=torch.int64),
        tuple(class_names),
        tuple(mean.tolist()),
        tuple(std.tolist()),
    )


@DATASETS.register("digits")
def load_digits() -> Data:
    """scikit-learn's 1,797 8x8 digits, a fixed stratified 80/20 split (seed 0)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    return from_pixels("digits", xtr, ytr, xte, yte, tuple(str(i) for i in range(10)))


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
    return from_pixels(
        name,
        arrays["x_train"][:, None] / np.float32(255),
        arrays["y_train"],
        arrays["x_test"][:, None] / np.float32(255),
        arrays["y_test"],
        class_names,
    )


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
        return x.astype(np.float32) / 255, y

    xtr, ytr = arrays(train)
    xte, yte = arrays(test)
    names = tuple(getattr(train, "classes", None) or [str(i) for i in range(int(ytr.max()) + 1)])
    return from_pixels(name, xtr, ytr, xte, yte, names)


for _name in TORCHVISION:
    DATASETS.register(_name)(functools.partial(load_torchvision, _name))


# ---- a user's own data -------------------------------------------------------------------------

MAX_SIDE = 128
# bounds on what a user's file may make this process hold, checked from headers before reading
MAX_VALUES = 250_000_000  # pixel values of one array (1 GB as float32): a 200 MB uint8 .npz fits
MAX_NPZ_BYTES = 2**30  # declared bytes of an .npz's four arrays together (what reading them costs)
MAX_RATIO = 200  # an archive member that inflates more than this many times its stored size is a bomb...
RATIO_FROM_BYTES = 16 * 2**20  # ...once it declares this much (small members of zeros compress well)
MAX_CLASSES = 1000
MAX_ZIP_ENTRIES = 200_000
MAX_ZIP_BYTES = 2 * 2**30  # declared uncompressed bytes of the images in a zip
MAX_IMAGE_BYTES = 80 * 2**20  # one image file in a zip (an uncompressed 4096 x 4096 RGBA is 64 MB)
MAX_IMAGE_SIDE = 4096  # an image's declared side in a zip, before decoding (it is resized to <= MAX_SIDE)
MAX_ZIP_PIXELS = 400_000_000  # declared pixels of all a zip's images: what decoding them costs in time
MAX_BAD_IMAGES = 10  # undecodable files after which a zip is refused without trying the rest
MAX_MAGNITUDE = 1e4  # float pixels beyond this are not an image's values


def names_some(items: list, most: int = 5) -> str:
    """A list for a message: at most ``most`` items, then how many more."""
    shown = ", ".join(str(i) for i in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def check_ratio(info: zipfile.ZipInfo, filename: str) -> None:
    """Refuse a member whose declared size is absurd for its stored size (a decompression bomb), before
    it is inflated: images and arrays of real data do not compress ``MAX_RATIO`` times."""
    if info.file_size > RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise DataError(
            f"{info.filename} in {filename} inflates from {info.compress_size:,} to {info.file_size:,} bytes "
            f"(more than {MAX_RATIO} times: a decompression bomb?); save the data uncompressed or with real content"
        )


def npz_headers(zf: zipfile.ZipFile, names: list[str], filename: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each array ``names`` of an .npz, read from the .npy headers: nothing large is
    read or decompressed; arrays too large or not numeric, members that inflate absurdly and labels
    that do not match their images are refused here."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    for name in names:
        with zf.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        if dtype.hasobject:
            raise DataError(f"{filename} holds pickled objects in {name}, which are not loaded for safety; save plain numeric arrays")
        values = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if values > MAX_VALUES:
            raise DataError(
                f"{name} in {filename} declares {values:,} values (shape {shape}); at most {MAX_VALUES:,} are loaded here"
            )
        check_ratio(zf.getinfo(f"{name}.npy"), filename)  # a size it may hold, stored absurdly small
        total += values * dtype.itemsize
        if total > MAX_NPZ_BYTES:
            raise DataError(
                f"the arrays of {filename} declare more than {MAX_NPZ_BYTES / 2**30:.0f} GB (MAX_NPZ_BYTES) by {name} "
                f"({dtype}, shape {shape}); save images as uint8 or float32 and labels as small integers"
            )
        out[name] = (tuple(shape), dtype)
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        if x in out and y in out and out[x][0][:1] and int(np.prod(out[y][0])) != out[x][0][0]:
            raise DataError(f"{y} in {filename} declares shape {out[y][0]} for {out[x][0][0]:,} images; give one label per image")
    return out


def to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """Images as N x H x W, N x H x W x C or N x C x H x W (uint8 or float) -> float (N, C, H, W) in [0, 1]."""
    if x.dtype == object:
        raise DataError(f"{what} holds Python objects; save plain numeric arrays (np.savez without objects)")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{what} has dtype {x.dtype}; images must be uint8 or float")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
            pass
        elif x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        else:
            raise DataError(f"{what} has shape {x.shape}: cannot tell the channel axis; use 1 or 3 channels")
    else:
        raise DataError(f"{what} has shape {x.shape}; images must be N x H x W, N x H x W x C or N x C x H x W")
    if x.shape[0] == 0:
        raise DataError(f"{what} is empty")
    if min(x.shape[2:]) < 4 or max(x.shape[2:]) > MAX_SIDE:
        raise DataError(f"{what} images are {x.shape[2]}x{x.shape[3]}; sides must be between 4 and {MAX_SIDE} pixels")
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise DataError(f"{what} integer pixels must lie in 0..255")
        out = x.astype(np.float32)
        out /= 255
        return out
    if not np.isfinite(x).all():
        raise DataError(f"{what} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if max(abs(lo), abs(hi)) > MAX_MAGNITUDE:
        raise DataError(f"{what} holds pixel values from {lo:.3g} to {hi:.3g}; give pixels in [0, 1] (float) or 0..255 (uint8)")
    x = x.astype(np.float32, copy=x.dtype != np.float32 or not x.flags.writeable)
    if lo < 0 or hi > 1:  # floats in another range: rescale to [0, 1] for display and init
        x -= lo
        x /= max(hi - lo, 1e-12)
    return x


def check_labels(y: np.ndarray, n: int, what: str, num_classes: int | None = None) -> np.ndarray:
    if y.dtype == object or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{what} must be integer class indices, found dtype {y.dtype}")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what} has shape {y.shape}; expected ({n},), one label per image")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{what} must be whole numbers (class indices 0..C-1)")
    y = y.astype(np.int64)
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(f"{what} names class {y.max()}; at most {MAX_CLASSES} classes (labels 0..{MAX_CLASSES - 1}) are supported")
    top = num_classes if num_classes is not None else None
    if y.min() < 0 or (top is not None and y.max() >= top):
        raise DataError(f"{what} out of range: found {y.min()}..{y.max()}, labels must be 0..{(top or y.max() + 1) - 1}")
    return y


def load_npz(path: Path) -> Data:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path.name} is not a readable .npz (not a zip archive); save it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as f:
            needed = ["x_train", "y_train", "x_test", "y_test"]
            missing = [k for k in needed if k not in f.files]
            if missing:
                raise DataError(
                    f"{path.name} lacks {', '.join(missing)}; an .npz must hold x_train, y_train, x_test, y_test"
                )
            npz_headers(f.zip, needed, path.name)
            arrays = {k: f[k] for k in needed}
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise DataError(f"{path.name} holds pickled objects, which are not loaded for safety; save plain numeric arrays") from None
        raise DataError(f"{path.name} is not a readable .npz ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path.name} is not a readable .npz ({e})") from None
    xtr = to_nchw(arrays["x_train"], "x_train")
    xte = to_nchw(arrays["x_test"], "x_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"x_train images are {xtr.shape[1:]} but x_test images are {xte.shape[1:]}; they must match")
    ytr = check_labels(arrays["y_train"], len(xtr), "y_train")
    num_classes = int(ytr.max()) + 1
    yte = check_labels(arrays["y_test"], len(xte), "y_test", num_classes)
    return user_data(path.stem, xtr, ytr, xte, yte, tuple(str(i) for i in range(num_classes)))


def user_data(name, xtr, ytr, xte, yte, class_names) -> Data:
    counts = np.bincount(ytr, minlength=len(class_names))
    if len(class_names) < 2:
        raise DataError("a dataset needs at least 2 classes")
    empty = [class_names[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise DataError(f"classes without training images: {names_some(empty)}; every class 0..C-1 needs images")
    if len(yte) == 0:
        raise DataError("the test split is empty")
    return from_pixels(name, xtr, ytr, xte, yte, class_names, own=True)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_image(raw: bytes, member: str) -> Image.Image:
    """An image of a zip opened lazily: its header read, its declared size checked, nothing decoded."""
    try:
        im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:  # Pillow's own guard, met while reading the header
        raise DataError(
            f"{member} declares more than {Image.MAX_IMAGE_PIXELS:,} pixels (a pixel bomb?); images may be at most {MAX_IMAGE_SIDE} on a side"
        ) from None
    if max(im.size) > MAX_IMAGE_SIDE:
        im.close()
        raise DataError(f"{member} declares {im.size[0]}x{im.size[1]} pixels; images may be at most {MAX_IMAGE_SIDE} on a side")
    return im


def decode_image(opened: Image.Image) -> Image.Image:
    """Decode an opened image to 8-bit L or RGB, reduced to at most ``MAX_SIDE`` on a side (what is kept
    of each image stays small); 16-bit greyscale scaled to 8 bits (a plain conversion would clip it to
    white)."""
    with opened as im:
        if im.mode.startswith("I"):  # 16- or 32-bit integer greyscale
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            out = Image.fromarray((a.clip(0, top) * (255.0 / top)).round().astype(np.uint8), mode="L")
        else:
            out = im.convert("RGB") if im.mode not in ("L", "1") else im.convert("L")
    if max(out.size) > MAX_SIDE:
        out.thumbnail((MAX_SIDE, MAX_SIDE))
    return out


def decode_images(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], filename: str) -> tuple[list[Image.Image], list[tuple[int, int]], list[str]]:
    """(decoded images, their declared sizes, names of undecodable files) of a zip's image entries. Each
    header is checked before its image is decoded, the declared pixels of all images are capped, and
    after ``MAX_BAD_IMAGES`` undecodable files the rest are not tried (a zip of junk fails fast)."""
    images, sizes, bad = [], [], []
    pixels = kept = 0
    for info in infos:
        try:
            opened = open_image(zf.read(info), info.filename)
        except DataError:
            raise
        except Exception:  # noqa: BLE001 - any unreadable file is reported by name
            bad.append(info.filename)
            if len(bad) >= MAX_BAD_IMAGES:
                break
            continue
        pixels += opened.size[0] * opened.size[1]
        if pixels > MAX_ZIP_PIXELS:
            opened.close()
            raise DataError(
                f"the images of {filename} declare more than {MAX_ZIP_PIXELS:,} pixels in all (MAX_ZIP_PIXELS) by "
                f"{info.filename}; give images of at most {MAX_SIDE}x{MAX_SIDE} pixels"
            )
        try:
            im = decode_image(opened)
        except (OSError, ValueError, SyntaxError):  # a header that reads and data that does not
            bad.append(info.filename)
            if len(bad) >= MAX_BAD_IMAGES:
                break
            continue
        kept += im.size[0] * im.size[1] * 3  # as RGB, the most a stacked image may take
        if kept > MAX_VALUES:
            raise DataError(
                f"the images of {filename} hold more than {MAX_VALUES:,} pixel values (MAX_VALUES) by {info.filename}; "
                "give fewer or smaller images"
            )
        sizes.append(opened.size)
        images.append(im)
    return images, sizes, bad


def split_per_class(y: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: per class, round(test_fraction n) images (at least 1) to the test set."""
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: max(1, round(test_fraction * len(idx)))]] = True
    return ~test, test


def load_zip(path: Path, test_fraction: float = 0.2) -> Data:
    """A zip of class folders (``cat/1.png``), optionally under ``train/`` and ``test/``. Entry counts,
    declared sizes and image dimensions are checked before anything is decompressed or decoded."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path.name} is not a readable zip ({e})") from None
    entries: list[tuple[str | None, str, zipfile.ZipInfo]] = []  # (split, class, member)
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise DataError(f"{path.name} has {len(infos):,} entries; at most {MAX_ZIP_ENTRIES:,} are read")
        for info in infos:
            member = info.filename
            parts = [p for p in member.split("/") if p and not p.startswith(".") and p != "__MACOSX"]
            if len(parts) < 2 or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES or member.startswith("__MACOSX"):
                continue
            split = parts[-3].lower() if len(parts) >= 3 and parts[-3].lower() in ("train", "test") else None
            entries.append((split, parts[-2], info))
        if not entries:
            raise DataError(f"{path.name} holds no images in class folders; lay it out as <class>/<image>.png")
        declared = sum(info.file_size for _, _, info in entries)
        if declared > MAX_ZIP_BYTES:
            raise DataError(f"{path.name} declares {declared / 2**30:.1f} GB of images; at most {MAX_ZIP_BYTES / 2**30:.0f} GB are read")
        for _, _, info in entries:
            if info.file_size > MAX_IMAGE_BYTES:
                raise DataError(f"{info.filename} declares {info.file_size:,} bytes; an image file may be at most {MAX_IMAGE_BYTES:,}")
            check_ratio(info, path.name)
        classes = tuple(sorted({c for _, c, _ in entries}))
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{path.name} has {len(classes):,} class folders; at most {MAX_CLASSES} are supported")
        images, sizes, bad = decode_images(zf, [info for _, _, info in entries], path.name)
    if bad:
        more = "" if len(bad) < MAX_BAD_IMAGES else f" (stopped after {MAX_BAD_IMAGES} of {len(entries):,} image entries)"
        raise DataError(f"{len(bad)} files are not readable images{more}: {names_some(bad, 3)}")
    size = max(set(sizes), key=sizes.count)
    if min(size) < 4 or max(size) > MAX_SIDE:
        raise DataError(f"images are {size[0]}x{size[1]}; sides must be between 4 and {MAX_SIDE} pixels")
    rgb = any(im.mode == "RGB" for im in images)
    arr = np.stack([
        np.asarray((im.convert("RGB") if rgb else im).resize(size), dtype=np.uint8) for im in images
    ])
    x = to_nchw(arr if rgb else arr[..., None], "images")
    y = np.array([classes.index(c) for _, c, _ in entries])
    split = np.array([s for s, _, _ in entries])
    if (split == "train").any() and (split == "test").any():
        tr, te = split == "train", split == "test"
    else:
        few = [classes[c] for c in range(len(classes)) if (y == c).sum() < 2]
        if few:
            raise DataError(
                f"classes with fewer than 2 images: {names_some(few)}; every class needs at least 2 (one to train "
                "on, one to test), or give train/ and test/ folders"
            )
        tr, te = split_per_class(y, test_fraction)
    return user_data(path.stem, x[tr], y[tr], x[te], y[te], classes)


@functools.lru_cache(maxsize=8)
def load_cached(name: str, mtime: float | None) -> Data:
    if mtime is not None:
        path = Path(name)
        return load_npz(path) if path.suffix.lower() == ".npz" else load_zip(path)
    return DATASETS.get(name)()


def load(name: str) -> Data:
    """Load a registered dataset by name, or a user's ``.npz`` / ``.zip`` by path (cached, on CPU)."""
    path = Path(name)
    if path.suffix.lower() in (".npz", ".zip"):
        if not path.exists():
            raise DataError(f"no file {path}; give a path to an existing .npz or .zip")
        return load_cached(str(path.resolve()), path.stat().st_mtime)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS.names())}, or a path to an .npz or .zip")
    return load_cached(name, None)


# id of an image tensor -> (a weak reference to it, its hash per dataset name); tensors compare by
# value, so they cannot be keys of a WeakKeyDictionary
_FINGERPRINTS: dict[int, tuple[weakref.ref, dict[str, str]]] = {}


def fingerprint(data: Data) -> str:
    """Hash of the training images and labels (the same on every device). Kept per image tensor, so
    the page that asks on every redraw (the cost estimate, the expert cache) hashes a dataset once."""
    return _memoised(data.name, data.x_train, data.y_train)


def test_fingerprint(data: Data) -> str:
    """Hash of the test images and labels, kept like ``fingerprint``: what is measured on the test set
    (the random baseline) depends on them, and an upload may keep its training images and change these."""
    return _memoised(data.name, data.x_test, data.y_test)


def _memoised(name: str, x: torch.Tensor, y: torch.Tensor) -> str:
    key = id(x)
    ref, known = _FINGERPRINTS.get(key, (None, {}))
    if ref is None or ref() is not x:
        known = {}
        _FINGERPRINTS[key] = (weakref.ref(x, lambda _: _FINGERPRINTS.pop(key, None)), known)
    if name not in known:
        known[name] = _hash(name, x, y)
    return known[name]


def _hash(name: str, x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(name.encode())
    for t in (x, y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
