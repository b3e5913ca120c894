import math
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_data

from distill_core import initializers as I
from distill_core.data.datasets import Data
from distill_core.initializers import INITIALIZERS, leverage, selection, sensitivity
from distill_core.initializers.features import features

REAL = [n for n in INITIALIZERS.names() if n != "noise"]


CACHE = Path(tempfile.mkdtemp(prefix="distill-test-experts-"))  # the correct initializer's experts, not in ~/.cache


def make(name: str, data: Data, ipc: int, seed: int = 0, **options):
    return I.create(name, data, ipc, torch.Generator().manual_seed(seed), CACHE, **options)


@pytest.mark.parametrize("name", INITIALIZERS.names())
@pytest.mark.parametrize("ipc", [1, 3])
def test_initializer_contract(name, ipc, tiny):
    r = make(name, tiny, ipc)
    c = tiny.num_classes
    assert r.images.shape == (c * ipc, tiny.channels, *tiny.im_size)
    assert torch.equal(r.labels, torch.arange(c).repeat_interleave(ipc))  # class-major, ipc per class
    if r.indices is not None:
        assert r.indices.shape == (c * ipc,)
        assert int(r.indices.min()) >= 0 and int(r.indices.max()) < tiny.x_train.shape[0]
        assert torch.equal(tiny.y_train[r.indices], r.labels)
        assert len(set(r.indices.tolist())) == c * ipc  # no image twice
        assert torch.equal(r.images, tiny.x_train[r.indices])
    if r.scores is not None:
        assert r.scores.shape == (tiny.x_train.shape[0],)
        assert torch.isfinite(r.scores).all()
    if r.weights is not None:
        assert r.weights.shape == (c * ipc,) and (r.weights > 0).all()


@pytest.mark.parametrize("name", INITIALIZERS.names())
def test_same_seed_same_result(name, tiny):
    a, b = make(name, tiny, 2, seed=3), make(name, tiny, 2, seed=3)
    assert torch.equal(a.images, b.images)
    for x, y in ((a.indices, b.indices), (a.scores, b.scores), (a.weights, b.weights)):
        assert (x is None and y is None) or torch.equal(x, y)


def test_each_initializer_registers_what_its_scores_mean():
    """The app's score histograms take their caption from the registration (``score_meaning``)."""
    for name in ("herding", "kcenter", "kmeans", "sensitivity", "krr-sensitivity"):
        assert INITIALIZERS.get(name).score_meaning, name
    assert INITIALIZERS.get("noise").score_meaning is None and INITIALIZERS.get("random").score_meaning is None


@pytest.mark.parametrize("name", REAL)
def test_impossible_ipc_is_a_clear_error(name, tiny):
    with pytest.raises(ValueError, match="ipc=13 is larger than the 12 training images"):
        make(name, tiny, 13)


@pytest.mark.parametrize("name", ["herding", "kcenter", "kmeans", "sensitivity", "krr-sensitivity"])
@pytest.mark.parametrize("space", ["pixels", "embedding", "trained"])
def test_feature_spaces(name, space, tiny):
    r = make(name, tiny, 2, features=space, net={"width": 8, "depth": 2}, train_steps=3)
    assert r.indices.shape == (6,) and r.scores.shape == (36,)


def test_unknown_option_and_feature_space_are_named(tiny):
    with pytest.raises(ValueError, match="unknown option bogus"):
        make("herding", tiny, 1, bogus=1)
    with pytest.raises(ValueError, match="unknown feature space 'nope'"):
        make("kmeans", tiny, 1, features="nope")
    with pytest.raises(ValueError, match="unknown kernel"):
        make("krr-sensitivity", tiny, 1, kernel="poly")


KNOWN_OPTIONS = {  # each initializer's Config fields (what each accepted before Configs, less logits and cache_dir)
    "herding": "features, net, train_steps",
    "kcenter": "features, net, train_steps",
    "kmeans": "features, net, train_steps",
    "sensitivity": "features, k, lloyd, net, train_steps",
    "krr-sensitivity": "exact_max, features, kernel, net, rff_dim, ridge, train_steps",
    "correct": "expert_batch, expert_epochs, expert_seed, experts, net, strategy",
}


