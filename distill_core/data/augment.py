"""Differentiable siamese augmentation (DSA), batched.

One family per call, chosen uniformly from the strategy: color (brightness, saturation,
contrast), crop (translate), cutout, flip, scale, rotate. Geometric families are one
``affine_grid``/``grid_sample`` so gradients reach the pixels. Parameters are drawn from an
explicit CPU ``torch.Generator`` into an ``AugParams``; applying the same ``AugParams`` to a real and a
synthetic batch is the siamese use (sample ``i`` of each gets draw ``i``, or the draw named by ``index``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
NO_FLIP_STRATEGY = "color_crop_cutout_scale_rotate"  # the 8x8 digits only (defaults.NO_FLIP says why)

# bump when a family's draw changes: experts and baselines cached under other draws are not reused
# (2: crop shifts uniform in whole pixels; 3: cutout offsets over the reference's positions)
DRAWS = 3

CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5
SCALE_RATIO = 1.2
ROTATE_DEG = 15.0


@dataclass(frozen=True)
class AugParams:
    family: str
    values: dict[str, torch.Tensor]  # each (n, ...) on CPU or the batch's device

    def select(self, index: torch.Tensor | None, n: int) -> dict[str, torch.Tensor]:
        if index is None:
            if n > len(next(iter(self.values.values()))):
                raise ValueError(f"these augmentation parameters were drawn for fewer than {n} images")
            return {k: v[:n] for k, v in self.values.items()}
        return {k: v[index] for k, v in self.values.items()}


def parse_strategy(strategy: str) -> tuple[str, ...]:
    families = tuple(f for f in strategy.split("_") if f)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    return families


def crop_shift(u: torch.Tensor, side: int) -> torch.Tensor:
    """A crop's shift along a side of ``side`` pixels from ``u`` uniform in [0, 1), as ``affine_grid``
    takes it (in [-1, 1], a pixel is 2 / side): a whole number of pixels uniform in [-s, s],
    s = int(side CROP_RATIO + 0.5), as the reference's ``rand_crop`` draws it (``torch.randint(-s, s + 1)``,
    DatasetCondensation utils.py:600-604, mtt-distillation utils.py:626-630): at 28 pixels -4..4, each 1/9."""
    s = int(side * CROP_RATIO + 0.5)
    pixels = (u * (2 * s + 1)).floor().clamp_max(2 * s) - s
    return pixels * 2 / side


def cutout_size(side: int) -> int:
    """A cutout's rows (or columns) along a side of ``side`` pixels, as the reference sizes it."""
    return int(side * CUTOUT_RATIO + 0.5)


def cutout_start(u: torch.Tensor, side: int) -> torch.Tensor:
    """The first masked row (or column) of a cutout of ``int(side CUTOUT_RATIO + 0.5)`` pixels from ``u``
    uniform in [0, 1): its centre offset uniform over the reference's side + 1 - size % 2 positions
    (``torch.randint(0, side + (1 - size % 2))``, DatasetCondensation utils.py / mtt-distillation
    utils.py:646-662), minus size // 2; the mask is its rectangle's part inside the image."""
    size = cutout_size(side)
    positions = side + 1 - size % 2
    return (u * positions).floor().clamp_max(positions - 1) - size // 2


def cutout_mask(x: torch.Tensor, start_y: torch.Tensor, start_x: torch.Tensor) -> torch.Tensor:
    """(n, H, W) True inside each image's cutout, which begins at rows ``start_y`` and columns ``start_x`` (n,)."""
    h, w = x.shape[2:]
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    sy, sx = start_y.view(-1, 1, 1), start_x.view(-1, 1, 1)
    size_h, size_w = cutout_size(h), cutout_size(w)
    return (ys >= sy) & (ys < sy + size_h) & (xs >= sx) & (xs < sx + size_w)


def draw(strategy: str, n: int, generator: torch.Generator) -> AugParams | None:
    """Draw one family and its parameters for ``n`` images; ``None`` when the strategy is empty."""
    families = parse_strategy(strategy)
    if not families:
        return None
    family = families[int(torch.randint(len(families), (1,), generator=generator))]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if family == "color":
        values = {"brightness": u(n) - 0.5, "saturation": u(n) * 2, "contrast": u(n) + 0.5}
    elif family == "crop":
        values = {"shift": u(n, 2)}  # uniform in [0, 1): a whole-pixel shift once the side is known (crop_shift)
    elif family == "cutout":
        values = {"centre": u(n, 2)}
    elif family == "flip":
        values = {"flip": u(n) < 0.5}
    elif family == "scale":
        values = {"scale": (u(n, 2) * (SCALE_RATIO - 1 / SCALE_RATIO)) + 1 / SCALE_RATIO}
    else:
        values = {"angle": (u(n) * 2 - 1) * math.radians(ROTATE_DEG)}
    return AugParams(family, values)


