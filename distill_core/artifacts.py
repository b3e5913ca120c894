"""Files a run produces: the synthetic set (safetensors, npz) and a PNG grid of its images."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from distill_core.synthetic import Synthetic


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (any float tensor) as uint8 0..255, on the CPU."""
    return (pixels.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def save_synthetic(path: Path, syn: Synthetic, pixels: torch.Tensor, meta: dict[str, Any]) -> None:
    """images (as networks see them: normalised, or ZCA-whitened where the run whitened), pixels ([0, 1]),
    labels, lr where learned, and the coreset weights where the set has them (``syn_weights="coreset"``
    evaluates with them)."""
    tensors = {
        "images": syn.images.detach().float().cpu().contiguous(),
        "pixels": pixels.detach().float().cpu().contiguous(),
        "labels": syn.labels.detach().cpu().contiguous(),
    }
    if syn.lr is not None:
        tensors["lr"] = torch.tensor([float(syn.lr)])
    if syn.weights is not None:
        tensors["weights"] = syn.weights.detach().float().cpu().contiguous()
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})


def load_synthetic(path: Path) -> tuple[Synthetic, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no file {path}; give the synthetic.safetensors a run wrote")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except Exception as e:  # noqa: BLE001 - any unreadable file gets one message
        raise ValueError(f"{path.name} is not a synthetic set saved by this tool ({e})") from None
    missing = [k for k in ("images", "labels") if k not in tensors]
    if missing:
        raise ValueError(f"{path.name} lacks {', '.join(missing)}")
    lr = float(tensors["lr"][0]) if "lr" in tensors else None
    weights = tensors.get("weights")
    if weights is not None and weights.shape != tensors["labels"].shape[:1]:
        raise ValueError(f"{path.name} has {weights.shape[0]} weights for {tensors['labels'].shape[0]} images")
    return Synthetic(tensors["images"], tensors["labels"], lr, weights), meta


def npz_bytes(syn: Synthetic, pixels: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    arrays = {"images": syn.images.detach().cpu().numpy(), "pixels": pixels.cpu().numpy(), "labels": syn.labels.cpu().numpy()}
    if syn.lr is not None:
        arrays["lr"] = np.array([syn.lr], dtype=np.float32)
    if syn.weights is not None:
        arrays["weights"] = syn.weights.detach().float().cpu().numpy()
    np.savez(buf, **arrays)
    return buf.getvalue()


def grid_image(pixels: torch.Tensor, per_row: int, cell: int = 48, pad: int = 2, max_cols: int = 20) -> Image.Image:
    """Pixels (n, C, H, W) in [0, 1], class-major with ``per_row`` images per class, as one image."""
    n, c, h, w = pixels.shape
    rows = max(1, n // per_row)
    cols = min(per_row, max_cols)
    scale = max(1, cell // max(h, w))
    hh, ww = h * scale, w * scale
    canvas = np.ones((rows * (hh + pad) + pad, cols * (ww + pad) + pad, 3), dtype=np.uint8) * 255
    arr = to_uint8(pixels)
    arr = arr.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()
    if c == 1:
        arr = np.repeat(arr, 3, axis=3)
    for r in range(rows):
        for k in range(cols):
            i = r * per_row + k
            if i < n:
                y, x = pad + r * (hh + pad), pad + k * (ww + pad)
                canvas[y : y + hh, x : x + ww] = arr[i][..., :3]
    return Image.fromarray(canvas)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
