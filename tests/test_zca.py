"""ZCA whitening (``data.zca``) as MTT's and DATM's authors compute it with kornia, and the runs that use it.

Kornia cannot be imported here (the project does not depend on it). Against kornia itself, outside the
suite, on 20,000 32x32 patches of scikit-learn's two sample photographs as pixels in [0, 1]: kornia
0.9.0 (which decomposes in float64) and this module agree to 9.3e-6 on the whitened training images,
1.1e-5 on the test images and 6.4e-6 on the inverse; kornia run in float64 and this module to 6.9e-6;
both lie within 1.2e-5 of an exact float64 whitening. Kornia 0.6.3, the authors' version, decomposes
in float32 and lies 1.1e-2 from the float64 whitening (whitened values reach 2.4), so it differs from
this module by that much too. These tests check the same mathematics without it: an independent
float64 formula (numpy's covariance and SVD), the whitened covariance, the inverse, slices only.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_data
from safetensors.torch import load_file

from distill_core import data as data_mod
from distill_core import tiers
from distill_core.config import EvalConfig, RunConfig, recount_overrides, resolve
from distill_core.data import zca
from distill_core.data.datasets import Data, fingerprint, from_pixels
from distill_core.evaluation import baselines
from distill_core.methods import experts
from distill_core.nets.networks import NetConfig


def correlated(n: int = 400, side: int = 4, seed: int = 0) -> np.ndarray:
    """Pixels (n, 3, side, side) in [0, 1] with strongly correlated neighbours and channels, as photographs."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(n, 1, side, side))
    smooth = (base + np.roll(base, 1, 2) + np.roll(base, 1, 3)) / 3
    noise = rng.uniform(size=(n, 2, side, side))
    x = np.concatenate([smooth, 0.8 * smooth + 0.05 * noise[:, :1] + 0.1, 0.5 * smooth + 0.2 * noise[:, 1:]], axis=1)
    return x.astype(np.float32).clip(0, 1)


@pytest.fixture(scope="module")
def photos() -> Data:
    x = correlated()
    y = np.arange(len(x)) % 4
    return from_pixels("photos", x, y, correlated(100, seed=1), y[:100], ("a", "b", "c", "d"))


