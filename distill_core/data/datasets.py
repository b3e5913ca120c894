"""The type every dataset becomes: ``Data``, images ``(N, C, H, W)`` read normalised (``Images``:
bytes stay bytes), int64 labels, class names and the per-channel mean/std used to normalise (so pages
can show pixels again); ``from_pixels`` builds one from uint8 pixels or floats in [0, 1],
``fingerprint`` names its images.
"""
from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from distill_core.data.images import Images

SMALL_MAX = 5000  # training images up to which a dataset is "small": digits-sized, its own lighter defaults


class DataError(ValueError):
    """A dataset that cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Data:
    name: str
    x_train: Images  # (N, C, H, W), read as normalised float32 (a float32 tensor given here is wrapped)
    y_train: torch.Tensor  # (N,) int64
    x_test: Images
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_train", Images.of(self.x_train))
        object.__setattr__(self, "x_test", Images.of(self.x_test))

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

    def denormalise(self, x: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Normalised images back to pixels: clipped to [0, 1] for display, or not (``clip`` False:
        the pixels the normalisation was taken from, as ZCA's fit reads them)."""
        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        pixels = x.float() * std + mean
        return pixels.clamp(0, 1) if clip else pixels



STAT_CHUNK_VALUES = 2**22  # pixel values per slice of the train std: 32 MB as float64, whatever the dataset's size


def as_unit(x: np.ndarray, top: float | None) -> np.ndarray:
    """Pixels in [0, 1] as float32: bytes divided by ``top`` (float32 division, in place: one temporary
    of the slice's float32 size), floats as they are."""
    if top is None:
        return x
    unit = x.astype(np.float32)
    unit /= np.float32(top)
    return unit


def channel_mean(x: np.ndarray, top: float | None) -> torch.Tensor:
    """Per-channel float32 mean of images (N, C, H, W) in [0, 1] (``as_unit``). Floats: torch's one
    whole-tensor reduction, the float32 numbers it always gave (a float64 mean moved some datasets by
    one ulp). Bytes: exact, from integer sums (numpy's buffered int64 sum: no full-size temporary),
    rounded once to float32; on digits and Fashion-MNIST the float32 pixels' torch mean is that same
    number, so their values did not move when their pixels became bytes."""
    if top is None:
        return torch.from_numpy(x).mean(dim=(0, 2, 3))
    sums = x.sum(axis=(0, 2, 3), dtype=np.int64)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    return torch.from_numpy(sums / (count * float(top))).float()


def channel_std(x: np.ndarray, mean: np.ndarray, top: float | None = None) -> np.ndarray:
    """Per-channel unbiased std of images (N, C, H, W) (in [0, 1] through ``as_unit``) about ``mean``,
    the squared deviations summed in float64 a few images at a time: no temporary larger than a slice
    of ``STAT_CHUNK_VALUES`` values (0.6 GB of float32 images otherwise took a full-size float
    temporary), and the float64 sum rounds to the float32 std that one whole-tensor reduction gave."""
    n, c = x.shape[:2]
    per = max(1, STAT_CHUNK_VALUES // max(1, int(np.prod(x.shape[1:]))))
    count = n * int(np.prod(x.shape[2:]))
    squares = np.zeros(c)
    for i in range(0, n, per):
        d = as_unit(x[i : i + per], top) - mean.reshape(1, -1, 1, 1)  # float64, one slice
        squares += np.einsum("nchw,nchw->c", d, d)
    return np.sqrt(squares / (count - 1)) if count > 1 else np.full(c, np.nan)


def from_pixels(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...],
    own: bool = False,
    top: float = 255,
) -> Data:
    """Build ``Data`` from images (N, C, H, W): uint8 pixels 0..``top`` (kept as bytes, normalised on
    every read) or floats in [0, 1] (normalised once, kept as float32); normalised by train stats. A
    uint8 split beside a float one becomes float. ``own``: the arrays are this call's to keep or
    change: uint8 and float32 C-contiguous ones are kept without a copy (float32 normalised in place);
    the statistics never take a full-size temporary."""
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    as_bytes = x_train.dtype == np.uint8 and x_test.dtype == np.uint8
    scale = top if as_bytes else None

    def kept(x: np.ndarray) -> np.ndarray:
        dtype = np.uint8 if as_bytes else np.float32
        if own and x.dtype == dtype and x.flags.c_contiguous and x.flags.writeable:
            return x
        if not as_bytes and x.dtype == np.uint8:
            return as_unit(np.ascontiguousarray(x), top)
        return np.array(x, dtype=dtype, order="C")  # a copy of the caller's pixels, ours to change

    xt, xv = kept(x_train), kept(x_test)
    mean = channel_mean(xt, scale)
    std = torch.tensor(channel_std(xt, mean.double().numpy(), scale), dtype=torch.float32).clamp_min(1e-6)

    def images(x: np.ndarray) -> Images:
        if as_bytes:
            return Images(torch.from_numpy(x), top, mean, std)
        return Images(torch.from_numpy(x).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1)))

    return Data(
        name,
        images(xt),
        torch.tensor(np.asarray(y_train), dtype=torch.int64),
        images(xv),
        torch.tensor(np.asarray(y_test), dtype=torch.int64),
        tuple(class_names),
        tuple(mean.tolist()),
        tuple(std.tolist()),
    )



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


def _memoised(name: str, x: Images, y: torch.Tensor) -> str:
    key = id(x)
    ref, known = _FINGERPRINTS.get(key, (None, {}))
    if ref is None or ref() is not x:
        known = {}
        _FINGERPRINTS[key] = (weakref.ref(x, lambda _: _FINGERPRINTS.pop(key, None)), known)
    if name not in known:
        known[name] = _hash(name, x, y)
    return known[name]


def _hash(name: str, x: Images, y: torch.Tensor) -> str:
    """sha256 of the name, then of each tensor's shape and normalised float32 values: the images a
    slice at a time (the digest of the whole set's bytes, which the hash of a float32 copy was, so
    caches named before bytes were kept still match), each buffer hashed without a bytes copy."""
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(str(tuple(x.shape)).encode())
    for part in x.slices():
        h.update(part.detach().cpu().contiguous().numpy())
    h.update(str(tuple(y.shape)).encode())
    h.update(y.detach().cpu().contiguous().numpy())
    return h.hexdigest()
