import json

import numpy as np
import pytest
from safetensors.torch import load_file

from distill_core.cli import main

FAST = ["--iterations", "6", "--eval-nets", "1", "--eval-epochs", "5", "--width", "8", "--set", "batch_real=16"]


def test_run_writes_results_synthetic_set_and_grid(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--dataset", "digits", "--method", "dm", "--init", "random", "--ipc", "1", "--seed", "0", "--out", str(out), *FAST]) == 0
    r = json.loads((out / "results.json").read_text())
    for key in ("dataset", "method", "init", "ipc", "iterations", "seed", "device"):
        assert key in r
    assert r["iterations"] == 6 and r["device"] == "cpu"
    for key in ("accuracy", "baseline_random"):
        # one evaluation network: its accuracy is the mean (5 epochs leave it near chance, so no margin here)
        assert set(r[key]) >= {"mean", "std", "n"} and r[key]["n"] == 1 and r[key]["values"] == [r[key]["mean"]]
    assert r["seconds"]["distill"] > 0 and "evaluate" in r["seconds"]
    tensors = load_file(str(out / "synthetic.safetensors"))
    assert tensors["images"].shape == (10, 1, 8, 8) and tensors["labels"].tolist() == list(range(10))
    assert (out / "synthetic.png").stat().st_size > 100
    assert "accuracy" in capsys.readouterr().out
    # the saved set evaluates with the protocol
    assert main(["eval", "--synthetic", str(out / "synthetic.safetensors"), "--dataset", "digits", "--nets", "1", "--epochs", "5"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # same protocol and seeds as the run: the saved set gives the run's own numbers back
    assert shown["ipc"] == 1 and shown["accuracy"] == r["accuracy"] and shown["baseline_random"] == r["baseline_random"]


def test_eval_uses_the_precision_the_run_used(tmp_path, capsys, monkeypatch):
    """A set distilled and evaluated in bf16 is evaluated under bf16 autocast again, giving its own
    numbers back; ``--precision fp32`` asks for fp32."""
    from distill_core import cli

    asked = []
    real_running_at = cli.running_at
    monkeypatch.setattr(cli, "running_at",
                        lambda precision, device, loop: asked.append(precision) or real_running_at(precision, device, loop))
    out = tmp_path / "run"
    assert main(["run", "--dataset", "digits", "--method", "dm", "--ipc", "2", "--out", str(out), "--precision", "bf16",
                 *FAST, "--eval-epochs", "20"]) == 0  # the last --eval-epochs counts
    r = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    evaluate = ["eval", "--synthetic", str(out / "synthetic.safetensors"), "--dataset", "digits", "--nets", "1", "--epochs", "20"]
    assert main(evaluate) == 0
    shown = json.loads(capsys.readouterr().out)
    assert asked == ["bf16"] and shown["precision"] == "bf16" and shown["accuracy"] == r["accuracy"]
    assert main([*evaluate, "--precision", "fp32"]) == 0
    assert asked == ["bf16", "fp32"] and json.loads(capsys.readouterr().out)["precision"] == "fp32"


def write_bad_npz(path, kind):
    x = np.zeros((20, 8, 8), np.uint8)
    y = np.arange(20) % 2
    arrays = {"x_train": x, "y_train": y, "x_test": x[:4], "y_test": y[:4]}
    if kind == "missing":
        del arrays["y_train"]
    elif kind == "shape":
        arrays["x_train"] = np.zeros((20, 8), np.uint8)
    elif kind == "range":
        arrays["y_test"] = y[:4] + 7
    elif kind == "pickle":
        arrays["y_train"] = np.array([None] * 20, dtype=object)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "kind,message", [("missing", "lacks y_train"), ("shape", "shape"), ("range", "out of range"), ("pickle", "pickled")]
)
def test_malformed_npz_one_line_error_and_nothing_written(tmp_path, capsys, kind, message):
    out = tmp_path / "out"
    code = main(["run", "--dataset", write_bad_npz(tmp_path / f"{kind}.npz", kind), "--out", str(out), *FAST])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1 and err.startswith("error:")
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--init", "nope"], "unknown initializer 'nope'"),
        (["--ipc", "1000"], "ipc=1000 is larger"),
        (["--set", "lr_img"], "key=value"),
        (["--set", "lr_img=abc"], "lr_img must be a number, got 'abc'"),
        (["--set", "lr_img=nan"], "lr_img must be a number"),
        (["--set", "lr_img=-1"], "lr_img must be positive, got -1"),
        (["--set", "refresh_every=2.5"], "refresh_every must be a whole number, got 2.5"),
        (["--method", "dsa", "--set", "augment=abc"], "augment must be true or false"),
        (["--init", "kmeans", "--init-set", "features=nope"], "unknown feature space 'nope'; known: pixels, embedding, trained"),
        (["--method", "mtt", "--sampling", "importance"], "mtt draws no real batches, so importance sampling does not apply"),
        # sizes that would allocate until memory ran out, or train for days: refused with the range
        (["--width", "100000"], "network width must be 1 to 512, got 100000"),
        (["--depth", "9"], "network depth must be 1 to 6, got 9"),
        (["--eval-nets", "500"], "nets must be <= 20, got 500 (allowed: whole numbers 1 to 20)"),
        (["--eval-epochs", "1000000"], "epochs must be <= 3000, got 1000000 (allowed: whole numbers 1 to 3000)"),
    ],
)
def test_bad_names_and_settings(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *FAST, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_every_command_has_help(capsys):
    for cmd in (["--help"], ["run", "--help"], ["estimate", "--help"], ["eval", "--help"], ["list", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_estimate_prints_the_cost_and_the_resolved_config(tmp_path, capsys):
    assert main(["estimate", "--method", "dc", "--runs", str(tmp_path), "--show-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Time: about") and "Memory: about" in out
    shown = json.loads(out[out.index("{"):])
    assert shown["iterations"] == 200 and shown["options"]["outer_loop"] == 1 and shown["options"]["inner_loop"] == 1


def test_a_saved_run_from_before_the_sampling_check_still_reads():
    """Earlier versions recorded importance sampling for methods that draw no real batches, and a KRR
    option that no longer exists: such a config.json reads back, as what actually ran."""
    from distill_core.config import RunConfig

    old = RunConfig(method="mtt").to_dict() | {"sampling": "importance"}
    assert RunConfig.from_dict(old).sampling == "uniform"
    krr = RunConfig(method="krr", sampling="importance").to_dict()
    krr["options"] = {"score_steps": 100, "lr_img": 0.02}
    back = RunConfig.from_dict(krr)
    assert back.options == {"lr_img": 0.02} and back.sampling == "importance"


def test_threads_follow_the_request_the_environment_or_the_free_cores(monkeypatch):
    import os

    import torch

    from distill_core import threads

    before = torch.get_num_threads()
    try:
        assert threads.choose_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.choose_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        cores = os.cpu_count() or 1
        monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.0, 1.0))
        monkeypatch.setattr(threads, "running_others", lambda: 1)
        assert threads.free_cores() == max(1, cores - 1)
        monkeypatch.setattr(threads, "running_others", lambda: 0)  # the load was a run that has just ended
        assert threads.free_cores() == cores
        monkeypatch.setattr(threads, "running_others", lambda: None)  # no /proc: the average alone
        assert threads.free_cores() == max(1, cores - 1)
        monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 1.0, 1.0))
        monkeypatch.setattr(threads, "running_others", lambda: 63)
        assert threads.choose_threads() == 1  # a busy machine: one thread, not a pile of waiting ones
        with pytest.raises(ValueError, match="at least 1"):
            threads.choose_threads(0)
    finally:
        torch.set_num_threads(before)


def test_list_names_a_components_options_with_defaults_and_limits(capsys):
    assert main(["list"]) == 0
    assert "python -m distill_core list NAME" in capsys.readouterr().out
    assert main(["list", "dc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("options of the method dc (--set KEY=VALUE):")
    assert "  lr_img = 0.1: learning rate of the images (SGD) (positive, at most 1e+06)" in out
    assert "  outer_loop = automatic: " in out and "syn_weights = 'uniform': " in out and "(one of uniform, coreset)" in out
    assert main(["list", "sensitivity"]) == 0
    assert "options of the initializer sensitivity (--init-set KEY=VALUE):" in capsys.readouterr().out
    assert main(["list", "nope"]) == 2
    assert "neither a method" in capsys.readouterr().err