@pytest.mark.parametrize("name", sorted(KNOWN_OPTIONS))
def test_an_unknown_option_is_named_with_the_known_ones(name, tiny):
    message = f"unknown option bogus, zz for initializer '{name}'; known: {KNOWN_OPTIONS[name]}"
    with pytest.raises(ValueError) as err:
        make(name, tiny, 1, zz=1, bogus=2)
    assert str(err.value) == message


def test_option_limits_live_on_the_config_fields(tiny):
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        make("sensitivity", tiny, 1, k=0)
    with pytest.raises(ValueError, match="ridge must be positive"):
        make("krr-sensitivity", tiny, 1, ridge=0.0)
    with pytest.raises(ValueError, match="train_steps must be a whole number"):
        make("herding", tiny, 1, train_steps=2.5)


def test_resolved_options_say_what_was_used(tiny):
    cfg = I.INITIALIZERS.get("sensitivity").Config().resolved(tiny, 3, 100)
    assert cfg.k == 10 and cfg.net is not None and cfg.features == "pixels"  # k = max(ipc, 10), not ipc
    assert cfg.resolved(tiny, 3, 100) == cfg  # idempotent
    assert I.INITIALIZERS.get("sensitivity").Config().resolved(tiny, 12, 100).k == 12
    assert I.INITIALIZERS.get("sensitivity").Config(k=4).resolved(tiny, 12, 100).k == 4


def test_features_shapes(tiny):
    g = torch.Generator().manual_seed(0)
    assert features(tiny, "pixels").shape == (36, 64)
    emb = features(tiny, "embedding", g, {"width": 8, "depth": 2})
    assert emb.shape[0] == 36 and torch.isfinite(emb).all()


def test_ipc_equal_to_class_size_takes_every_image(tiny):
    for name in ("herding", "kcenter", "kmeans", "sensitivity", "krr-sensitivity"):
        r = make(name, tiny, 12)
        assert sorted(r.indices.tolist()) == list(range(36))


def test_herding_first_pick_is_nearest_the_mean_and_matches_the_mean():
    f = torch.tensor([[0.0, 0.0], [4.0, 0.0], [1.9, 0.1], [0.0, 4.0]], dtype=torch.float64)  # mean (1.475, 1.025)
    order = selection.herd(f, 3)
    assert order[0] == 2
    mu = f.mean(0)
    # each further pick makes the running mean closest to mu among the remaining candidates
    chosen = order[:2].tolist()
    best = min((i for i in range(4) if i not in chosen), key=lambda i: float((f[chosen + [i]].mean(0) - mu).norm()))
    assert order[2] == best


def test_kcenter_picks_the_farthest_point_next():
    f = torch.tensor([[0.0], [1.0], [1.2], [10.0]], dtype=torch.float64)
    picks, dist = selection.k_center(f, 2)
    assert picks.tolist() == [2, 3]  # nearest the mean (3.05) first, then the farthest from it
    assert torch.allclose(dist, torch.tensor([1.2, 0.2, 0.0, 0.0], dtype=torch.float64))


def test_kmeans_sensitivity_by_hand():
    # two clusters: A = {p0, p1} with d^2 = 0 and 4, B = {p2} with d^2 = 2; n = 3, k = 2
    d2 = torch.tensor([0.0, 4.0, 2.0], dtype=torch.float64)
    assign = torch.tensor([0, 0, 1])
    a = 16 * (math.log(2) + 2)
    c = 2.0  # mean of d^2
    expected = torch.tensor([
        a * 0 / c + 2 * a * 4 / (2 * c) + 4 * 3 / 2,
        a * 4 / c + 2 * a * 4 / (2 * c) + 4 * 3 / 2,
        a * 2 / c + 2 * a * 2 / (1 * c) + 4 * 3 / 1,
    ], dtype=torch.float64)
    s = sensitivity.kmeans_sensitivity(d2, assign, 2)
    assert torch.allclose(s, expected)
    assert math.isclose(float(s.sum()), 3 * (3 * a + 4 * 2))  # n (3 alpha + 4 k')


