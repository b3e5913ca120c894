"""ZCA whitening of an image set, as MTT's and DATM's reference code computes it for CIFAR.

The authors (GeorgeCazenavette/mtt-distillation ``utils.py`` ``get_dataset``; NUS-HPC-AI-Lab/DATM
``utils/utils_baseline.py``, the same code) load the images with ``ToTensor()`` alone when ``--zca`` is
given (pixels in [0, 1], no mean/std normalisation), fit ``kornia.enhance.ZCAWhitening(eps=0.1,
compute_inv=True)`` (kornia 0.6.3, their environment files) on every training image, and apply it to
the training and the test images; ``distill.py`` saves and shows the synthetic images through its
``inverse_transform``. Kornia's fit (``zca_mean``): the images flattened to (N, D) in C, H, W order,
their mean ``mu``, the unbiased covariance ``Σ = Xcᵀ Xc / (N - 1)``, its SVD ``U S Uᵀ``, and

    T = U diag(1 / sqrt(S + eps)) Uᵀ        T⁻¹ = U diag(sqrt(S + eps)) Uᵀ;

whitening is ``(x - mu) T``, the inverse ``y T⁻¹ + mu`` (kornia writes it ``(y + mu T) T⁻¹``: the same).

Here the same transforms, computed so that CIFAR-sized data (50,000 x 3,072) takes no full-size
temporary: the images are read a slice of ``CHUNK`` at a time (only by indexing, ``x[a:b]``, which an
``Images`` store supports too), their mean and covariance summed in float64 (each slice's product in
float32 on the data's device, its centred values rounded from float64), and the covariance, symmetric
and positive semi-definite, decomposed by ``torch.linalg.eigh`` in float64 (its eigendecomposition is
its SVD). The transforms are kept in float32, as kornia keeps them, and applied a slice at a time.

Against kornia on 20,000 32x32 patches of scikit-learn's two sample photographs, pixels in [0, 1]
(whitened values up to 2.4): kornia 0.9.0, which decomposes in float64, and this module differ by at
most 9.3e-6 on the whitened training images, 1.1e-5 on the test images, 6.4e-6 on the inverse; both
lie within 1.2e-5 of an exact float64 whitening. Kornia 0.6.3, the authors' version, decomposes in
float32 and lies up to 1.1e-2 from the float64 whitening, so it differs from this module by that
much (its own rounding). ``tests/test_zca.py`` cannot import kornia: it checks the mathematics and an
independent float64 formula instead.
"""
from __future__ import annotations

import hashlib
import math
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distill_core.data import datasets
from distill_core.data.datasets import Data, DataError

EPS = 0.1  # the authors' ZCAWhitening(eps=0.1)
CHUNK = 2048  # images per slice of the fit and of the transforms (25 MB of float32 CIFAR images)
# the most features (C * H * W) whitened: 64x64 colour images (Tiny ImageNet, which DATM whitens); the
# covariance then takes 1.2 GB in float64, and its decomposition minutes on a laptop's CPU
MAX_FEATURES = 3 * 64 * 64


@dataclass(frozen=True, eq=False)
class Whitening:
    """A fitted ZCA whitening of images (n, C, H, W) given as pixels (``Data.x_train`` un-normalised)."""

    mean: torch.Tensor  # (D,) float32, the training images' mean, pixels
    transform: torch.Tensor  # (D, D) float32, T (symmetric)
    inverse: torch.Tensor  # (D, D) float32, T⁻¹
    eps: float
    shape: tuple[int, int, int]  # (C, H, W)
    count: int  # training images it was fitted on
    _on: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict, compare=False, repr=False)

    def _matrices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on:
            self._on[key] = (self.mean.to(device), self.transform.to(device), self.inverse.to(device))
        return self._on[key]

    def whiten(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) pixels -> (n, C, H, W) whitened, float32: ``(x - mu) T``."""
        mean, t, _ = self._matrices(pixels.device)
        return self._affine(pixels, lambda flat: (flat - mean) @ t)

    def unwhiten(self, whitened: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) whitened -> pixels (not clipped), float32: ``y T⁻¹ + mu``."""
        mean, _, inv = self._matrices(whitened.device)
        return self._affine(whitened, lambda flat: flat @ inv + mean)

    def _affine(self, x: torch.Tensor, f) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the whitening was fitted on images {self.shape}, not {tuple(x.shape[1:])}")
        n = x.shape[0]
        flat = x.detach().reshape(n, -1).float()
        # autocast (bf16 runs) must not round the transform: the authors' is float32
        with torch.autocast(x.device.type, enabled=False):
            out = torch.cat([f(flat[i : i + CHUNK]) for i in range(0, n, CHUNK)]) if n else flat.clone()
        return out.reshape(x.shape)

    def describe(self) -> dict[str, object]:
        """What a run records of it (results.json): enough to say which whitening its numbers used."""
        return {"kind": "zca", "eps": self.eps, "fitted_on": f"{self.count} training images as pixels in [0, 1]",
                "features": math.prod(self.shape)}


