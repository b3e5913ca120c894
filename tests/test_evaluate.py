import numpy as np
import pytest
import torch

from distill_core.config import EvalConfig
from distill_core.evaluation.protocol import Accuracy, baseline_random, classification_loss, evaluate_set, random_subset
from distill_core.nets.networks import NetConfig

NET = NetConfig(width=16, depth=2)
FAST = EvalConfig(nets=2, epochs=60, lr=0.01)


def test_training_on_real_images_beats_chance(tiny, gen):
    acc = evaluate_set(tiny.x_train[:], tiny.y_train, tiny, FAST, NET, "", gen)
    assert isinstance(acc, Accuracy) and acc.n == 2
    assert acc.mean > 0.9  # the toy classes are separable


def test_soft_labels_and_learned_lr(tiny, gen):
    soft = torch.nn.functional.one_hot(tiny.y_train, 3).float() * 5
    acc = evaluate_set(tiny.x_train[:], soft, tiny, FAST, NET, "color_crop", gen, lr=0.02)
    assert acc.mean > 0.9
    assert torch.allclose(classification_loss(torch.zeros(2, 3), torch.tensor([0, 1])), torch.tensor(1.0986), atol=1e-3)
    logits = soft[:4].clone().requires_grad_(True)
    classification_loss(logits, soft[:4]).backward()  # soft targets = softmax(labels): optimum at logits == labels
    assert logits.grad.abs().max() < 1e-6


def test_same_seed_same_accuracy(tiny):
    a = evaluate_set(tiny.x_train[:6], tiny.y_train[:6], tiny, FAST, NET, "color", torch.Generator().manual_seed(1))
    b = evaluate_set(tiny.x_train[:6], tiny.y_train[:6], tiny, FAST, NET, "color", torch.Generator().manual_seed(1))
    assert a == b


def test_random_subset_and_baseline(tiny, gen):
    idx = random_subset(tiny, 2, gen)
    assert idx.shape == (6,)
    assert tiny.y_train[idx].tolist() == [0, 0, 1, 1, 2, 2]
    base = baseline_random(tiny, 1, EvalConfig(nets=3, epochs=30), NET, "", gen)
    assert base.n == len(base.values) == 3
    assert base.mean == pytest.approx(np.mean(base.values)) and base.std == pytest.approx(np.std(base.values))
    assert base.mean >= 1 / 3 + 0.5  # chance is 1/3; one real image per separable toy class gets ~100%


def test_bf16_autocast_trains_networks_as_well_as_fp32():
    """Under the run's bf16 autocast the evaluation networks learn as in fp32 (an autocast cast cache
    kept serving stale bf16 weights, and they stayed at chance)."""
    from distill_core.data import load
    from distill_core.data.sampling import random_subset
    from distill_core.evaluation import defaults
    from distill_core.nets.precision import autocast

    data = load("digits")
    idx = random_subset(data, 10, torch.Generator().manual_seed(0))
    cfg = EvalConfig(nets=2, epochs=60)
    acc = {}
    for precision in ("fp32", "bf16"):
        with autocast(precision, torch.device("cpu")):
            acc[precision] = evaluate_set(
                data.x_train[idx], data.y_train[idx], data, cfg, defaults.net_for(data), defaults.strategy_for(data),
                torch.Generator().manual_seed(1),
            ).mean
    assert acc["fp32"] > 0.8 and abs(acc["bf16"] - acc["fp32"]) < 0.04, acc