def reference(pixels: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kornia's zca_mean in float64, written independently: mean, T = U (S + eps)^-1/2 Uᵀ, T⁻¹."""
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    mu = flat.mean(0)
    u, s, _ = np.linalg.svd(np.cov(flat, rowvar=False))  # unbiased: divides by N - 1, as kornia's
    return mu, (u / np.sqrt(s + eps)) @ u.T, (u * np.sqrt(s + eps)) @ u.T


def test_fit_equals_the_float64_formula_and_whitens(photos):
    px = photos.denormalise(photos.x_train[:], clip=False).numpy()
    mu, t, t_inv = reference(px, zca.EPS)
    w = zca.fit(photos)
    assert w.eps == 0.1 and w.shape == (3, 4, 4) and w.count == 400
    assert np.abs(w.mean.numpy() - mu).max() < 1e-6
    assert np.abs(w.transform.numpy() - t).max() < 1e-5 and np.abs(w.inverse.numpy() - t_inv).max() < 1e-5
    white = zca.whitened(photos, w)
    expected = ((px.reshape(400, -1) - mu) @ t).reshape(px.shape)
    assert np.abs(white.x_train[:].numpy() - expected).max() < 1e-5
    test_px = photos.denormalise(photos.x_test[:], clip=False).numpy()
    assert np.abs(white.x_test[:].numpy() - ((test_px.reshape(100, -1) - mu) @ t).reshape(test_px.shape)).max() < 1e-5
    # the whitened covariance is U diag(S / (S + eps)) Uᵀ: the identity where the variance dwarfs eps
    cov = np.cov(white.x_train[:].numpy().reshape(400, -1).astype(np.float64), rowvar=False)
    u, s, _ = np.linalg.svd(np.cov(px.reshape(400, -1).astype(np.float64), rowvar=False))
    assert np.abs(cov - (u * (s / (s + 0.1))) @ u.T).max() < 1e-4
    tight = zca.whitened(photos, zca.fit(photos, eps=1e-6))
    assert np.abs(np.cov(tight.x_train[:].numpy().reshape(400, -1).astype(np.float64), rowvar=False) - np.eye(48)).max() < 2e-2
    # T is symmetric, T⁻¹ its inverse, and the inverse gives the pixels back
    assert torch.allclose(w.transform, w.transform.T, atol=1e-6)
    assert torch.allclose(w.transform @ w.inverse, torch.eye(48), atol=1e-4)
    assert (w.unwhiten(white.x_train[:]) - photos.denormalise(photos.x_train[:], clip=False)).abs().max() < 1e-5
    # labels and names are the source's; the whitened images are kept as float32
    assert white.y_train is photos.y_train and white.class_names == photos.class_names
    assert white.x_train.stored.dtype == torch.float32 and white.x_train.top is None


def test_fit_and_whitening_read_byte_images_by_slices(photos, monkeypatch):
    """A dataset kept as bytes (``Images``, read normalised a slice at a time) fits and whitens as its
    float32 copy does, in slices of ``CHUNK`` images."""
    x = (correlated() * 255).round().astype(np.uint8)
    y = np.arange(len(x)) % 4
    xv = (correlated(100, seed=1) * 255).round().astype(np.uint8)
    as_bytes = from_pixels("bytes", x, y, xv, y[:100], ("a", "b", "c", "d"))
    as_floats = Data("bytes", as_bytes.x_train[:], as_bytes.y_train, as_bytes.x_test[:], as_bytes.y_test,
                     as_bytes.class_names, as_bytes.mean, as_bytes.std)
    assert as_bytes.x_train.stored.dtype == torch.uint8 and as_floats.x_train.stored.dtype == torch.float32
    whole = zca.fit(as_floats)
    monkeypatch.setattr(zca, "CHUNK", 64)  # 400 images in 7 slices, the last one short
    w = zca.fit(as_bytes)
    assert (w.transform - whole.transform).abs().max() < 1e-6 and (w.mean - whole.mean).abs().max() < 1e-7
    a, b = zca.whitened(as_bytes, w), zca.whitened(as_floats, whole)
    assert (a.x_train[:] - b.x_train[:]).abs().max() < 1e-5 and (a.x_test[:] - b.x_test[:]).abs().max() < 1e-5


def test_whitened_sets_have_their_own_cache_entries(photos, tmp_path):
    """Experts and random baselines of whitened images never share an entry with the plain images', and a
    second whitening of the same data finds the same entries (the fit is read back from the cache)."""
    white, w = zca.whiten(photos, cache_dir=tmp_path)
    assert zca.whitening_of(white) is w and zca.whitening_of(photos) is None
    assert zca.fingerprint(white) != fingerprint(photos) and zca.fingerprint(photos) == fingerprint(photos)
    assert zca.test_fingerprint(white) != zca.test_fingerprint(photos)
    net, spec = NetConfig(width=8, depth=1), experts.ExpertSpec(count=1, epochs=1)
    plain_dir = experts.cache_path(tmp_path, photos, net, "", spec)
    white_dir = experts.cache_path(tmp_path, white, net, "", spec)
    assert plain_dir != white_dir and white_dir.name.startswith("photos-zca-") and not plain_dir.name.startswith("photos-zca")
    key = (1, EvalConfig(nets=1, epochs=1), net, "", 0, "fp32")
    assert baselines.cache_key(white, *key) != baselines.cache_key(photos, *key)
    zca._LAST.clear()
    again = zca.whitened(photos, zca.fit_cached(photos, zca.EPS, tmp_path))  # read from tmp_path/zca
    assert len(list((tmp_path / "zca").iterdir())) == 1
    assert experts.cache_path(tmp_path, again, net, "", spec) == white_dir
    other = zca.whitened(photos, zca.fit(photos, eps=0.5))
    assert experts.cache_path(tmp_path, other, net, "", spec) != white_dir


def test_paper_tier_whitens_three_channel_sets_for_the_trajectory_methods():
    cifar = replace(tiny_data(classes=10, per_class=4, side=8, channels=3), name="cifar10")
    gray = replace(tiny_data(classes=10, per_class=4, side=8), name="mnist")
    for method in ("mtt", "datm", "iadd"):
        cfg = resolve(RunConfig(dataset="cifar10", method=method, tier="paper"), cifar)
        assert cfg.zca is True and "zca" not in cfg.overrides, method
        assert not any("ZCA" in n or "zca" in n for n in tiers.paper_settings(method, "cifar10", 10, 1, 3).notes)
        assert resolve(RunConfig(dataset="mnist", method=method, tier="paper"), gray).zca is False
        assert resolve(RunConfig(dataset="cifar10", method=method, tier="quick"), cifar).zca is False
    assert resolve(RunConfig(dataset="cifar10", method="dm", tier="paper"), cifar).zca is False
    # a three-channel upload takes the CIFAR settings, ZCA included, and says so
    upload = replace(cifar, name="mine")
    assert resolve(RunConfig(dataset="mine", method="mtt", tier="paper"), upload).zca is True
    assert any("ZCA" in n for n in tiers.paper_settings("mtt", "mine", 10, 1, 3).notes)
    # the user's choice wins either way and is named as an override
    off = resolve(RunConfig(dataset="cifar10", method="mtt", tier="paper", zca=False), cifar)
    assert off.zca is False and "zca" in off.overrides
    on = resolve(RunConfig(dataset="cifar10", method="dm", tier="quick", zca=True), cifar)
    assert on.zca is True and "zca" in on.overrides
    assert "zca" not in recount_overrides(replace(on, zca=False), cifar).overrides
    # a saved config reads back as it was; one saved before the field existed did not whiten
    d = json.loads(json.dumps(on.to_dict()))
    assert RunConfig.from_dict(d) == on
    del d["zca"]
    assert RunConfig.from_dict(d).zca is False
    with pytest.raises(ValueError, match="zca"):
        RunConfig(zca="yes")
    # images too large to whiten: the tier leaves ZCA off, an explicit request is refused with the reason
    big = replace(tiny_data(classes=10, per_class=2, side=72, channels=3), name="big")
    assert resolve(RunConfig(dataset="big", method="mtt", tier="paper"), big).zca is False
    with pytest.raises(ValueError, match="ZCA whitening of 3x72x72"):
        resolve(RunConfig(dataset="big", method="mtt", zca=True), big)


def npz(path, seed: int = 0) -> str:
    """A small three-channel upload (uint8, channels last, as CIFAR's arrays)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 90, size=(n, 8, 8, 3))
        for i, c in enumerate(y):
            x[i, :, c * 2 : c * 2 + 3, c] += 150
        return x.astype(np.uint8), y

    (xtr, ytr), (xte, yte) = make(60), make(30)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


def test_a_whitening_run_evaluates_and_shows_through_the_whitening(tmp_path, monkeypatch):
    """The run whitens once, and its initial set, checks, final evaluation and random baseline all see the
    whitened images; its snapshots (and so the store and exports) show pixels through the inverse."""
    from distill_core.runs import run as run_mod

    seen: dict[str, list] = {"evaluate": [], "baseline": []}
    evaluate, baseline = run_mod.evaluate_set, run_mod.random_baseline
    monkeypatch.setattr(run_mod, "evaluate_set", lambda *a, **k: seen["evaluate"].append(a[2]) or evaluate(*a, **k))
    monkeypatch.setattr(run_mod, "random_baseline", lambda *a, **k: seen["baseline"].append(a[0]) or baseline(*a, **k))
    cfg = RunConfig(dataset=npz(tmp_path / "colour.npz"), method="dm", ipc=1, iterations=2, zca=True, eval_every=1,
                    net=NetConfig(width=8, depth=1), eval=EvalConfig(nets=1, epochs=2), options={"batch_real": 8})
    run = run_mod.Run(cfg, cache_dir=tmp_path / "cache")
    snap = run.execute()
    assert snap.status == "done", snap.message
    w = run.whitening
    assert w is not None and zca.whitening_of(run.data) is w
    source = data_mod.load(cfg.dataset)
    assert torch.allclose(run.data.x_test[:], w.whiten(source.denormalise(source.x_test[:], clip=False)), atol=1e-5)
    assert seen["evaluate"] and seen["baseline"] and all(d is run.data for d in seen["evaluate"] + seen["baseline"])
    syn = run.method.synthetic()
    assert torch.allclose(snap.images, w.unwhiten(syn.images).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(snap.images, source.denormalise(syn.images), atol=1e-2)
    r = run.results()
    assert r["config"]["zca"] is True and r["zca"] == {"kind": "zca", "eps": 0.1, "fitted_on": "60 training images as pixels in [0, 1]",
                                                    "features": 192}
    assert "zca" in r["overrides"]
    # a run without it: its data is the source's, shown through the normalisation's inverse
    plain = run_mod.Run(replace(cfg, zca=False), cache_dir=tmp_path / "cache")
    assert plain.execute().status == "done" and plain.whitening is None and plain.results()["zca"] is None


def test_cli_run_and_eval_use_the_runs_whitening(tmp_path, capsys):
    from distill_core.artifacts import load_synthetic
    from distill_core.cli import main

    data, out = npz(tmp_path / "colour.npz"), tmp_path / "run"
    fast = ["--iterations", "2", "--eval-nets", "1", "--eval-epochs", "2", "--width", "8", "--depth", "1", "--set", "batch_real=8"]
    assert main(["run", "--dataset", data, "--method", "dm", "--zca", "--out", str(out), *fast]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["zca"] is True and r["zca"]["eps"] == 0.1
    syn, meta = load_synthetic(out / "synthetic.safetensors")
    run_data = data_mod.load(data)
    w = zca.fit(run_data)
    pixels = load_file(str(out / "synthetic.safetensors"))["pixels"]
    assert torch.allclose(pixels, w.unwhiten(syn.images).clamp(0, 1), atol=1e-5)
    assert not torch.allclose(pixels, run_data.denormalise(syn.images), atol=1e-2)
    capsys.readouterr()
    assert main(["eval", "--synthetic", str(out / "synthetic.safetensors"), "--dataset", data, "--nets", "1", "--epochs", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["zca"] is True
    assert main(["eval", "--synthetic", str(out / "synthetic.safetensors"), "--dataset", data, "--nets", "1", "--epochs", "1",
                 "--no-zca"]) == 0
    assert json.loads(capsys.readouterr().out)["zca"] is False


def test_distill_page_sets_zca_from_its_setting_and_the_link(runs_dir):
    from pathlib import Path

    from conftest import wait_done
    from streamlit.testing.v1 import AppTest

    from ui.services import services

    page = Path(__file__).resolve().parent.parent / "views" / "distill.py"
    at = AppTest.from_file(str(page), default_timeout=120)
    for k, v in {"tier": "quick", "steps": "2", "eval_nets": "1", "eval_epochs": "2", "width": "8", "zca": "on"}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="zca").value == "on"
    at.button(key="start").click().run()
    run_id = at.session_state["current_run"]
    wait_done(run_id)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    snap = services().snapshot(run_id)
    assert snap.status == "done", snap.message
    assert snap.config["zca"] is True and "zca" in snap.config["overrides"]
    assert snap.images.min() >= 0 and snap.images.max() <= 1  # shown through the inverse, as pixels


def test_the_kept_whitened_set_goes_with_its_source(photos):
    import gc

    source = replace(photos, x_train=photos.x_train[:].clone())  # a run's own copy (as on a GPU)
    white, _ = zca.whiten(source)
    assert zca.whiten(source)[0] is white  # kept while the source lives: a second run does not redo it
    del source
    gc.collect()
    assert not zca._LAST
