"""FTD's expert recipe (``methods.ftd``): the GSAM step against the update written out by hand, the
pass's draws, the cache keeping recipes apart, the group path refusing it, and the tiers choosing it."""
from dataclasses import replace

import pytest
import torch
from conftest import tiny_data
from torch import nn
from torch.func import functional_call

from distill_core.config import RunConfig, resolve
from distill_core.evaluation.protocol import train_epoch
from distill_core.methods import experts, ftd
from distill_core.methods.experts import ExpertSpec
from distill_core.nets.networks import NetConfig, create_net

NET = NetConfig(width=4, depth=1)
STRATEGY = "color_crop"
SPEC = ExpertSpec(count=1, epochs=2, lr=0.05, batch=16, seed=0)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def by_hand(net: nn.Module, x, y, lr, rho, alpha, adaptive=True) -> dict[str, torch.Tensor]:
    """GSAM's update written out on flat vectors: g at w, e = ρ w² g / ‖|w| g‖ (ASAM) or ρ g / ‖g‖,
    g' at w + e, g⊥ = g − cos(g, g') ‖g‖ g'/‖g'‖, w − lr (g' − α g⊥)."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    w = torch.cat([p.detach().flatten() for _, p in net.named_parameters()])

    def grad(v: torch.Tensor) -> torch.Tensor:
        v = v.clone().requires_grad_(True)
        params = dict(zip(names, (t.view(s) for t, s in zip(v.split([s.numel() for s in shapes]), shapes, strict=True)), strict=True))
        loss = nn.functional.cross_entropy(functional_call(net, params, (x,)), y)
        return torch.autograd.grad(loss, v)[0]

    g = grad(w)
    e = rho * w**2 * g / (w.abs() * g).norm() if adaptive else rho * g / g.norm()
    g2 = grad(w + e)
    cos = g @ g2 / (g.norm() * g2.norm())
    g_perp = g - cos * g.norm() * g2 / g2.norm()
    new = w - lr * (g2 - alpha * g_perp)
    return dict(zip(names, (t.view(s) for t, s in zip(new.split([s.numel() for s in shapes]), shapes, strict=True)), strict=True))


@pytest.mark.parametrize("adaptive", [True, False])
def test_one_step_is_the_gsam_update_by_hand(adaptive):
    net = tiny_net()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen)
    lr, rho, alpha = 0.5, 0.5, 0.3  # a large ρ: the perturbation changes the gradient visibly
    want = by_hand(net, x, y, lr, rho, alpha, adaptive)
    sgd = {n: p.detach() - lr * g for (n, p), g in zip(net.named_parameters(), torch.autograd.grad(
        nn.functional.cross_entropy(net(x), y), list(net.parameters())), strict=True)}
    opt = ftd.GSAM(net.parameters(), lr, rho=rho, alpha=alpha, adaptive=adaptive)

    def closure() -> torch.Tensor:  # as torch's optimizers take one: clear, compute, backpropagate
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.shape == () and torch.isfinite(loss)
    for n, p in net.named_parameters():
        assert torch.allclose(p.detach(), want[n], rtol=0, atol=1e-12), n
    assert max((p.detach() - sgd[n]).abs().max().item() for n, p in net.named_parameters()) > 1e-4  # not plain SGD


def test_the_recipe_constants_are_the_readme_command_lines():
    # README.md:31: --rho_max=0.01 --rho_min=0.01 --alpha=0.3 --mom=0.; adaptive by buffer_FTD.py's default
    assert (ftd.RHO, ftd.ALPHA, ftd.ADAPTIVE, ftd.MOMENTUM, ftd.WEIGHT_DECAY) == (0.01, 0.3, True, 0.0, 0.0)
    net = tiny_net()
    opt = ftd.GSAM(net.parameters(), 0.01)
    assert (opt.rho, opt.alpha, opt.adaptive) == (0.01, 0.3, True)
    assert opt.base.defaults["momentum"] == 0.0 and opt.base.defaults["weight_decay"] == 0.0


def test_a_pass_draws_as_the_plain_sgd_pass():
    """With ρ = 0 and α = 0 GSAM is SGD: the pass with it then gives the plain pass's parameters, so
    both recipes shuffle and augment alike (an expert's k-th generator serves either)."""
    data = tiny_data()
    nets = [create_net(NET, data.channels, data.im_size, data.num_classes, torch.Generator().manual_seed(0)) for _ in range(2)]
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    train_epoch(nets[0], torch.optim.SGD(nets[0].parameters(), lr=0.05), data.x_train, data.y_train, 16, STRATEGY, gens[0])
    train_epoch(nets[1], ftd.GSAM(nets[1].parameters(), 0.05, rho=0.0, alpha=0.0), data.x_train, data.y_train, 16, STRATEGY, gens[1])
    for (n, a), (_, b) in zip(nets[0].named_parameters(), nets[1].named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n
    assert torch.equal(gens[0].get_state(), gens[1].get_state())


def test_ftd_experts_are_cached_apart_from_sgd_ones(tmp_path):
    data = tiny_data()
    ftd_spec = replace(SPEC, recipe="ftd")
    sgd_key = experts.cache_key(data, NET, STRATEGY, SPEC)
    assert sgd_key == experts.cache_key(data, NET, STRATEGY, replace(SPEC, recipe="sgd"))
    assert sgd_key != experts.cache_key(data, NET, STRATEGY, ftd_spec)
    assert experts.cache_path(tmp_path, data, NET, STRATEGY, SPEC) != experts.cache_path(tmp_path, data, NET, STRATEGY, ftd_spec)
    plain = experts.load_or_train(data, NET, STRATEGY, SPEC, tmp_path)
    assert experts.cached_count(tmp_path, data, NET, STRATEGY, ftd_spec) == 0  # the SGD experts do not serve FTD
    sharp = experts.load_or_train(data, NET, STRATEGY, ftd_spec, tmp_path)
    first, last = plain.trajectories[0], sharp.trajectories[0]
    assert all(torch.equal(first[0][n], last[0][n]) for n in first[0])  # the same initialisation (generator k)
    assert any(not torch.allclose(first[-1][n], last[-1][n], atol=1e-6) for n in first[-1])  # trained differently


def test_ftd_experts_train_one_by_one_on_a_gpu():
    cuda, net = torch.device("cuda"), NetConfig(width=8, depth=2)
    assert experts.trains_as_group(cuda, net, ExpertSpec(), in_process=True)
    assert not experts.trains_as_group(cuda, net, ExpertSpec(recipe="ftd"), in_process=True)
    with pytest.raises(ValueError, match="one by one"):
        experts.train_experts_grouped(tiny_data(), net, "", ExpertSpec(recipe="ftd"), [0], lambda *a: None)


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown expert recipe"):
        ExpertSpec(recipe="adam")


def test_datm_paper_tier_trains_ftd_experts_quick_and_mtt_plain_sgd():
    cifar10 = replace(tiny_data(classes=10, side=32, channels=3), name="cifar10")

    def recipe(method: str, tier: str, **options) -> str:
        cfg = resolve(RunConfig(dataset="cifar10", method=method, ipc=10, tier=tier, options=options), cifar10)
        return cfg.method_config().expert_spec().recipe

    assert recipe("datm", "paper") == "ftd"
    assert recipe("datm", "quick") == "sgd"
    assert recipe("mtt", "paper") == "sgd" and recipe("iadd", "paper") == "sgd"
    assert recipe("datm", "paper", expert_recipe="sgd") == "sgd"  # a user's setting wins
    assert recipe("mtt", "quick", expert_recipe="ftd") == "ftd"