def whitenable(shape: tuple[int, ...]) -> bool:
    """Images of ``shape`` (C, H, W) are small enough to whiten (``MAX_FEATURES``)."""
    return math.prod(shape) <= MAX_FEATURES


def check_features(shape: tuple[int, ...]) -> None:
    d = math.prod(shape)
    if d > MAX_FEATURES:
        raise DataError(
            f"ZCA whitening of {shape[0]}x{shape[1]}x{shape[2]} images ({d} values each) would need a {d} x {d} covariance; "
            f"it is offered up to {MAX_FEATURES} values per image (64x64 colour). Turn ZCA off for this dataset."
        )


def fit(data: Data, eps: float = EPS) -> Whitening:
    """The ZCA whitening of ``data``'s training images as pixels (kornia's ``ZCAWhitening(eps).fit``)."""
    if not eps > 0:
        raise ValueError(f"the ZCA eps must be positive, got {eps}")
    x = data.x_train
    n, shape = x.shape[0], tuple(x.shape[1:])
    check_features(shape)
    if n < 2:
        raise DataError("ZCA whitening needs at least two training images")
    d = math.prod(shape)
    device = x.device
    # float64 sums where the device has float64 (MPS has none: there the sums are on the CPU)
    acc = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    with torch.autocast(device.type, enabled=False):
        mean = torch.zeros(d, dtype=torch.float64, device=acc)
        for i in range(0, n, CHUNK):
            mean += data.denormalise(x[i : i + CHUNK], clip=False).reshape(-1, d).to(acc, torch.float64).sum(0)
        mean /= n
        mean_here = mean.to(device)
        cov = torch.zeros(d, d, dtype=torch.float64, device=acc)
        for i in range(0, n, CHUNK):
            centred = (data.denormalise(x[i : i + CHUNK], clip=False).reshape(-1, d).double() - mean_here).float()
            cov += (centred.T @ centred).to(acc, torch.float64)
        cov /= n - 1
        s, u = torch.linalg.eigh(cov)
        s = s.clamp_min(0)  # rounding can leave the smallest eigenvalues a hair below zero; SVD's are >= 0
        transform = (u * torch.rsqrt(s + eps)) @ u.T
        inverse = (u * torch.sqrt(s + eps)) @ u.T
    return Whitening(mean.float().cpu(), transform.float().cpu(), inverse.float().cpu(), float(eps), shape, n)  # type: ignore[arg-type]


