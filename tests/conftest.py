import os
import time

import numpy as np
import pytest
import torch

from distill_core.data.datasets import Data, from_pixels

# the app's runs execute in threads of the test process here (fast to start); tests/test_workers.py
# covers the worker processes the app uses by default
os.environ.setdefault("DISTILL_WORKERS", "threads")


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


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A runs directory of the test's own and fresh shared services, so pages under AppTest never touch
    ./runs; at the end every run they started is stopped and waited for."""
    from ui import services

    monkeypatch.setenv("DISTILL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DISTILL_AUTO_REFERENCE", "0")  # the full-data reference has its own test
    services.services.clear()
    yield tmp_path / "runs"
    s = services.services()
    for run in s.manager.runs():
        run.stop()
    for run in s.manager.runs():
        wait_done(run.id)
    s.references.join(120)  # no torch work may be left in a thread when the process exits
    services.services.clear()


def stored_run(store, run_id: str, dataset: str, method: str, ipc: int, final: float, std: float, tier: str = "quick"):
    """A finished run of ``dataset``/``method``/``ipc`` in ``store``, its final accuracy ``final`` ± ``std``
    over 3 networks, beside a random baseline of 50%."""
    from distill_core.config import RunConfig
    from distill_core.nets.networks import NetConfig
    from distill_core.runs.run import Snapshot

    config = RunConfig(dataset=dataset, method=method, ipc=ipc, tier=tier, net=NetConfig()).to_dict()
    snap = Snapshot(run_id, config, status="done", iteration=5, iterations=5,
                    final={"mean": final, "std": std, "n": 3}, baseline={"mean": 0.5, "std": 0.01, "n": 3})
    store.add(snap)
    store.save(snap, tensors=False)


def wait_done(run_id: str, timeout: float = 120) -> None:
    """Wait for a run of the app's shared services to end."""
    from ui.services import services

    run = services().manager.get(run_id)
    deadline = time.time() + timeout
    while not run.snapshot().done and time.time() < deadline:
        time.sleep(0.1)
    assert run.snapshot().done, run.snapshot()