def des_raj(p: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Des Raj weights of the rows ``order`` drawn in that order, by the textbook formula."""
    m, out, before = len(order), [], 0.0
    for j, i in enumerate(order, start=1):
        out.append(((1 - before) / float(p[i]) + (m - j)) / m)
        before += float(p[i])
    return torch.tensor(out, dtype=torch.float64)


def test_sensitivity_weights_are_des_raj_weights_of_the_draw(tiny):
    r = make("sensitivity", tiny, 2)
    for c, idx in enumerate(tiny.class_indices()):
        s = r.scores[idx].double()
        picked = r.indices[2 * c : 2 * c + 2]
        order = [int((idx == i).nonzero()) for i in picked]  # the draw order is kept
        assert torch.allclose(r.weights[2 * c : 2 * c + 2].double(), des_raj(s / s.sum(), order), rtol=1e-5)


def test_distinct_importance_sample_is_exactly_unbiased_by_enumeration():
    # every ordered pair (i, j) of 4 rows has probability p_i p_j / (1 - p_i) under successive sampling
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    y = torch.tensor([5.0, -1.0, 2.0, 7.0], dtype=torch.float64)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            if i != j:
                w = des_raj(p, [i, j])
                expected += float(p[i] * p[j] / (1 - p[i])) * float(w[0] * y[i] + w[1] * y[j])
    assert math.isclose(expected, float(y.sum()), rel_tol=1e-12)
    # 1 / (m p), the old weights of a draw without replacement, overestimate a rare row's total by 17%
    rare = [1.0, 0.0, 0.0, 0.0]
    old = sum(float(p[i] * p[j] / (1 - p[i])) * (rare[i] / (2 * float(p[i])) + rare[j] / (2 * float(p[j])))
              for i in range(4) for j in range(4) if i != j)
    assert old > 1.15


def test_distinct_importance_sample_draws_distinct_rows_in_successive_order():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    firsts = torch.zeros(4)
    for _ in range(4000):
        pick, w = sensitivity.distinct_importance_sample(s, 3, g)
        assert len(set(pick.tolist())) == 3 and (w > 0).all()
        assert torch.allclose(w, des_raj(s / s.sum(), pick.tolist()))
        firsts[pick[0]] += 1
    assert torch.allclose(firsts / 4000, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03)  # first draw ~ p


def test_importance_sample_draws_with_replacement_and_weights_one_over_m_p():
    s = torch.tensor([1.0, 1.0, 8.0], dtype=torch.float64)
    pick, w = sensitivity.importance_sample(s, 50, torch.Generator().manual_seed(0))
    assert pick.shape == (50,) and len(set(pick.tolist())) < 50  # rows repeat: with replacement
    assert torch.allclose(w, 1 / (50 * (s / s.sum())[pick]))


def test_leverage_scores_sum_to_effective_degrees_of_freedom():
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(30, 8, generator=g, dtype=torch.float64)
    k = phi @ phi.T
    lam = 0.5
    dof = torch.trace(k @ torch.linalg.inv(k + lam * torch.eye(30, dtype=torch.float64)))
    tau_dual = leverage.ridge_leverage(lam, kernel=k)
    tau_primal = leverage.ridge_leverage(lam, phi=phi)
    assert torch.allclose(tau_dual, tau_primal, atol=1e-8)
    assert torch.allclose(tau_dual.sum(), dof)
    assert ((tau_dual >= 0) & (tau_dual <= 1)).all()
    # a duplicated point shares its leverage; an outlier direction has high leverage
    phi2 = torch.cat([phi, phi[:1], 10 * torch.eye(8, dtype=torch.float64)[:1]])
    tau2 = leverage.ridge_leverage(lam, phi=phi2)
    assert tau2[-1] > tau2[:30].max()


def test_krr_sensitivity_scores_are_leverage_scores(tiny):
    r = make("krr-sensitivity", tiny, 1, kernel="linear")
    for idx in tiny.class_indices():
        f = tiny.x_train[idx].flatten(1).double()
        k = f @ f.T
        lam = 0.1 * float(k.diagonal().mean())
        expected = torch.diagonal(k @ torch.linalg.inv(k + lam * torch.eye(len(idx), dtype=torch.float64)))
        assert torch.allclose(r.scores[idx].double(), expected, atol=1e-5)


def test_rbf_random_features_path_matches_the_exact_kernel_closely():
    data = tiny_data(classes=2, per_class=40, seed=1)
    exact = make("krr-sensitivity", data, 2, seed=0).scores
    approx = make("krr-sensitivity", data, 2, seed=0, exact_max=10, rff_dim=20000).scores
    assert torch.corrcoef(torch.stack([exact, approx]))[0, 1] > 0.9
