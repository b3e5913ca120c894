import pytest
import torch

from distill_core import initializers
from distill_core.initializers import correct
from distill_core.methods import experts
from distill_core.methods.experts import ExpertSpec
from distill_core.nets.networks import NetConfig, create_net

NET = NetConfig(width=4, depth=1)
STRATEGY = "color_crop"
SPEC = ExpertSpec(count=2, epochs=3, lr=0.05, batch=16, seed=0)


def test_trajectories_have_every_epoch_and_named_parameters(tiny, tmp_path):
    ex = experts.load_or_train(tiny, NET, STRATEGY, SPEC, tmp_path)
    model = create_net(NET, tiny.channels, tiny.im_size, tiny.num_classes, torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_parameters()]
    assert len(ex.trajectories) == SPEC.count
    for traj in ex.trajectories:
        assert len(traj) == SPEC.epochs + 1  # epoch 0 is the initialisation
        assert all(list(params) == names for params in traj)
        assert all(torch.isfinite(v).all() for params in traj for v in params.values())
        # training moved the weights, every epoch
        for a, b in zip(traj, traj[1:], strict=False):
            assert sum(((a[k] - b[k]) ** 2).sum() for k in names) > 0
    assert ex.logits[0].shape == (tiny.x_train.shape[0], tiny.num_classes)
    # the experts differ from one another (own seeds)
    assert not torch.equal(ex.trajectories[0][0][names[0]], ex.trajectories[1][0][names[0]])


def test_cache_hit_on_second_load(tiny, tmp_path, monkeypatch):
    phases = []
    first = experts.load_or_train(tiny, NET, STRATEGY, SPEC, tmp_path, report=lambda p, f: phases.append(p))
    assert any("training experts" in p for p in phases)

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(experts, "train_expert", no_training)
    second = experts.load_or_train(tiny, NET, STRATEGY, SPEC, tmp_path)
    assert second.path == first.path
    for t1, t2 in zip(first.trajectories, second.trajectories, strict=True):
        for p1, p2 in zip(t1, t2, strict=True):
            assert all(torch.equal(p1[k], p2[k]) for k in p1)
    # fewer experts reuse the same files
    one = experts.load_or_train(tiny, NET, STRATEGY, ExpertSpec(1, 3, 0.05, 16, 0), tmp_path)
    assert len(one.trajectories) == 1 and one.path == first.path


