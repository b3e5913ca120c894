"""Networks trained as one group (``grouped``, ``stacked``) are the networks trained one after another:
same seeds, same data order, same augmentation draws, same parameters and accuracies (fp32, CPU)."""
from dataclasses import replace

import pytest
import torch

from distill_core.data import augment
from distill_core.evaluation import grouped
from distill_core.evaluation.protocol import EvalConfig, NetworkTask, network_seeds, train_group, train_network
from distill_core.nets import stacked
from distill_core.nets.networks import NetConfig, create_net
from distill_core.synthetic import loss_weights
from tests.conftest import tiny_data

STRATEGY = augment.DEFAULT_STRATEGY
TOL = 1e-4  # float rounding of grouped convolutions and packed augmentation, after tens of SGD steps


@pytest.mark.parametrize("family", augment.FAMILIES)
def test_a_packed_draw_transforms_images_as_the_draw_does(family):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 28, 28)
    for _ in range(3):
        params = augment.draw(family, 12, g)
        assert torch.allclose(augment.apply_packed(x, augment.pack(params, 12, (28, 28))), augment.apply(x, params), atol=1e-5)


@pytest.mark.parametrize("cfg", [NetConfig(width=8, depth=3), NetConfig(width=8, depth=2, norm="layer", pool="max"),
                                 NetConfig(width=8, depth=2, norm="none", act="leakyrelu")])
def test_stacked_networks_compute_what_each_computes_alone(cfg):
    nets = [create_net(cfg, 3, (28, 28), 10, torch.Generator().manual_seed(i)) for i in range(4)]
    x = torch.randn(4, 5, 3, 28, 28)
    alone = torch.stack([net(x[k]) for k, net in enumerate(nets)])
    assert torch.allclose(stacked.forward(nets[0], stacked.stack(nets), x), alone, atol=1e-5)
    assert stacked.supports(cfg) and not stacked.supports(NetConfig(norm="batch")) and not stacked.supports(NetConfig(name="mlp"))


