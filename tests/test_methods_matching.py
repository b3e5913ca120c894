"""DC, DSA and KRR on tiny data: finite losses, gradients reaching the pixels, determinism, the
batched per-class gradients, and importance-sampled real batches."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_core import initializers
from distill_core.data.augment import NO_FLIP_STRATEGY
from distill_core.methods import METHODS, Context, create
from distill_core.methods.dc import (
    DC,
    class_gradients_batched,
    class_gradients_loop,
    gradient_distance,
    matched_layers,
    reference_loops,
    separable,
)
from distill_core.methods.dm import RealBatches
from distill_core.methods.krr import krr_predict, targets
from distill_core.nets.networks import NetConfig, create_net

MATCHING = ["dc", "dsa", "krr"]
SMALL = {"dc": {"batch_real": 6}, "dsa": {"batch_real": 6}, "krr": {"batch_real": 6, "nets": 2}}


def context(data, ipc=2, sampling="uniform", seed=0, net=None) -> Context:
    g = torch.Generator().manual_seed(seed)
    init = initializers.create("random", data, ipc, g)
    return Context(data, ipc, net or NetConfig(width=8, depth=2), NO_FLIP_STRATEGY, g, init, sampling)


def run_steps(name, data, steps=3, seed=0, sampling="uniform", **options):
    method = create(name, context(data, seed=seed, sampling=sampling), {**SMALL[name], **options})
    losses = [float(method.step()["loss"]) for _ in range(steps)]
    return method, losses


@pytest.mark.parametrize("name", MATCHING)
def test_steps_give_finite_losses_and_move_every_class(name, tiny):
    method, losses = run_steps(name, tiny, outer_loop=2, inner_loop=1) if name != "krr" else run_steps(name, tiny)
    assert all(torch.isfinite(torch.tensor(losses)))
    before = context(tiny).init.images
    after = method.synthetic().images
    assert torch.isfinite(after).all()
    moved = (after - before).flatten(1).abs().sum(1)
    assert (moved > 0).all()  # the gradient reached the pixels of every synthetic image


@pytest.mark.parametrize("name", MATCHING)
def test_same_seed_same_result(name, tiny):
    a, la = run_steps(name, tiny, seed=5)
    b, lb = run_steps(name, tiny, seed=5)
    c, _ = run_steps(name, tiny, seed=6)
    assert la == lb
    assert torch.equal(a.synthetic().images, b.synthetic().images)
    assert not torch.equal(a.synthetic().images, c.synthetic().images)


def test_dsa_is_dc_with_augmentation_by_config():
    dsa = METHODS.get("dsa")
    assert issubclass(dsa, DC) and dsa.step is DC.step
    assert dsa.Config().augment and not METHODS.get("dc").Config().augment
    assert dsa.Config(lr_img=0.5).lr_img == 0.5


def test_reference_loops():
    assert reference_loops(1) == (1, 1)
    assert reference_loops(10) == (10, 50)
    assert reference_loops(50) == (50, 10)
    assert reference_loops(7) == (10, 50)


def test_invalid_options_are_named():
    with pytest.raises(ValueError, match="lr_img"):
        METHODS.get("dc").Config(lr_img=0)
    with pytest.raises(ValueError, match="nets"):
        METHODS.get("krr").Config(nets=0)


@pytest.mark.parametrize("arch", [NetConfig(width=6, depth=2), NetConfig(width=6, depth=2, norm="none"), NetConfig(name="mlp")])
def test_batched_class_gradients_equal_the_per_class_loop(arch):
    # without a norm an in-place ReLU follows the convolution itself (and the linear layer in the MLP)
    g = torch.Generator().manual_seed(0)
    net = create_net(arch, 1, (8, 8), 3, g).double()
    layers = matched_layers(net)
    assert separable(net, layers)
    x = torch.randn(3, 4, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.arange(3).view(3, 1).expand(3, 4)
    loop = class_gradients_loop(net, x, y, layers, create_graph=True)
    batched = class_gradients_batched(net, x, y, layers, create_graph=True)
    for a, b in zip(loop, batched, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-10)
    # and so are the second-order gradients that reach the images
    target = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in loop]
    ga = torch.autograd.grad(gradient_distance(target, loop), x)[0]
    gb = torch.autograd.grad(gradient_distance(target, batched), x)[0]
    assert torch.allclose(ga, gb, atol=1e-10) and ga.abs().sum() > 0


def test_batch_norm_is_not_separable():
    net = create_net(NetConfig(width=4, depth=1, norm="batch"), 1, (8, 8), 3, torch.Generator().manual_seed(0))
    assert not separable(net, matched_layers(net))


def test_gradient_distance_per_output_node():
    a = torch.randn(2, 5, 7)
    assert float(gradient_distance([a], [3 * a])) == pytest.approx(0, abs=1e-5)
    assert float(gradient_distance([a], [-a])) == pytest.approx(2 * 2 * 5, rel=1e-5)


def test_krr_interpolates_its_support_set():
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(6, 20, generator=g, dtype=torch.float64)
    y = targets(torch.tensor([0, 1, 2, 0, 1, 2]), 3).double()
    assert torch.allclose(krr_predict(phi, phi, y, 1e-9), y, atol=1e-5)


def test_krr_learned_labels_are_logits(tiny):
    method, losses = run_steps("krr", tiny, learn_labels=True, lr_labels=0.1)
    labels = method.synthetic().labels
    assert labels.is_floating_point() and labels.shape == (6, 3) and torch.isfinite(labels).all()
    assert torch.equal(labels.argmax(1), torch.arange(3).repeat_interleave(2))


@pytest.mark.parametrize("name", MATCHING)
def test_importance_sampling_exposes_weights(name, tiny):
    options = {"refresh_every": 1} if name == "krr" else {"score_steps": 3, "refresh_every": 1}
    method, losses = run_steps(name, tiny, steps=3, sampling="importance", **options)
    extras = method.extras()
    w = extras["sampling_weights"]
    assert w.shape == (tiny.x_train.shape[0],) and (w > 0).all()
    for idx in tiny.class_indices():
        assert float(w[idx].sum()) == pytest.approx(1.0, abs=1e-5)
    history = extras["sampling_batch_loss"]  # (periods, 2): drawn batches' mean loss, uniform's
    assert history.dim() == 2 and history.shape[1] == 2 and history.shape[0] >= 1 and torch.isfinite(history).all()
    assert set(extras) <= set(METHODS.get(name).declares.extras)
    uniform, _ = run_steps(name, tiny, steps=2)
    assert uniform.extras() == {}


def test_importance_sampling_prefers_high_loss_images(tiny):
    ctx = context(tiny, sampling="importance")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # a model that fits some images better than others
    with torch.no_grad():
        net[1].weight.mul_(10)
        losses = F.cross_entropy(net(tiny.x_train[:]), tiny.y_train, reduction="none")
    real = RealBatches(ctx, refresh_every=1)
    weights = real.refresh(net)
    draws = torch.stack([real.sampler.sample(1) for _ in range(3000)])  # (3000, C, 1), without the refresh
    for c, idx in enumerate(tiny.class_indices()):
        order = losses[idx].argsort()
        assert torch.all(weights[idx][order].diff() >= 0)  # weight grows with the loss
        expected = float((weights[idx] * losses[idx]).sum())  # the loss a weighted draw has on average
        assert expected > float(losses[idx].mean()) + 0.1  # above the uniform average
        sampled = float(losses[draws[:, c].flatten()].mean())
        assert sampled == pytest.approx(expected, rel=0.05)


def test_importance_scorer_is_trained_on_the_synthetic_set(tiny):
    ctx = context(tiny, sampling="importance")
    method = create("dm", ctx, {"batch_real": 6})
    method.real.score_steps = 30
    scorer = method.real.scorer()
    syn = method.synthetic()
    untrained = ctx.fresh_net()
    with torch.no_grad():
        assert F.cross_entropy(scorer(syn.images), syn.labels) < F.cross_entropy(untrained(syn.images), syn.labels)


def test_a_refresh_scores_a_fresh_pool_and_draws_only_from_it(tiny):
    """With a pool of 4 of the 12 images per class, a refresh scores 4 per class, their weights sum to
    one within the class, every draw comes from the pool, and the next refresh scores another pool."""
    ctx = context(tiny, sampling="importance")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    real = RealBatches(ctx, refresh_every=1, pool=4)
    weights = real.refresh(net)
    pools = []
    for idx in tiny.class_indices():
        scored = idx[weights[idx] > 0]
        assert len(scored) == 4 and float(weights[idx].sum()) == pytest.approx(1.0, abs=1e-5)
        pools.append(set(scored.tolist()))
    draws = torch.stack([real.sampler.sample(6) for _ in range(50)])  # (50, C, 6)
    for c, pool in enumerate(pools):
        assert set(draws[:, c].flatten().tolist()) <= pool
    with torch.no_grad():  # a uniform batch's expected loss, estimated on the scored pools
        losses = F.cross_entropy(net(tiny.x_train[:]), tiny.y_train, reduction="none")
    pool_means = [float(losses[sorted(pool)].mean()) for pool in pools]
    assert real.sampler.uniform_loss() == pytest.approx(sum(pool_means) / len(pool_means), rel=1e-5)
    again = real.refresh(net)
    assert any(set(idx[again[idx] > 0].tolist()) != pool for idx, pool in zip(tiny.class_indices(), pools, strict=True))


def test_krr_scores_only_the_pool(tiny):
    ctx = context(tiny, sampling="importance")
    method = create("krr", ctx, {**SMALL["krr"], "refresh_every": 1, "score_pool": 5})
    asked = []
    residuals = method.residuals

    def spy(indices=None):
        asked.append(indices)
        return residuals(indices)

    method.real.score = spy
    method.step()
    assert len(asked) == 1 and asked[0].shape == (tiny.num_classes * 5,)
    assert int((method.extras()["sampling_weights"] > 0).sum()) == tiny.num_classes * 5


def test_the_scorer_follows_the_set_with_a_tenth_of_its_epochs(tiny, monkeypatch):
    """The first refresh trains a fresh scorer for ``score_steps`` epochs; later ones train the same
    network on for a tenth of that, since the set has moved little in between."""
    from distill_core.methods import real as real_module

    epochs = []
    original = real_module.train_network

    def spy(net, images, labels, cfg, *args, **kwargs):
        epochs.append((id(net), cfg.epochs))
        return original(net, images, labels, cfg, *args, **kwargs)

    monkeypatch.setattr(real_module, "train_network", spy)
    ctx = context(tiny, sampling="importance")
    method = create("dm", ctx, {"batch_real": 6, "refresh_every": 1})
    method.real.score_steps = 30
    for _ in range(3):
        method.step()
    assert [e for _, e in epochs] == [30, 3, 3]
    assert len({n for n, _ in epochs}) == 1  # one network throughout


def test_uniform_real_batches_draw_as_the_plain_sampler(tiny):
    ctx = context(tiny)
    real = RealBatches(ctx, refresh_every=1, synthetic=lambda: None)
    from distill_core.data.sampling import ClassSampler

    plain = ClassSampler(tiny, torch.Generator().manual_seed(99))
    real.sampler.generator = torch.Generator().manual_seed(99)
    for _ in range(3):
        assert torch.equal(real.sample(4), plain.sample(4))
    assert real.extras() == {}


def test_importance_draws_with_replacement_keep_their_emphasis_at_full_class_batches(tiny):
    """A batch as large as its class: drawn without replacement it would hold every image once (the
    uniform mean loss); drawn with replacement it keeps the loss-weighted mean."""
    ctx = context(tiny, sampling="importance")
    real = RealBatches(ctx, refresh_every=0)
    losses = torch.rand(tiny.x_train.shape[0], generator=torch.Generator().manual_seed(1)) ** 4
    weights = real.sampler.set_losses(losses)
    b = real.sampler.max_batch()
    draws = torch.cat([real.sampler.sample(b).flatten() for _ in range(200)])
    expected = sum(float((weights[i] * losses[i]).sum()) for i in tiny.class_indices()) / tiny.num_classes
    uniform = real.sampler.uniform_loss()
    assert expected > 1.5 * uniform
    assert float(losses[draws].mean()) == pytest.approx(expected, rel=0.1)
    drawn, uniform_again = real.sampler.batch_loss_history()[-1].tolist()
    assert drawn == pytest.approx(float(losses[draws].mean()), rel=1e-5) and uniform_again == pytest.approx(uniform)


def test_krr_scores_real_images_by_its_own_kernel_fit(tiny):
    """The residual of the kernel fit on the synthetic set: the real images the synthetic set copies are
    fitted almost exactly, so they score far below the others; the scores drive the sampling weights."""
    ctx = context(tiny, sampling="importance")
    method = create("krr", ctx, {**SMALL["krr"], "reg": 1e-6, "refresh_every": 1})
    residuals = method.residuals()
    assert residuals.shape == (tiny.x_train.shape[0],) and torch.isfinite(residuals).all()
    copied = torch.zeros(tiny.x_train.shape[0], dtype=torch.bool)
    copied[ctx.init.indices] = True
    assert float(residuals[copied].mean()) < 0.1 * float(residuals[~copied].mean())
    method.step()  # the first step refreshes the weights from the residuals
    w = method.extras()["sampling_weights"]
    for idx in tiny.class_indices():
        inside = copied[idx]
        assert float(w[idx][inside].mean()) < float(w[idx][~inside].mean())


def test_dm_real_and_synthetic_images_of_a_class_see_one_transform(tiny):
    """As the reference's siamese DiffAugment (one seed per class): one transform, one family and one
    parameter set, for the class's whole real batch and all its synthetic images. So when every real
    image of a class equals its synthetic images, the augmented real and synthetic means coincide and
    DM's loss is zero whatever the network; a parameter per image would leave a gap."""
    from dataclasses import replace

    from distill_core.synthetic import InitResult

    per_class = torch.stack([tiny.x_train[idx[0]] for idx in tiny.class_indices()])  # (C, ch, H, W)
    same = replace(tiny, x_train=per_class[tiny.y_train])
    ctx = context(same, ipc=2)
    ctx.init = InitResult(per_class.repeat_interleave(2, 0), ctx.init.labels)
    method = create("dm", ctx, {"batch_real": 6})
    for _ in range(5):  # several steps: several families
        assert float(method.step()["loss"]) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_dc_trains_its_network_with_plain_sgd(name, tiny):
    """The reference's main.py: ``optimizer_net = torch.optim.SGD(net.parameters(), lr=args.lr_net)``,
    no momentum, for the network trained on the synthetic set between matchings."""
    method = create(name, context(tiny), {**SMALL[name], "outer_loop": 2, "inner_loop": 1})
    seen = []
    method.train_net = lambda net, opt: seen.append(opt)
    method.step()
    assert len(seen) == 1
    group = seen[0].param_groups[0]
    assert group["momentum"] == 0
    assert group["lr"] == pytest.approx(0.01) and group["weight_decay"] == 0