def apply(x: torch.Tensor, params: AugParams | None, index: torch.Tensor | None = None) -> torch.Tensor:
    """Apply drawn parameters to ``x`` (n, C, H, W); ``index`` (n,) picks which draw each image gets."""
    if params is None:
        return x
    v = {k: t.to(x.device, non_blocking=True) for k, t in params.select(index, x.shape[0]).items()}
    shape = (-1, 1, 1, 1)
    if params.family == "color":
        x = x + v["brightness"].view(shape)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * v["saturation"].view(shape) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * v["contrast"].view(shape) + mean
    if params.family == "cutout":
        h, w = x.shape[2:]
        inside = cutout_mask(x, cutout_start(v["centre"][:, 0], h), cutout_start(v["centre"][:, 1], w))
        return x * (~inside).unsqueeze(1).to(x.dtype)
    if params.family == "flip":
        return torch.where(v["flip"].view(shape), x.flip(3), x)
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    if params.family == "crop":
        theta[:, 0, 0] = 1
        theta[:, 1, 1] = 1
        h, w = x.shape[2:]
        theta[:, 0, 2], theta[:, 1, 2] = crop_shift(v["shift"][:, 0], w), crop_shift(v["shift"][:, 1], h)
    elif params.family == "scale":
        theta[:, 0, 0] = v["scale"][:, 0]
        theta[:, 1, 1] = v["scale"][:, 1]
    else:
        a = v["angle"]
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, strategy: str, generator: torch.Generator) -> torch.Tensor:
    """Independent draw for one batch (as MTT/DATM and evaluation use it)."""
    return apply(x, draw(strategy, x.shape[0], generator))


def siamese(strategy: str, generator: torch.Generator, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One transform (one family, one parameter set) drawn once and applied to every image of every
    batch: the reference's siamese ``DiffAugment(x, strategy, seed, param)``, where a seed sets every
    random parameter to its first draw. DC/DSA and DM call it per class with the class's real batch
    and its synthetic images."""
    params = draw(strategy, 1, generator)
    return tuple(apply(x, params, torch.zeros(x.shape[0], dtype=torch.long)) for x in batches)


# A draw packed per image as PACKED floats, so that images of different draws (each network of a group
# its own family) go through one ``apply_packed``: brightness, saturation, contrast; the affine map's
# six entries (crop, flip, scale, rotate); the cutout's first row and column, and whether it applies.
# The families a draw did not choose hold their identity values.
PACKED = 12
IDENTITY = (0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)


def pack(params: AugParams | None, n: int, side: tuple[int, int]) -> torch.Tensor:
    """``params`` for ``n`` images of ``side`` (h, w) as an (n, PACKED) float32 tensor on the CPU."""
    out = torch.tensor(IDENTITY).repeat(n, 1)
    if params is None:
        return out
    v = params.select(None, n)
    h, w = side
    if params.family == "color":
        out[:, 0], out[:, 1], out[:, 2] = v["brightness"], v["saturation"], v["contrast"]
    elif params.family == "cutout":
        out[:, 9], out[:, 10], out[:, 11] = cutout_start(v["centre"][:, 0], h), cutout_start(v["centre"][:, 1], w), 1.0
    elif params.family == "flip":
        out[:, 3] = torch.where(v["flip"], -1.0, 1.0)
    elif params.family == "crop":
        out[:, 5], out[:, 8] = crop_shift(v["shift"][:, 0], w), crop_shift(v["shift"][:, 1], h)
    elif params.family == "scale":
        out[:, 3], out[:, 7] = v["scale"][:, 0], v["scale"][:, 1]
    else:
        a = v["angle"]
        out[:, 3], out[:, 4], out[:, 6], out[:, 7] = torch.cos(a), torch.sin(-a), torch.sin(a), torch.cos(a)
    return out


def apply_packed(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """``x`` (n, C, H, W) with image i transformed by ``packed[i]`` (n, PACKED): the same images as
    ``apply`` gives for each image's own draw, to float rounding (a flip becomes a mirrored sampling
    grid), in one pass of whole-tensor operations whatever the families, with no host sync."""
    shape = (-1, 1, 1, 1)
    x = x + packed[:, 0].view(shape)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * packed[:, 1].view(shape) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * packed[:, 2].view(shape) + mean
    inside = cutout_mask(x, packed[:, 9], packed[:, 10]) & (packed[:, 11].view(-1, 1, 1) > 0)
    x = x * (~inside).unsqueeze(1).to(x.dtype)
    grid = F.affine_grid(packed[:, 3:9].view(-1, 2, 3).to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