@pytest.mark.parametrize("soft,weighted", [(False, False), (True, False), (False, True), (True, True)])
def test_a_group_trains_the_networks_that_train_one_after_another(soft, weighted):
    """Also with per-image loss weights (``syn_weights="coreset"``): each network's minibatch weights
    follow its own data order in the group as alone."""
    data = tiny_data(classes=3, per_class=12, side=8)
    labels = torch.nn.functional.one_hot(data.y_train, 3).float() * 3 if soft else data.y_train
    weights = loss_weights(torch.rand(36, generator=torch.Generator().manual_seed(1)) + 0.2, data.y_train) if weighted else None
    arch = NetConfig(width=8, depth=2)
    cfg = EvalConfig(nets=3, epochs=6, batch=16)  # 36 images: two full minibatches and a short one an epoch
    seeds = network_seeds(torch.Generator().manual_seed(0), 3)

    alone = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        net = create_net(arch, 1, (8, 8), 3, g)
        alone.append(train_network(net, data.x_train[:], labels, cfg, STRATEGY, g, weights=weights))

    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    group = grouped.Group.of([create_net(arch, 1, (8, 8), 3, g) for g in gens], cfg.lr, cfg.momentum, cfg.weight_decay)
    trainer = grouped.Trainer(group, data.x_train[:].unsqueeze(0), labels.unsqueeze(0), cfg.batch, STRATEGY, gens,
                              None if weights is None else weights.unsqueeze(0))
    trainer.train(cfg.epochs, lambda e: cfg.lr * 0.1 if e == cfg.epochs // 2 else None)

    for k, net in enumerate(alone):
        for name, p in net.named_parameters():
            assert (p - group.params[name][k]).abs().max() < TOL, (k, name)
    moved = [(dict(alone[0].named_parameters())[n] - p).abs().max() for n, p in create_net(arch, 1, (8, 8), 3,
             torch.Generator().manual_seed(seeds[0])).named_parameters()]
    assert max(moved) > 100 * TOL  # the networks did train: equal parameters are not just their initialisation
    if weighted:  # the weights made a difference: the unweighted networks are others
        g = torch.Generator().manual_seed(seeds[0])
        plain = train_network(create_net(arch, 1, (8, 8), 3, g), data.x_train, labels, cfg, STRATEGY, g)
        assert max((p - q).abs().max() for p, q in zip(plain.parameters(), alone[0].parameters(), strict=True)) > 10 * TOL


@pytest.mark.parametrize("weighted", [False, True])
def test_the_evaluation_through_a_group_gives_the_accuracies_of_one_after_another(weighted):
    data = tiny_data(classes=3, per_class=12, side=8)
    cfg = EvalConfig(nets=4, epochs=8, batch=16)
    task = NetworkTask(data.x_test, data.y_test, (1, (8, 8), 3), NetConfig(width=8, depth=2), cfg, STRATEGY, lr=0.02)
    subsets = [torch.randperm(36, generator=torch.Generator().manual_seed(i))[:9] for i in range(4)]
    draw = torch.Generator().manual_seed(7)
    items = [(s, data.x_train[idx], data.y_train[idx], loss_weights(torch.rand(9, generator=draw) + 0.2, data.y_train[idx]))
             if weighted else (s, data.x_train[idx], data.y_train[idx], None)
             for s, idx in zip(network_seeds(torch.Generator().manual_seed(0), 4), subsets, strict=True)]
    one_by_one = [task(item) for item in items]
    assert train_group(task, items) == pytest.approx(one_by_one, abs=1e-9)
    assert len(set(one_by_one)) > 1  # different subsets and seeds: different networks


def test_groups_split_by_size_and_halve_on_out_of_memory():
    seen = []

    def train(part):
        if len(part) > 2:
            raise torch.OutOfMemoryError("no room")
        seen.append(list(part))

    with pytest.raises(torch.OutOfMemoryError):  # a CPU does not retry: its memory is not a GPU's
        grouped.in_groups(5, 4, train, torch.device("cpu"))
    seen.clear()
    grouped.in_groups(5, 2, train, torch.device("cpu"))
    assert seen == [[0, 1], [2, 3], [4]]
    assert grouped.group_size(7, torch.device("cpu"), (10**12, 10**12)) == 7


def test_experts_trained_as_a_group_are_the_experts_trained_one_by_one():
    from distill_core.methods import experts

    data = tiny_data(classes=3, per_class=12, side=8)
    net, spec = NetConfig(width=8, depth=2), experts.ExpertSpec(count=3, epochs=3, batch=16)
    got, fractions = {}, []
    experts.train_experts_grouped(data, net, "color_crop_scale", spec, [0, 2], lambda k, t, lg: got.update({k: (t, lg)}),
                                  fractions.append)
    assert sorted(got) == [0, 2] and fractions[-1] == pytest.approx(1.0)
    for k in (0, 2):
        trajectory, logits = experts.train_expert(data, net, "color_crop_scale", spec, k)
        assert len(got[k][0]) == len(trajectory) == spec.epochs + 1
        for epoch, params in enumerate(trajectory):
            for name, p in params.items():
                assert (p - got[k][0][epoch][name]).abs().max() < TOL, (k, epoch, name)
        assert torch.allclose(logits, got[k][1], atol=1e-3)


def test_experts_with_snapshots_within_a_pass_do_not_train_as_a_group():
    from distill_core.methods import experts

    cuda, net = torch.device("cuda"), NetConfig(width=8, depth=2)
    assert experts.trains_as_group(cuda, net, experts.ExpertSpec(), in_process=True)
    assert not experts.trains_as_group(cuda, net, experts.ExpertSpec(checkpoints=10), in_process=True)
    assert not experts.trains_as_group(torch.device("cpu"), net, experts.ExpertSpec(), in_process=True)
    assert not experts.trains_as_group(cuda, net, experts.ExpertSpec(), in_process=False)
    assert not experts.trains_as_group(cuda, NetConfig(name="mlp"), experts.ExpertSpec(), in_process=True)
    with pytest.raises(ValueError, match="one by one"):
        experts.train_experts_grouped(tiny_data(), net, "", experts.ExpertSpec(checkpoints=2), [0], lambda *a: None)


def test_a_cpu_groups_only_networks_whose_steps_are_tiny_and_each_network_epoch_is_asked():
    """On a CPU the evaluation trains a group where a step's images hold at most ``CPU_GROUP_PIXELS``
    pixels (the digits at IPC 1 and 2), one network after another above; either way ``stop`` is asked
    once per network and epoch (the run's progress counts those)."""
    from distill_core.evaluation import protocol

    data = tiny_data(classes=3, per_class=12, side=8)
    task = NetworkTask(data.x_test, data.y_test, (1, (8, 8), 3), NetConfig(width=8, depth=2), EvalConfig(nets=3, epochs=4, batch=256), "")

    def items(ipc: int) -> list:
        return [(s, data.x_train[: 3 * ipc], data.y_train[: 3 * ipc], None) for s in (1, 2, 3)]

    assert 3 * 2 * 64 <= protocol.CPU_GROUP_PIXELS < 3 * 7 * 64
    assert protocol.groupable(task, items(2)) and not protocol.groupable(task, items(7))
    assert not protocol.groupable(task, items(2)[:1])  # one network: nothing to group
    assert not protocol.groupable(replace(task, arch=NetConfig(name="mlp")), items(2))  # an MLP does not stack
    for ipc in (2, 7):
        asked: list[int] = []
        acc = protocol.train_networks(task, items(ipc), lambda asked=asked: asked.append(1) and False)
        assert acc.n == 3 and len(asked) == 3 * 4, ipc
