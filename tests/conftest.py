import numpy as np
import pytest
import torch

from distill_core.data import Data, from_pixels


def tiny_data(classes: int = 3, per_class: int = 12, side: int = 8, channels: int = 1, seed: int = 0) -> Data:
    """Separable toy images: class c has a bright block in its own column band."""
    rng = np.random.default_rng(seed)

    def make(n):
        x = rng.uniform(0, 0.3, size=(n * classes, channels, side, side)).astype(np.float32)
        y = np.repeat(np.arange(classes), n)
        band = side // classes
        for i, c in enumerate(y):
            x[i, :, :, c * band : (c + 1) * band] += 0.6
        return x.clip(0, 1), y

    xtr, ytr = make(per_class)
    xte, yte = make(per_class // 2)
    return from_pixels("tiny", xtr, ytr, xte, yte, tuple(f"c{i}" for i in range(classes)))


@pytest.fixture
def tiny() -> Data:
    return tiny_data()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
