"""Contracts that every registered method, initializer and page keeps.

Each test is parametrized over its registry (``METHODS.names()``, ``INITIALIZERS.names()``,
``ui.nav.URL_PATHS``), so a newly registered method, initializer or page is checked here with no edit
to this file. Nothing here names a method: every method runs with its own default options, and only
the generic knobs (network, augmentation, evaluation, time budget) are set.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_data
from streamlit.testing.v1 import AppTest

from distill_core.config import RunConfig
from distill_core.evaluation.protocol import EvalConfig
from distill_core.initializers import INITIALIZERS
from distill_core.initializers import create as create_init
from distill_core.methods import METHODS, Context, create
from distill_core.nets.networks import NetConfig
from distill_core.runs.run import Run
from ui.nav import URL_PATHS

ROOT = Path(__file__).resolve().parent.parent

TINY_NET = NetConfig(width=8, depth=2)
TINY_STRATEGY = "color_crop_cutout_scale_rotate"  # DSA without flips, as for digits
STEPS = 3

# Real digits (scikit-learn's 8x8, 10 classes), IPC 1, seconds of distillation. With the full
# defaults (width-64 network, 5 x 300-epoch evaluation) the methods reach ~93% against ~71% for
# random real images; here a one-block width-32 network, a 2 x 100-epoch evaluation and a budget of
# seconds keep each run to ~7 s on 1 CPU thread. Measured gains over the random-real baseline
# (snapshot.baseline) in 6 s on this 2-core machine (shared, so iterations vary), seeds 2 / 0 / 1:
# MTT +25 / +22 / +22 points, DATM +23 / +21 / +22, DC +23 / +21 / +22, DSA +25 / +20 / +21,
# DM +23 / +19 / +20, IADD +24 / +21 / +22, KRR +13 / +18 / +4. KRR is the slowest to start: from
# seed 2's set it gains +7 after 25 iterations, +12 after 50, and it makes 55-80 in 6 s.
# The seed matters more than the method: seed 0's initial random set is already 7 points above
# its baseline before a single step, seed 1's is 13 below (seeds 0..7: +7, -13, -2, +9, -3, -4,
# +3, -5). Seed 2 starts level (-1.5), so a method that leaves its images alone scores about -2
# and misses MARGIN by 10 points, while the slowest method measured clears it by 5.
DIGITS_NET = NetConfig(width=32, depth=1)
DIGITS_EVAL = EvalConfig(nets=2, epochs=100)
DIGITS_BUDGET_S = 6.0
DIGITS_SEED = 2
MARGIN = 0.08  # final accuracy - random-real accuracy, at least


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine is shared: one torch thread for everything here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """One cache for the whole session, so expert trajectories are trained once per data and network."""
    return tmp_path_factory.mktemp("contracts-cache")


def tiny_method(name: str, ipc: int, seed: int, cache_dir: Path, init_name: str = "random"):
    """A fresh method on tiny data with its default options; returns it and its initial set."""
    data = tiny_data()
    generator = torch.Generator().manual_seed(seed)
    init = create_init(init_name, data, ipc, generator)
    ctx = Context(
        data=data, ipc=ipc, net=TINY_NET, strategy=TINY_STRATEGY, generator=generator, init=init,
        sampling="uniform", cache_dir=cache_dir, iterations=STEPS,
    )
    return create(name, ctx, {}), init


def run_steps(method, steps: int = STEPS) -> list[dict[str, torch.Tensor]]:
    return [method.step() for _ in range(steps)]


def metric_values(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items()}


# ---- methods on tiny data ----------------------------------------------------------------------


@pytest.mark.parametrize("ipc", [1, 2])
@pytest.mark.parametrize("name", METHODS.names())
def test_method_steps_give_finite_metrics_and_move_every_image(name, ipc, cache):
    method, init = tiny_method(name, ipc, 0, cache)
    history = run_steps(method)
    for i, metrics in enumerate(history):
        assert "loss" in metrics, f"step {i} gave no loss: {sorted(metrics)}"
        for key, value in metrics.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, f"step {i}: {key} is not a 0-d tensor"
            assert torch.isfinite(value), f"step {i}: {key} = {float(value)}"
    syn = method.synthetic()
    # what the method declares (the app reads this instead of guessing) is what it does
    declared = METHODS.get(name).declares
    assert set(history[-1]) == set(declared.metrics), f"metrics {sorted(history[-1])}, declared {declared.metrics}"
    assert all(declared.publishes_extra(k) for k in method.extras()), f"extras {sorted(method.extras())}"
    assert declared.soft_labels or not syn.labels.is_floating_point()
    assert declared.learned_lr == (syn.lr is not None)
    n, classes = tiny_data().num_classes * ipc, tiny_data().num_classes
    assert syn.images.shape == init.images.shape == (n, 1, 8, 8)
    assert torch.isfinite(syn.images).all()
    if syn.labels.is_floating_point():  # soft labels: logits per class
        assert syn.labels.shape == (n, classes) and torch.isfinite(syn.labels).all()
    else:
        assert torch.equal(syn.labels, init.labels)
    # a learned step size is what the evaluation networks train with: the run stops on a non-positive one
    lr = syn.lr
    assert lr is None or (math.isfinite(lr) and lr > 0), f"learned lr after {STEPS} steps: {lr}"
    # gradients reach the pixels: every synthetic image changed
    still = torch.nonzero((syn.images - init.images).flatten(1).abs().sum(1) == 0).flatten().tolist()
    assert not still, f"images unchanged after {STEPS} steps: {still}; last metrics {metric_values(history[-1])}"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_hands_on_the_coreset_weights_of_its_initial_set(name, cache):
    """The weights of a weighted initial set (sensitivity sampling) stay with the synthetic set as its
    images move, so the evaluation (``syn_weights``) and the saved set have them."""
    method, init = tiny_method(name, 2, 0, cache, init_name="sensitivity")
    assert init.weights is not None
    run_steps(method, 1)
    syn = method.synthetic()
    assert syn.weights is not None and torch.equal(syn.weights, init.weights)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_same_seed_same_result(name, cache):
    def final(seed):
        method, _ = tiny_method(name, 1, seed, cache)
        losses = [float(m["loss"]) for m in run_steps(method)]
        return method.synthetic(), losses

    (a, la), (b, lb), (c, _) = final(5), final(5), final(6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
    assert la == lb
    assert not torch.equal(a.images, c.images)


# ---- methods on real digits --------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS.names())
def test_method_beats_random_real_images_on_digits_in_seconds(name, cache):
    cfg = RunConfig(
        dataset="digits", method=name, ipc=1, seed=DIGITS_SEED, device="cpu", net=DIGITS_NET, eval=DIGITS_EVAL,
        time_budget=DIGITS_BUDGET_S,
    )
    snap = Run(cfg, cache_dir=cache).execute()
    assert snap.status == "done", snap.message
    assert snap.iteration > 0
    final, base = snap.final, snap.baseline
    assert final["n"] == DIGITS_EVAL.nets and base["n"] == DIGITS_EVAL.nets
    assert final["mean"] == pytest.approx(sum(final["values"]) / len(final["values"]))
    assert final["mean"] >= base["mean"] + MARGIN, (
        f"{name}: {final['mean']:.3f} after {snap.iteration} iterations, random real {base['mean']:.3f}"
    )


# ---- initializers --------------------------------------------------------------------------------


@pytest.mark.parametrize("ipc", [1, 2])
@pytest.mark.parametrize("name", INITIALIZERS.names())
def test_initializer_contract_on_tiny_data(name, ipc, cache):
    data = tiny_data()
    c = data.num_classes
    r = create_init(name, data, ipc, torch.Generator().manual_seed(3), cache_dir=cache)
    assert torch.equal(r.labels, torch.arange(c).repeat_interleave(ipc))  # class-major, ipc per class
    assert r.images.shape == (c * ipc, data.channels, *data.im_size) and r.images.dtype == data.x_train.dtype
    assert torch.isfinite(r.images).all()
    if r.indices is not None:
        assert r.indices.shape == (c * ipc,)
        assert int(r.indices.min()) >= 0 and int(r.indices.max()) < data.x_train.shape[0]
        assert torch.equal(data.y_train[r.indices], r.labels)  # each index has the label of its image
        assert torch.equal(r.images, data.x_train[r.indices])
    again = create_init(name, data, ipc, torch.Generator().manual_seed(3), cache_dir=cache)
    assert torch.equal(again.images, r.images)
    assert (r.indices is None and again.indices is None) or torch.equal(again.indices, r.indices)


# ---- pages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(URL_PATHS))
def test_page_runs_without_an_exception(page, runs_dir):
    at = AppTest.from_file(str(ROOT / page), default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]


@pytest.mark.parametrize("name", METHODS.names())
def test_method_steps_under_bf16_autocast_keep_fp32_leaves(name, cache):
    """``RunConfig.precision="bf16"``: the forward passes in bf16, what the method learns stays fp32."""
    from distill_core.nets.precision import autocast

    method, init = tiny_method(name, 1, 0, cache)
    with autocast("bf16", torch.device("cpu")):
        history = run_steps(method, 2)
    assert all(torch.isfinite(v).all() for m in history for v in m.values())
    syn = method.synthetic()
    assert syn.images.dtype == torch.float32 and torch.isfinite(syn.images).all()
    assert not syn.labels.is_floating_point() or syn.labels.dtype == torch.float32
    assert not torch.equal(syn.images, init.images)
