"""``--precision auto`` takes, per device type and hot loop, the row of ``precision.AUTO`` (what
``bench --speed`` measured faster): a run's distillation loop, its experts' epochs and its evaluation
networks each at their own row."""
import json

import pytest
import torch

from distill_core.cli import main
from distill_core.evaluation import protocol
from distill_core.methods import METHODS, experts
from distill_core.nets import precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
FAST = ["--iterations", "3", "--eval-nets", "1", "--eval-epochs", "2", "--width", "8", "--precision", "auto"]


def test_every_device_type_and_loop_has_its_measured_row(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    for loop in precision.LOOPS:
        assert precision.chosen("auto", CPU, loop) == "bf16"  # Zen 4 with AVX512-BF16: bf16 about halves every loop
        assert precision.chosen("auto", CUDA, loop) == "fp32"  # H200: launch-bound, bf16 slower in every loop
    assert precision.chosen("auto", CPU, None) == "bf16" and precision.chosen("auto", CUDA, "krr step") == "fp32"
    assert precision.chosen("bf16", CUDA, "dm step") == "bf16" and precision.chosen("fp32", CPU, "dm step") == "fp32"
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert {precision.chosen("auto", CPU, loop) for loop in precision.LOOPS} == {"fp32"}  # never emulated bf16
    # every method that runs a measured loop names it
    assert {METHODS.get(m).declares.loop for m in ("dm", "dc", "dsa", "mtt", "datm", "iadd")} == {"dm step", "dsa outer", "tm step"}


def test_an_fp32_loop_inside_a_bf16_one_turns_autocast_off():
    with precision.autocast("bf16", CPU):
        assert torch.is_autocast_enabled("cpu")
        with precision.autocast("fp32", CPU):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("method", ["dm", "mtt"])
def test_a_run_takes_each_loops_own_row(method, tmp_path, monkeypatch):
    """With the table turned round (distillation fp32, experts and evaluation bf16), a run at ``auto``
    steps without autocast, trains its experts and its evaluation networks under it, and keys its
    cached baseline by the evaluation's precision."""
    monkeypatch.setenv("HOME", str(tmp_path))  # a fresh expert and baseline cache
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "AUTO", {("cpu", "dm step"): "fp32", ("cpu", "tm step"): "fp32",
                                            ("cpu", "expert epoch"): "bf16", ("cpu", "evaluation"): "bf16"})
    seen: dict[str, set] = {"step": set(), "expert": set(), "evaluation": set()}
    cls = METHODS.get(method)
    real_step = cls.step
    monkeypatch.setattr(cls, "step", lambda self: seen["step"].add(torch.is_autocast_enabled("cpu")) or real_step(self))
    real_train = experts.train_expert
    monkeypatch.setattr(experts, "train_expert",
                        lambda *a, **k: seen["expert"].add(torch.is_autocast_enabled("cpu")) or real_train(*a, **k))
    real_networks = protocol.train_networks
    monkeypatch.setattr(protocol, "train_networks", lambda task, *a, **k: seen["evaluation"].add(task.precision) or real_networks(task, *a, **k))
    extra = ["--set", "expert_count=1", "--set", "expert_train_epochs=2", "--set", "max_start_epoch=1", "--set", "expert_epochs=1",
             "--set", "syn_steps=2"] if method == "mtt" else []
    out = tmp_path / "run"
    assert main(["run", "--dataset", "digits", "--method", method, "--ipc", "1", "--out", str(out), *FAST, *extra]) == 0
    assert seen["step"] == {False} and seen["evaluation"] == {"bf16"}
    assert seen["expert"] == ({True} if method == "mtt" else set())
    cached = [json.loads(p.read_text()) for p in (tmp_path / ".cache" / "distill_explorer" / "baselines").glob("*.json")]
    assert [c["key"]["precision"] for c in cached] == ["bf16"]