@pytest.mark.parametrize("pool", [0, 128])
def test_unbiased_weights_make_importance_draws_estimate_the_class_mean(pool):
    """Importance draws lean towards high-loss images, so their plain mean of a statistic that grows
    with the loss sits above the class's mean; weighted by 1/(n p), self-normalised per batch, the
    draws of DM's batch of 64 average to the class's own mean, over the whole class (pool 0) or over
    fresh pools of 128. Self-normalising leaves a bias of order 1/b: here under 0.02, against over
    0.15 for the plain draws."""
    from tests.conftest import tiny_data

    data = tiny_data(per_class=400)
    ctx = context(data, sampling="importance")
    real = RealBatches(ctx, refresh_every=0, pool=pool, weighting="unbiased")
    g = torch.Generator().manual_seed(3)
    f = torch.rand(data.x_train.shape[0], generator=g)  # a per-image statistic (an embedding coordinate, say)
    losses = f**2 + 0.05  # the loss grows with it: p spans a factor of 21
    plain, weighted = [], []
    for _ in range(300):
        pools = real.sampler.draw_pool(pool)
        real.sampler.set_losses(losses[torch.cat(pools)], pools)
        drawn = real.sample(64)  # (C, 64), with replacement
        w = real.weights(drawn)
        assert w.shape == drawn.shape and torch.allclose(w.sum(1), torch.ones(data.num_classes))
        plain.append(f[drawn].mean(1))
        weighted.append((w * f[drawn]).sum(1))
    plain, weighted = torch.stack(plain).mean(0), torch.stack(weighted).mean(0)
    truth = torch.stack([f[idx].mean() for idx in data.class_indices()])
    assert (plain - truth).min() > 0.15  # the plain draws are pulled towards the hard images
    assert (weighted - truth).abs().max() < 0.03 and ((weighted - truth).abs() < 0.15 * (plain - truth)).all()
    assert RealBatches(ctx, refresh_every=0, pool=pool).weights(drawn) is None  # "plain": no weights


