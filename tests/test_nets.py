import ast
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from distill_core.nets.networks import NETS, NetConfig, create_net, in_passes
from distill_core.nets.precision import compiled, compiling

SHAPES = [(1, (8, 8)), (1, (28, 28)), (3, (32, 32))]


@pytest.mark.parametrize("name", NETS.names())
@pytest.mark.parametrize("channels,size", SHAPES)
def test_every_net_classifies_and_embeds(name, channels, size):
    net = create_net(NetConfig(name=name, width=16, depth=2), channels, size, 7, torch.Generator().manual_seed(0))
    x = torch.randn(3, channels, *size)
    assert net(x).shape == (3, 7)
    assert net.embed(x).shape[0] == 3
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    out = functional_call(net, params, (x,))
    assert torch.allclose(out, net(x), atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in params.values())


@pytest.mark.parametrize("norm", ["instance", "batch", "layer", "none"])
@pytest.mark.parametrize("pool", ["avg", "max", "none"])
def test_convnet_fields(norm, pool):
    cfg = NetConfig(width=8, depth=3, norm=norm, pool=pool, act="leakyrelu")
    net = create_net(cfg, 1, (28, 28), 10, torch.Generator().manual_seed(0))
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    if pool != "none":
        assert net.embed(torch.randn(1, 1, 28, 28)).shape[1] == 8 * 4 * 4  # 28 padded to 32, three halvings


def test_weights_follow_the_generator_not_the_global_rng():
    state = torch.get_rng_state()
    a = create_net(NetConfig(width=8), 1, (8, 8), 10, torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(123)
    b = create_net(NetConfig(width=8), 1, (8, 8), 10, torch.Generator().manual_seed(5))
    c = create_net(NetConfig(width=8), 1, (8, 8), 10, torch.Generator().manual_seed(6))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bad_config_messages():
    with pytest.raises(ValueError, match="unknown network 'vgg'; known: convnet"):
        NetConfig(name="vgg")
    with pytest.raises(ValueError, match="unknown norm"):
        NetConfig(norm="group")
    with pytest.raises(ValueError, match="width must be 1 to 512, got 0"):
        NetConfig(width=0)
    with pytest.raises(ValueError, match="width must be 1 to 512, got 100000"):  # would allocate until memory ran out
        NetConfig(width=100_000)
    with pytest.raises(ValueError, match="depth must be 1 to 6, got 7"):
        NetConfig(depth=7)


def test_engine_never_imports_streamlit():
    for path in Path("distill_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "streamlit" for n in names), path


def test_passes_of_a_few_rows_give_the_one_pass_result():
    net = create_net(NetConfig(width=4, depth=2), 1, (8, 8), 3, torch.Generator().manual_seed(0))
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = net.embed(x)
        torch.testing.assert_close(in_passes(net.embed, x, rows=3), whole)
        assert in_passes(net.embed, x, rows=3).shape == (10, whole.shape[1])


def test_a_network_is_compiled_only_inside_compiling_and_computes_the_same():
    net = create_net(NetConfig(width=4, depth=1), 1, (8, 8), 3, torch.Generator().manual_seed(0))
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    eager = net(x)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), x)
    assert compiled(net) is net and net.features._compiled_call_impl is None
    with compiling(True):
        compiled(net)
    assert net.features._compiled_call_impl is not None
    out = net(x)
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_out, g_eager, rtol=1e-4, atol=1e-5)