def test_an_expert_reports_progress_inside_its_epochs(tiny, monkeypatch):
    """36 training images in batches of 16: three minibatches an epoch. With no time limit between
    reports, the expert says how far it is after each one, not only at the end of each epoch, and
    then through its final logits (passes of 20 images here), weighed as a third of an epoch."""
    monkeypatch.setattr(experts, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(experts, "in_passes", lambda fn, x: torch.cat([fn(x[s : s + 20]) for s in range(0, x.shape[0], 20)]))
    seen = []
    experts.train_expert(tiny, NET, STRATEGY, SPEC, 0, seen.append)
    units = 3 + 1 / 3
    epochs = [e + d / 36 for e in range(3) for d in (16, 32, 36, 36)]  # each epoch's end is reported twice
    logits = [3 + d / 36 / 3 for d in (20, 36)]
    assert seen == pytest.approx([u / units for u in epochs + logits] + [1.0])


def test_cache_key_follows_the_configuration(tiny):
    base = experts.cache_key(tiny, NET, STRATEGY, SPEC)
    assert base == experts.cache_key(tiny, NET, STRATEGY, SPEC)
    assert base != experts.cache_key(tiny, NetConfig(width=8, depth=1), STRATEGY, SPEC)
    assert base != experts.cache_key(tiny, NET, "crop", SPEC)
    assert base == experts.cache_key(tiny, NET, STRATEGY, ExpertSpec(2, 4, 0.05, 16, 0))  # epochs: in the file name
    assert base != experts.cache_key(tiny, NET, STRATEGY, ExpertSpec(2, 3, 0.05, 16, 1))
    assert base != experts.cache_key(tiny, NET, STRATEGY, ExpertSpec(2, 3, 0.01, 16, 0))


def test_experts_trained_under_other_augmentation_draws_are_not_reused(tiny, monkeypatch):
    from distill_core.data import augment
    from distill_core.evaluation import baselines
    from distill_core.evaluation.protocol import EvalConfig

    before = experts.cache_key(tiny, NET, STRATEGY, SPEC), experts.cache_key(tiny, NET, "", SPEC)
    cfg = EvalConfig(nets=1, epochs=2)
    baseline = baselines.cache_key(tiny, 1, cfg, NET, STRATEGY, 0, "fp32")
    monkeypatch.setattr(augment, "DRAWS", augment.DRAWS + 1)
    assert experts.cache_key(tiny, NET, STRATEGY, SPEC) != before[0]
    assert experts.cache_key(tiny, NET, "", SPEC) == before[1]  # no augmentation: no draws to differ
    assert baselines.cache_key(tiny, 1, cfg, NET, STRATEGY, 0, "fp32") != baseline


def test_storage_estimate_matches_the_files(tiny, tmp_path):
    estimate = experts.storage_bytes(tiny, NET, SPEC)
    ex = experts.load_or_train(tiny, NET, STRATEGY, SPEC, tmp_path)
    on_disk = sum(f.stat().st_size for f in ex.path.iterdir())
    assert estimate <= on_disk < 1.5 * estimate + 20_000  # safetensors adds a small header per file
    assert experts.estimate_seconds(tiny, NET, STRATEGY, SPEC) > 0


def test_over_budget_fails_with_what_to_do(tiny, tmp_path):
    with pytest.raises(ValueError, match="budget") as err:
        experts.load_or_train(tiny, NET, STRATEGY, SPEC, tmp_path, budget_seconds=1e-9)
    assert "expert_count" in str(err.value) and "MB" in str(err.value)
    assert not any(tmp_path.rglob("*.safetensors"))  # nothing trained


def test_same_seed_same_expert(tiny, tmp_path):
    a, la = experts.train_expert(tiny, NET, STRATEGY, SPEC, 0)
    b, lb = experts.train_expert(tiny, NET, STRATEGY, SPEC, 0)
    assert all(torch.equal(a[-1][k], b[-1][k]) for k in a[-1]) and torch.equal(la, lb)


def test_correct_initializer_picks_only_correct_images(tiny, gen):
    y = tiny.y_train
    logits = torch.nn.functional.one_hot(y, tiny.num_classes).float() * 5
    wrong = torch.arange(0, y.shape[0], 2)  # every other image is misclassified
    logits[wrong] = torch.nn.functional.one_hot((y[wrong] + 1) % tiny.num_classes, tiny.num_classes).float() * 5
    res = correct.correct_from_logits(tiny, 3, gen, logits)
    assert res.indices.shape == (3 * tiny.num_classes,)
    assert (res.indices % 2 == 1).all()
    assert torch.equal(res.labels, y[res.indices])
    assert res.scores.shape == (y.shape[0],) and (res.scores[wrong] < 0.5).all()


def test_correct_initializer_trains_an_expert_when_none_given(tiny, gen, tmp_path):
    res = initializers.create("correct", tiny, 2, gen, net={"width": 4, "depth": 1}, cache_dir=str(tmp_path), expert_epochs=3)
    spec = experts.default_spec(tiny)
    spec = ExpertSpec(1, 3, spec.lr, spec.batch, spec.seed)
    strategy = "color_crop_cutout_flip_scale_rotate"  # the default for a dataset whose classes survive flips
    folder = experts.cache_path(tmp_path, tiny, NET, strategy, spec)
    assert experts.expert_file(folder, 0, 3).exists()  # trained and cached for later runs
    right = experts.load_or_train(tiny, NET, strategy, spec, tmp_path).logits[0].argmax(1) == tiny.y_train
    for c in range(tiny.num_classes):
        picked = res.indices[c * 2 : (c + 1) * 2]
        if int((right & (tiny.y_train == c)).sum()) >= 2:
            assert right[picked].all()
    with pytest.raises(ValueError, match="unknown option"):
        initializers.create("correct", tiny, 2, gen, bogus=1)


def test_a_longer_cached_expert_serves_a_shorter_request(tiny, tmp_path, monkeypatch):
    """Expert k's first E epochs do not depend on how long it trains: a cached 5-epoch expert gives a
    3-epoch request the same trajectory and final logits as training 3 epochs would."""
    short_spec = ExpertSpec(count=1, epochs=3, lr=0.05, batch=16, seed=0)
    trained, logits = experts.train_expert(tiny, NET, STRATEGY, short_spec, 0)
    experts.load_or_train(tiny, NET, STRATEGY, ExpertSpec(count=1, epochs=5, lr=0.05, batch=16, seed=0), tmp_path)
    monkeypatch.setattr(experts, "train_expert", lambda *a, **k: pytest.fail("the longer expert should serve"))
    assert experts.cached_count(tmp_path, tiny, NET, STRATEGY, short_spec) == 1
    served = experts.load_or_train(tiny, NET, STRATEGY, short_spec, tmp_path)
    assert len(served.trajectories[0]) == 4
    for a, b in zip(served.trajectories[0], trained, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.allclose(served.logits[0], logits, atol=1e-5)
    # a longer request than any cached expert trains anew
    assert experts.cached_count(tmp_path, tiny, NET, STRATEGY, ExpertSpec(count=1, epochs=6, lr=0.05, batch=16, seed=0)) == 0


def test_snapshots_within_a_pass(tiny, monkeypatch):
    """``checkpoints`` = u saves the parameters u times a pass, each after a disjoint part of the
    pass's shuffled order (u parts make one pass), so the trajectory's epochs count snapshots; the
    logits are those of the last snapshot; the spec without it keeps the cache key of old experts."""
    spec = ExpertSpec(count=1, epochs=5, lr=0.05, batch=4, seed=0, checkpoints=3)
    parts = []
    original = experts.train_epoch

    def spy(model, opt, x, y, *args, **kwargs):
        parts.append(x.clone())
        return original(model, opt, x, y, *args, **kwargs)

    monkeypatch.setattr(experts, "train_epoch", spy)
    trajectory, logits = experts.train_expert(tiny, NET, STRATEGY, spec, 0)
    n = tiny.x_train.shape[0]
    assert len(trajectory) == 6 and [p.shape[0] for p in parts] == [n // 3] * 5
    first_pass = torch.cat(parts[:3]).flatten(1)
    assert torch.unique(first_pass, dim=0).shape[0] == torch.unique(tiny.x_train[:].flatten(1), dim=0).shape[0]  # every image once
    assert all(not torch.equal(trajectory[e]["classifier.weight"], trajectory[e + 1]["classifier.weight"]) for e in range(5))
    model = create_net(NET, tiny.channels, tiny.im_size, tiny.num_classes, torch.Generator().manual_seed(0))
    model.load_state_dict(trajectory[-1], strict=False)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(logits, model(tiny.x_train[:]), atol=1e-5)
    assert experts.steps_per_epoch(tiny, spec) == 3  # 12 images in batches of 4
    old = ExpertSpec(2, 3, 0.05, 16, 0)
    assert experts.cache_key(tiny, NET, STRATEGY, old) == experts.cache_key(tiny, NET, STRATEGY, ExpertSpec(2, 3, 0.05, 16, 0, 1))
    assert experts.cache_key(tiny, NET, STRATEGY, ExpertSpec(2, 3, 0.05, 16, 0, 3)) != experts.cache_key(tiny, NET, STRATEGY, old)
