"""The type every dataset becomes: ``Data``, normalised float images ``(N, C, H, W)``, int64 labels,
class names and the per-channel mean/std used to normalise (so pages can show pixels again);
``from_pixels`` builds one from pixels in [0, 1], ``fingerprint`` names its images.
"""
from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

import numpy as np
import torch

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



STAT_CHUNK_VALUES = 2**22  # pixel values per slice of the train statistics: 32 MB as float64, whatever the dataset's size


def channel_std(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per-channel unbiased std of images (N, C, H, W) about ``mean``, the squared deviations summed in
    float64 a few images at a time: no temporary larger than a slice of ``STAT_CHUNK_VALUES`` values
    (0.6 GB of float32 images otherwise took a full-size float temporary), and the float64 sum rounds to
    the float32 std that one whole-tensor reduction gave."""
    n, c = x.shape[:2]
    per = max(1, STAT_CHUNK_VALUES // max(1, int(np.prod(x.shape[1:]))))
    count = n * int(np.prod(x.shape[2:]))
    squares = np.zeros(c)
    for i in range(0, n, per):
        d = x[i : i + per] - mean.reshape(1, -1, 1, 1)  # float64, one slice
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
) -> Data:
    """Build ``Data`` from float pixels in [0, 1] of shape (N, C, H, W); normalise by train stats.
    ``own``: the arrays are this call's to change: float32 C-contiguous ones are normalised in place
    and kept (no second copy of the data); the statistics never take a full-size temporary."""

    def as_float32(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if own and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable:
            return x
        return np.array(x, dtype=np.float32, order="C")  # a copy of the caller's pixels, ours to change

    xt, xv = as_float32(x_train), as_float32(x_test)
    # torch's mean reduces without a temporary and gives the float32 numbers it always gave (its
    # float32 sum is not exactly float64's rounded: a float64 mean moved some datasets by one ulp)
    mean = torch.from_numpy(xt).mean(dim=(0, 2, 3))
    std = torch.tensor(channel_std(xt, mean.double().numpy()), dtype=torch.float32).clamp_min(1e-6)

    def norm(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))

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
        h.update(t.detach().cpu().contiguous().numpy())  # the array's own buffer: no bytes copy of the data
    return h.hexdigest()