def whitened(data: Data, whitening: Whitening) -> Data:
    """``data`` with its training and test images whitened (plain float32 tensors on its device); the
    labels, class names and the normalisation's mean and std as they were (the whitened images are no
    longer normalised by them: show them through ``display``). Its ``fingerprint`` is that of ``data``
    and the whitening's eps, not a hash of the whitened values (which differ by rounding between devices)."""

    def convert(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = torch.empty((n, *whitening.shape), dtype=torch.float32, device=x.device)
        for i in range(0, n, CHUNK):
            out[i : i + CHUNK] = whitening.whiten(data.denormalise(x[i : i + CHUNK], clip=False))
        return out

    out = Data(data.name, convert(data.x_train), data.y_train, convert(data.x_test), data.y_test, data.class_names,
               data.mean, data.std)
    tag = f"zca eps={whitening.eps!r}"
    ids = (_derived(tag, datasets.fingerprint(data)), _derived(tag, datasets.test_fingerprint(data)))
    key = id(out.x_train)
    _WHITENED[key] = (weakref.ref(out.x_train, lambda _: _WHITENED.pop(key, None)), whitening, *ids)
    return out


# id of a whitened training-image tensor -> (a weak reference to it, its whitening, the train and test
# fingerprints of the whitened set)
_WHITENED: dict[int, tuple[weakref.ref, Whitening, str, str]] = {}


def _derived(tag: str, fp: str) -> str:
    return hashlib.sha256(f"{tag}:{fp}".encode()).hexdigest()


def _entry(data: Data) -> tuple[weakref.ref, Whitening, str, str] | None:
    entry = _WHITENED.get(id(data.x_train))
    return entry if entry is not None and entry[0]() is data.x_train else None


def whitening_of(data: Data) -> Whitening | None:
    """The whitening ``whitened`` applied to ``data``; None for a set it did not make."""
    entry = _entry(data)
    return None if entry is None else entry[1]


def fingerprint(data: Data) -> str:
    """``datasets.fingerprint``, except for a set ``whitened`` made: a hash of its source's fingerprint
    and the whitening (so experts and baselines on whitened images never share an entry with plain ones,
    and find theirs again on any device)."""
    entry = _entry(data)
    return datasets.fingerprint(data) if entry is None else entry[2]


def test_fingerprint(data: Data) -> str:
    """``datasets.test_fingerprint``, likewise."""
    entry = _entry(data)
    return datasets.test_fingerprint(data) if entry is None else entry[3]


def fit_cached(data: Data, eps: float = EPS, cache_dir: Path | None = None) -> Whitening:
    """``fit``, read from ``cache_dir``/zca where an earlier fit of the same training images and eps
    was saved (the decomposition takes a minute for CIFAR on a laptop's CPU), and saved there after."""
    if cache_dir is None:
        return fit(data, eps)
    check_features(tuple(data.x_train.shape[1:]))
    path = Path(cache_dir) / "zca" / f"{data.name}-{datasets.fingerprint(data)[:20]}-eps{eps!r}.safetensors"
    if path.exists():
        try:
            t = load_file(str(path))
            shape = tuple(int(v) for v in t["shape"].tolist())
            return Whitening(t["mean"], t["transform"], t["inverse"], float(eps), shape, int(t["count"]))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - an unreadable file is fitted again and replaced
            pass
    w = fit(data, eps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    save_file({"mean": w.mean, "transform": w.transform, "inverse": w.inverse, "shape": torch.tensor(w.shape),
               "count": torch.tensor(w.count)}, str(tmp))
    os.replace(tmp, path)
    return w


# the last set ``whiten`` made, per source tensor and eps: the app's runs on one dataset share it; it
# goes with its source (a run's copy on a GPU), so no whitened copy outlives the images it came from
_LAST: list[tuple[weakref.ref, float, Whitening, Data]] = []


def _forget(ref: weakref.ref) -> None:
    if _LAST and _LAST[0][0] is ref:
        _LAST.clear()


def whiten(data: Data, eps: float = EPS, cache_dir: Path | None = None) -> tuple[Data, Whitening]:
    """``data`` whitened (``whitened``) by the fit of its training images (``fit_cached``), and the fit;
    the last one made is kept while its source lives, so a second run on the same data does not redo it."""
    if _LAST:
        ref, e, w, out = _LAST[0]
        if ref() is data.x_train and e == eps:
            return out, w
    w = fit_cached(data, eps, cache_dir)
    out = whitened(data, w)
    _LAST[:] = [(weakref.ref(data.x_train, _forget), eps, w, out)]
    return out, w


def display(data: Data, whitening: Whitening | None, images: torch.Tensor) -> torch.Tensor:
    """Images as networks see them (``data``'s normalised ones, or whitened by ``whitening``) as pixels
    in [0, 1] for display and export: the inverse of what was applied, clipped (the authors show theirs
    through ``inverse_transform`` too)."""
    if whitening is None:
        return data.denormalise(images)
    return whitening.unwhiten(images).clamp(0, 1)