@pytest.mark.parametrize("name", ["dm", "dsa", "krr"])
def test_unbiased_weighting_reaches_the_matched_statistic(name, tiny):
    """With ``weighting=unbiased`` each method asks for the weights of every importance draw and uses
    them (DM: the real mean embedding, DC/DSA: the real loss, KRR: the real residuals): a weight on
    one image per class only changes the loss against the plain run of the same draws."""
    options = {"batch_real": 4, "refresh_every": 1, "weighting": "unbiased"}
    if name == "dsa":
        options.update(score_steps=2, outer_loop=2, inner_loop=1)
    losses = {}
    for weighting in ("unbiased", "one"):
        method = create(name, context(tiny, sampling="importance", seed=1), options)
        method.real.score_steps = 2
        asked = []
        original = method.real.weights

        def spy(drawn, original=original, weighting=weighting, asked=asked):
            w = original(drawn)
            asked.append(w)
            if weighting == "one":
                w = torch.zeros_like(w)
                w[:, 0] = 1
            return w

        method.real.weights = spy
        losses[weighting] = float(method.step()["loss"])
        assert asked and all(w is not None and torch.allclose(w.sum(1), torch.ones(tiny.num_classes)) for w in asked)
    assert losses["unbiased"] != pytest.approx(losses["one"], rel=1e-4)
