"""``syn_weights``: the coreset weights of the ``sensitivity`` / ``krr-sensitivity`` initial set weigh
DM's synthetic class mean, DC/DSA's synthetic gradients and inner training, KRR's ridge regression, the
trajectory methods' student loss and the evaluation's per-image loss, travel with the set (run,
checkpoint, saved file), and are refused where the initializer gives none."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_trajectory import TINY_OPTIONS

from distill_core import initializers
from distill_core.artifacts import load_synthetic
from distill_core.config import RunConfig
from distill_core.data.augment import NO_FLIP_STRATEGY
from distill_core.evaluation.protocol import EvalConfig, classification_loss, evaluate_set, train_network
from distill_core.methods import Context, create, trajectory, weighs
from distill_core.methods import dc as dc_mod
from distill_core.methods import krr as krr_mod
from distill_core.methods.krr import krr_predict
from distill_core.nets.networks import NetConfig, create_net
from distill_core.runs import run as run_mod
from distill_core.runs.recorder import Recorder
from distill_core.runs.run import Run
from distill_core.runs.store import Store
from distill_core.synthetic import class_mean_weights, loss_weights

NET = NetConfig(width=8, depth=2)
OWN_OPTIONS = {"dm": {"batch_real": 6}, "dc": {"batch_real": 6}, "dsa": {"batch_real": 6}, "krr": {"batch_real": 6},
               "mtt": TINY_OPTIONS, "datm": TINY_OPTIONS, "iadd": TINY_OPTIONS}  # tiny experts, a short student


def weighted_context(data, ipc=3, strategy="", init="sensitivity", seed=0) -> Context:
    g = torch.Generator().manual_seed(seed)
    return Context(data, ipc, NET, strategy, g, initializers.create(init, data, ipc, g))


def test_the_sensitivity_initializers_give_weights_and_declare_it(tiny):
    assert initializers.weighing_initializers() == ["sensitivity", "krr-sensitivity"]
    for name in initializers.INITIALIZERS.names():
        init = initializers.create(name, tiny, 2, torch.Generator().manual_seed(0))
        assert (init.weights is not None) == initializers.INITIALIZERS.get(name).gives_weights, name


def test_dm_matches_the_real_mean_with_the_weighted_synthetic_mean(tiny):
    """One DM step's loss is sum_c ||mean_real_c - sum_j w_cj f(s_cj) / sum_j w_cj||^2, computed here by hand
    from the initializer's weights, the step's network and its real batch (no augmentation)."""
    ctx = weighted_context(tiny)
    w = ctx.init.weights
    assert w is not None and w.shape == (9,) and not torch.allclose(w, w[0].expand(9))  # not uniform: the test tells
    method = create("dm", ctx, {"batch_real": 6, "syn_weights": "coreset"})
    net = create_net(NET, 1, (8, 8), 3, torch.Generator().manual_seed(5))
    idx = torch.stack([c[torch.randperm(len(c), generator=torch.Generator().manual_seed(1))[:6]] for c in tiny.class_indices()])
    method.ctx.fresh_net = lambda: net
    method.real.sample = lambda b, model=None: idx
    images0 = method.images_syn.detach().clone()
    loss = float(method.step()["loss"])

    with torch.no_grad():
        by_hand, plain = 0.0, 0.0
        for c in range(3):
            mean_real = net.embed(tiny.x_train[idx[c]]).mean(0)
            emb = net.embed(images0[3 * c : 3 * c + 3])
            wc = w[3 * c : 3 * c + 3].double()
            mean_syn = sum(float(wc[j]) * emb[j].double() for j in range(3)) / float(wc.sum())
            by_hand += float(((mean_real.double() - mean_syn) ** 2).sum())
            plain += float(((mean_real - emb.mean(0)) ** 2).sum())
    assert loss == pytest.approx(by_hand, rel=1e-5)
    assert abs(loss - plain) > 1e-4 * plain  # the weights changed the matched mean
    assert torch.equal(method.synthetic().weights, w)  # the images moved; their weights stay with them


def test_dm_uniform_is_the_plain_mean_and_coreset_without_weights_is_refused(tiny):
    ctx = weighted_context(tiny, init="random")
    assert ctx.init.weights is None
    with pytest.raises(ValueError, match="no coreset weights.*sensitivity"):
        create("dm", ctx, {"batch_real": 6, "syn_weights": "coreset"})
    assert create("dm", ctx, {"batch_real": 6}).mean_weights is None
    w = class_mean_weights(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2)
    assert torch.allclose(w, torch.tensor([[0.25, 0.75], [0.5, 0.5]]))


def test_loss_weights_have_mean_one_per_class_and_are_exactly_one_where_equal():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    w = loss_weights(torch.tensor([1.0, 2.0, 3.0, 0.1, 0.1, 70.3, 70.3]), labels)
    assert torch.allclose(w[:3], torch.tensor([0.5, 1.0, 1.5]))
    assert torch.equal(w[3:], torch.ones(4))  # 0.1 / mean(0.1, 0.1) rounds; equal weights are 1 exactly
    soft = F.one_hot(labels, 3).float() * 5  # soft logits: the class is the largest entry
    assert torch.equal(loss_weights(torch.tensor([1.0, 2.0, 3.0, 0.1, 0.1, 70.3, 70.3]), soft), w)


@pytest.mark.parametrize("soft", [False, True])
def test_the_weighted_loss_is_the_mean_of_weighted_per_image_losses(soft):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    labels = torch.randn(6, 4, generator=g) if soft else torch.randint(0, 4, (6,), generator=g)
    w = torch.tensor([0.5, 1.5, 1.0, 2.0, 0.25, 0.75])
    target = labels.softmax(1) if soft else labels
    per_image = [float(F.cross_entropy(logits[i : i + 1], target[i : i + 1])) for i in range(6)]
    by_hand = sum(a * b for a, b in zip(w.tolist(), per_image, strict=True)) / 6
    assert float(classification_loss(logits, labels, w)) == pytest.approx(by_hand, rel=1e-6)


def test_uniform_weights_train_todays_networks_to_the_bit(tiny):
    """Equal coreset weights (all 1 after normalising per class) give the same networks, parameter for
    parameter, as the unweighted loss of today; unequal ones give other networks."""
    cfg = EvalConfig(nets=1, epochs=4, batch=16)

    def trained(weights):
        g = torch.Generator().manual_seed(3)
        net = create_net(NET, 1, (8, 8), 3, g)
        train_network(net, tiny.x_train, tiny.y_train, cfg, NO_FLIP_STRATEGY, g, weights=weights)
        return [p.detach().clone() for p in net.parameters()]

    today = trained(None)
    equal = trained(loss_weights(torch.full((36,), 7.3), tiny.y_train))
    assert all(torch.equal(a, b) for a, b in zip(today, equal, strict=True))
    unequal = trained(loss_weights(torch.rand(36, generator=torch.Generator().manual_seed(0)) + 0.1, tiny.y_train))
    assert not all(torch.equal(a, b) for a, b in zip(today, unequal, strict=True))


def test_the_evaluation_with_coreset_weights_uses_them_and_refuses_a_set_without(tiny):
    images, labels = tiny.x_train[::4], tiny.y_train[::4]  # 9 images, 3 a class
    cfg = EvalConfig(nets=2, epochs=6, batch=4)

    def acc(protocol, weights=None):
        return evaluate_set(images, labels, tiny, protocol, NET, NO_FLIP_STRATEGY, torch.Generator().manual_seed(0), weights=weights)

    today = acc(cfg)
    coreset = replace(cfg, syn_weights="coreset")
    assert acc(coreset, torch.full((9,), 12.0)).values == today.values  # equal weights: today's numbers exactly
    assert acc(cfg, torch.tensor([9.0, 1, 1] * 3)).values == today.values  # uniform: weights ignored
    with pytest.raises(ValueError, match="no coreset weights"):
        acc(coreset)
    with pytest.raises(ValueError, match="4 coreset weights for 9"):
        acc(coreset, torch.ones(4))


def test_config_refuses_coreset_weights_without_an_initializer_that_gives_them():
    for kwargs in ({"options": {"syn_weights": "coreset"}}, {"eval": EvalConfig(syn_weights="coreset")}):
        with pytest.raises(ValueError, match="initializer random gives none; start from sensitivity or krr-sensitivity"):
            RunConfig(init="random", **kwargs)
        for init in ("sensitivity", "krr-sensitivity"):
            assert RunConfig(init=init, **kwargs).weights_used_by()
    assert RunConfig(init="random").weights_used_by() == []
    cfg = RunConfig(init="random", eval=EvalConfig(), check=EvalConfig())
    with pytest.raises(ValueError, match="the evaluation and the checks"):
        cfg.with_eval(syn_weights="coreset")
    old = RunConfig(init="sensitivity", eval=EvalConfig()).to_dict()
    del old["eval"]["syn_weights"]  # a run saved before the option existed reads back uniform
    assert RunConfig.from_dict(old).eval.syn_weights == "uniform"


def test_a_run_evaluates_with_its_weights_and_saves_them_with_the_set(tmp_path, monkeypatch):
    seen = []
    original = run_mod.evaluate_set

    def spy(*args, **kwargs):
        seen.append((args[3].syn_weights, args[-1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(run_mod, "evaluate_set", spy)
    store = Store(tmp_path)
    cfg = RunConfig(dataset="digits", method="dm", init="sensitivity", ipc=2, iterations=6, eval_every=3,
                    net=NetConfig(width=8, depth=2), eval=EvalConfig(nets=1, epochs=2, syn_weights="coreset"),
                    options={"batch_real": 8, "syn_weights": "coreset"})
    run = Run(cfg, log_every=3, publish_seconds=0, on_snapshot=Recorder(store, every_seconds=0), cache_dir=tmp_path / "cache")
    store.add(run.snapshot())
    snap = run.execute()
    assert snap.status == "done", snap.message
    w = run.ctx.init.weights.cpu()
    assert w.shape == (20,) and torch.equal(snap.weights, w)
    assert len(seen) == 3 and all(sw == "coreset" and torch.equal(ws.cpu(), w) for sw, ws in seen)  # checks at 0 and 3, final
    syn, meta = load_synthetic(store.synthetic_path(run.id))
    assert torch.equal(syn.weights, w) and meta["config"]["eval"]["syn_weights"] == "coreset"
    assert torch.equal(store.checkpoint(run.id)["weights"], w)
    assert torch.equal(store.resume_point(run.id).weights, w)
    assert torch.equal(store.load_snapshot(run.id).weights, w)


def test_a_resumed_run_keeps_the_weights_of_its_checkpoint_or_of_its_initializer(tmp_path):
    cfg = RunConfig(dataset="digits", method="dm", init="sensitivity", ipc=1, iterations=4,
                    net=NetConfig(width=8, depth=2), eval=EvalConfig(nets=1, epochs=1), options={"batch_real": 8})
    first = Run(cfg, cache_dir=tmp_path)
    first.prepare()
    w = first.ctx.init.weights
    syn = first.method.synthetic()
    resume = run_mod.Resume(syn.images, syn.labels, 2)  # a checkpoint saved before weights were: the initializer's again
    again = Run(cfg, cache_dir=tmp_path, resume=resume)
    again.prepare()
    assert torch.equal(again.method.synthetic().weights, w)
    again = Run(cfg, cache_dir=tmp_path, resume=replace(resume, weights=w * 2))
    again.prepare()
    assert torch.equal(again.method.synthetic().weights, w * 2)


# ---- the other methods' own use of the weights (``methods.weighs``) -------------------------------


@pytest.mark.parametrize("name", ["dm", "dc", "dsa", "krr", "mtt", "datm", "iadd"])
def test_every_method_says_what_it_weighs_and_refuses_a_set_without_weights(tiny, tmp_path, name):
    assert weighs(name)  # the app's Inside page and the CLI's help name it
    ctx = weighted_context(tiny, init="random")
    ctx = replace(ctx, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no coreset weights.*sensitivity"):
        create(name, ctx, {**OWN_OPTIONS.get(name, {}), "syn_weights": "coreset"})


def test_dc_matches_real_gradients_with_those_of_the_weighted_synthetic_loss(tiny, monkeypatch):
    """DC's synthetic side with coreset weights: per class, the gradient of sum_j w_j l_j / sum_j w_j.
    The batched form (one forward over all classes) equals a pass per class, and that equals the
    gradient of the weighted loss written out here; the inner network trains on the weighted loss."""
    ctx = weighted_context(tiny)
    method = create("dc", ctx, {"batch_real": 6, "syn_weights": "coreset"})
    w = ctx.init.weights
    assert torch.allclose(method.mean_weights, class_mean_weights(w, 3))
    assert torch.allclose(method.train_weights, loss_weights(w, ctx.init.labels))
    net = create_net(NET, 1, (8, 8), 3, torch.Generator().manual_seed(5))
    layers = dc_mod.matched_layers(net)
    syn = method.images_syn.detach().view(3, 3, 1, 8, 8)
    labels = method.labels_class
    batched = dc_mod.class_gradients_batched(net, syn, labels, layers, sample_weights=method.mean_weights)
    looped = dc_mod.class_gradients_loop(net, syn, labels, layers, sample_weights=method.mean_weights)
    plain = dc_mod.class_gradients_batched(net, syn, labels, layers)
    for c in range(3):
        wc = w[3 * c : 3 * c + 3] / w[3 * c : 3 * c + 3].sum()
        loss = (F.cross_entropy(net(syn[c]), labels[c], reduction="none") * wc).sum()
        by_hand = torch.autograd.grad(loss, [m.weight for m in layers])
        for b, lo, h, p in zip(batched, looped, by_hand, plain, strict=True):
            assert torch.allclose(b[c], h, atol=1e-6) and torch.allclose(lo[c], h, atol=1e-6)
            assert not torch.allclose(p[c], h, atol=1e-6)  # the weights changed the gradient

    seen = []
    monkeypatch.setattr(dc_mod, "train_epoch", lambda *a, **k: seen.append(k.get("weights")))
    method.inner_loop = 2
    method.train_net(net, torch.optim.SGD(net.parameters(), lr=0.01))
    assert len(seen) == 2 and all(s is method.train_weights for s in seen)


def test_krr_with_coreset_weights_solves_the_weighted_ridge_regression():
    """alpha = (K + lambda W^-1)^-1 y is where sum_j w_j (y_j - (K alpha)_j)^2 + lambda alpha^T K alpha is
    stationary: W (y - K alpha) = lambda alpha. Weights of 1 give the unweighted fit exactly."""
    g = torch.Generator().manual_seed(0)
    phi_s, phi_t = torch.randn(6, 20, generator=g, dtype=torch.float64), torch.randn(4, 20, generator=g, dtype=torch.float64)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 2.0, 1.0, 1.5, 0.25, 0.75], dtype=torch.float64)
    k = phi_s @ phi_s.T
    lam = 0.1 * k.diagonal().mean()
    alpha = torch.linalg.solve(k + torch.diag(lam / w), y)
    assert torch.allclose(w[:, None] * (y - k @ alpha), lam * alpha, atol=1e-9)
    assert torch.allclose(krr_predict(phi_s, phi_t, y, 0.1, w), phi_t @ phi_s.T @ alpha, atol=1e-9)
    assert torch.equal(krr_predict(phi_s, phi_t, y, 0.1, torch.ones(6, dtype=torch.float64)), krr_predict(phi_s, phi_t, y, 0.1))
    assert not torch.allclose(krr_predict(phi_s, phi_t, y, 0.1, w), krr_predict(phi_s, phi_t, y, 0.1), atol=1e-6)


def test_krr_step_uses_its_weights(tiny, monkeypatch):
    method = create("krr", weighted_context(tiny), {"batch_real": 6, "syn_weights": "coreset"})
    assert torch.allclose(method.fit_weights, loss_weights(method.ctx.init.weights, method.labels_syn))
    seen = []
    monkeypatch.setattr(krr_mod, "krr_predict", lambda *a: seen.append(a[-1]) or krr_predict(*a))
    assert torch.isfinite(method.step()["loss"])
    assert seen and seen[0] is method.fit_weights


@pytest.mark.parametrize("name", ["mtt", "datm"])
def test_the_student_loss_of_a_trajectory_method_weighs_each_synthetic_image(tiny, tmp_path, name):
    """With coreset weights each student minibatch carries its images' weights (mean 1 per class) and its
    loss is the mean of per-image losses times them; a step then moves the images otherwise than uniform."""
    ctx = replace(weighted_context(tiny, ipc=2), cache_dir=tmp_path)
    method = create(name, ctx, {**OWN_OPTIONS[name], "syn_weights": "coreset"})
    w = loss_weights(ctx.init.weights, method.labels_syn)
    assert torch.allclose(method.loss_weights, w) and not torch.allclose(w, torch.ones(6))
    batches = trajectory.plan_batches(6, 3, 4, "", torch.Generator().manual_seed(1), method.loss_weights)
    net = create_net(NET, 1, (8, 8), 3, torch.Generator().manual_seed(5))
    params = dict(net.named_parameters())
    images, labels = method.images_syn.detach(), method.labels_syn.detach()
    for batch in batches:
        assert torch.equal(batch.weights, w[batch.index])
        target = labels[batch.index].softmax(1) if labels.is_floating_point() else labels[batch.index]
        per_image = F.cross_entropy(net(images[batch.index]), target, reduction="none")
        by_hand = (per_image * w[batch.index]).mean()
        assert torch.allclose(trajectory.student_loss(net, params, images, labels, batch), by_hand, atol=1e-6)

    moved = []
    for sw in ("uniform", "coreset"):
        m = create(name, replace(weighted_context(tiny, ipc=2), cache_dir=tmp_path), {**OWN_OPTIONS[name], "syn_weights": sw})
        m.step()
        moved.append(m.synthetic().images)
    assert not torch.allclose(moved[0], moved[1])
