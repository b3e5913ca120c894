"""The executor seam on a local Ray cluster (two CPUs, started once for the module): experts and a
bench grid give what the in-process path gives with the same seed; a failing task is retried once,
then reported as failed beside the others' results; a worker killed mid-task is retried and loses
no finished result. The default path never imports ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from conftest import tiny_data  # noqa: E402

from distill_core.cli import main  # noqa: E402
from distill_core.config import EvalConfig, RunConfig  # noqa: E402
from distill_core.executor import InProcess, RayExecutor, Result  # noqa: E402
from distill_core.methods import experts  # noqa: E402
from distill_core.methods.experts import ExpertSpec  # noqa: E402
from distill_core.nets.networks import NetConfig  # noqa: E402
from distill_core.runs.jobs import make_services  # noqa: E402
from distill_core.runs.run import Run, Snapshot  # noqa: E402
from distill_core.runs.store import Store  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NET = NetConfig(width=4, depth=1)
SPEC = ExpertSpec(count=3, epochs=2, lr=0.05, batch=16, seed=0)


@pytest.fixture(scope="module")
def cluster():
    # workers unpickle this module's task functions by name: they must import it (and the engine)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), old) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 - a machine that cannot start Ray (no /dev/shm, a sandbox) skips, saying why
        pytest.skip(f"a local Ray cluster does not start here: {type(e).__name__}: {e}")
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


# ---- task functions (module level: workers import them) ---------------------------------------
def square_or_fail(x: int) -> int:
    if x == 2:
        raise ValueError("two is refused")
    return x * x


def fail_once(path: str) -> str:
    marker = Path(path)
    if not marker.exists():
        marker.write_text("tried")
        raise RuntimeError("first try fails")
    return marker.read_text()


def die_once(item: tuple[int, str]) -> int:
    """Item 1's worker process dies on its first try (no exception: the process is gone)."""
    i, marker = item
    if i == 1 and not Path(marker).exists():
        Path(marker).write_text("died")
        os._exit(1)
    return 10 * i


def always_die(i: int) -> int:
    if i == 0:
        os._exit(1)
    return i


# ---- tests ------------------------------------------------------------------------------------
def test_experts_through_ray_are_the_in_process_experts(cluster, tmp_path):
    data = tiny_data()
    # a Ray task trains on one thread; CPU kernels sum in another order on more, so bitwise equality
    # holds against the in-process path on one thread too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = experts.load_or_train(data, NET, "color_crop", SPEC, tmp_path / "here", executor=InProcess())
    finally:
        torch.set_num_threads(threads)
    progress: list[tuple[str, float]] = []
    with RayExecutor("local") as ex:
        there = experts.load_or_train(data, NET, "color_crop", SPEC, tmp_path / "ray", lambda p, f: progress.append((p, f)), executor=ex)
    for a, b in zip(here.trajectories, there.trajectories, strict=True):
        assert len(a) == len(b) == SPEC.epochs + 1
        assert all(torch.equal(pa[n], pb[n]) for pa, pb in zip(a, b, strict=True) for n in pa)
    assert all(torch.equal(a, b) for a, b in zip(here.logits, there.logits, strict=True))
    # the driver wrote one file per expert; progress counted the experts as they arrived, on 2 workers
    assert sorted(p.name for p in there.path.glob("*.safetensors")) == [f"expert_{k:03d}_e0002.safetensors" for k in range(3)]
    training = [f for p, f in progress if p.startswith("training experts")]
    assert training == [0.0, 1 / 3, 2 / 3, 1.0]
    assert "2 at once" in progress[0][0]


def test_a_bench_grid_through_ray_matches_the_in_process_grid(cluster, tmp_path, monkeypatch):
    # single-threaded cells both ways (a Ray task gets one CPU): the same arithmetic, the same numbers
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tiny = ["--", "--iterations", "2", "--eval-nets", "1", "--eval-epochs", "2", "--width", "8"]
    grid = ["bench", "--dataset", "digits", "--methods", "dm", "--ipc", "1", "--seeds", "0,1"]
    assert main([*grid, "--out", str(tmp_path / "here"), *tiny]) == 0
    assert main([*grid, "--out", str(tmp_path / "ray"), "--ray", "local", *tiny]) == 0
    here, there = (json.loads((tmp_path / d / "bench.json").read_text())["rows"] for d in ("here", "ray"))
    assert len(here) == len(there) == 1
    runs_here, runs_there = here[0]["summary"]["runs"], there[0]["summary"]["runs"]
    assert [r["seed"] for r in runs_there] == [0, 1]
    for a, b in zip(runs_here, runs_there, strict=True):
        assert a["accuracy"]["values"] == b["accuracy"]["values"]
        assert a["baseline_random"]["values"] == b["baseline_random"]["values"]
    assert here[0]["summary"]["accuracy"] == there[0]["summary"]["accuracy"]
    assert "2 cell(s) at once on Ray" in (tmp_path / "ray" / "bench.md").read_text()


def test_a_task_that_fails_once_is_retried(cluster, tmp_path):
    with RayExecutor("local") as ex:
        results = ex.map(fail_once, [str(tmp_path / "marker")])
    assert results == [Result(value="tried", attempts=2)]


def test_a_task_that_always_fails_is_reported_and_the_others_are_kept(cluster):
    arrived: list[int] = []
    with RayExecutor("local") as ex:
        results = ex.map(square_or_fail, [1, 2, 3], on_done=lambda i, r: arrived.append(i))
    assert [r.value for r in results] == [1, None, 9]
    assert not results[1].ok and results[1].error == "ValueError: two is refused" and results[1].attempts == 2
    assert sorted(arrived) == [0, 1, 2]
    # the in-process executor reports the same
    assert InProcess().map(square_or_fail, [1, 2, 3]) == results


def test_a_killed_worker_is_retried_and_no_finished_result_is_lost(cluster, tmp_path):
    marker = str(tmp_path / "died")
    arrived: dict[int, Result[int]] = {}
    with RayExecutor("local") as ex:
        results = ex.map(die_once, [(i, marker) for i in range(4)], on_done=lambda i, r: arrived.setdefault(i, r))
        dead = ex.map(always_die, [0, 1])
    assert Path(marker).read_text() == "died"  # the first try did die
    assert [r.value for r in results] == [0, 10, 20, 30] and results[1].attempts == 2
    assert arrived == dict(enumerate(results))  # each result handed over once, none lost
    assert dead[1] == Result(value=1) and not dead[0].ok and dead[0].attempts == 2
    assert "died" in dead[0].error or "Worker" in dead[0].error


def test_the_default_path_never_imports_ray():
    code = (
        "import sys; from distill_core import cli; from distill_core.methods import experts; from distill_core.studies import bench\n"
        "from distill_core.executor import make_executor, from_environment\n"
        "assert make_executor(None).map(abs, [-1, 2])[0].value == 1 and from_environment().in_process\n"
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ---- the app's runs as Ray actors ------------------------------------------------------------------
TINY_RUN = RunConfig(dataset="digits", method="dm", ipc=1, iterations=12, net=NetConfig(width=8, depth=2),
                     eval=EvalConfig(nets=1, epochs=5), options={"batch_real": 16})


def here_single_threaded(cfg: RunConfig) -> Snapshot:
    """The run in this process on one thread, as a Ray actor of one CPU runs it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Run(cfg).execute()
    finally:
        torch.set_num_threads(threads)


def wait(run, timeout: float = 300) -> None:
    """Until the run is done; an actor starting on a loaded machine (torch and scipy imported on one
    busy core) took over two minutes."""
    deadline = time.time() + timeout
    while not run.snapshot().done:
        assert time.time() < deadline, run.snapshot()
        time.sleep(0.05)


def test_app_runs_as_ray_actors_match_the_in_process_run_and_follow_the_cluster(cluster, tmp_path):
    S = make_services(str(tmp_path / "runs"), auto_reference=False, ray_address="local")
    try:
        assert S.manager.max_concurrent == 2  # the cluster's CPUs, not DISTILL_MAX_RUNS
        run = S.submit(TINY_RUN, owner="a")
        endless = S.submit(replace(TINY_RUN, iterations=100_000), owner="a")
        wait(run)
        snap = run.snapshot()
        assert type(run).__name__ == "RemoteRun" and snap.status == "done", snap.message
        here = here_single_threaded(TINY_RUN)
        assert torch.equal(snap.images, here.images) and snap.final["values"] == here.final["values"]
        assert S.store.get(run.id).status == "done" and S.store.synthetic_path(run.id).exists()  # the actor wrote the store
        while endless.snapshot().iteration < 3:
            time.sleep(0.05)
        S.manager.stop(endless.id)
        wait(endless)
        assert endless.snapshot().status == "stopped" and S.store.get(endless.id).status == "stopped"
    finally:
        S.shutdown()


def test_an_app_run_through_the_page_on_ray_is_the_in_process_run(cluster, runs_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ui.services import services

    monkeypatch.setenv("DISTILL_RAY_ADDRESS", "local")
    at = AppTest.from_file(str(ROOT / "views" / "distill.py"), default_timeout=120)
    for k, v in {"steps": "12", "eval_nets": "1", "eval_epochs": "5", "width": "8"}.items():
        at.query_params[k] = v
    at.run()
    at.button(key="start").click().run()
    assert not at.exception
    run = services().manager.get(at.session_state["current_run"])
    wait(run)
    assert type(run).__name__ == "RemoteRun" and run.snapshot().status == "done"
    cfg = RunConfig.from_dict(services().store.get(run.id).config_dict)
    here = here_single_threaded(cfg)
    assert torch.equal(run.snapshot().images, here.images) and run.snapshot().final["values"] == here.final["values"]


def test_a_sweep_through_ray_matches_the_in_process_sweep(cluster, tmp_path, monkeypatch):
    from distill_core import data as data_mod
    from distill_core.studies import sweep

    digits = data_mod.load("digits")
    base = RunConfig(dataset="digits", iterations=2, net=NetConfig(width=8, depth=2), eval=EvalConfig(nets=1, epochs=5))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray task of one CPU computes
    try:
        here = sweep.sweep(base, digits, ["dm", "dc"], [1, 2], upto={"dc": 1}, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    with RayExecutor("local") as ex:
        there = sweep.sweep(base, digits, ["dm", "dc"], [1, 2], upto={"dc": 1}, store=Store(tmp_path / "runs"),
                            log=lambda s: None, executor=ex)
    # the rows in the methods' and IPCs' order whatever order the tasks ended in, with the same numbers
    assert [(r["method"], r["ipc"]) for r in there["rows"]] == [("dm", 1), ("dc", 1), ("dm", 2)]
    for a, b in zip(here["rows"], there["rows"], strict=True):
        assert (a["synthetic"], a["random"]) == (b["synthetic"], b["random"])
    assert sorted((r.method, r.ipc) for r in Store(tmp_path / "runs").list(status="done")) == [("dc", 1), ("dm", 1), ("dm", 2)]


def test_evaluation_networks_through_ray_are_the_in_process_ones(cluster, monkeypatch):
    from distill_core import data as data_mod
    from distill_core.evaluation.protocol import baseline_random, evaluate_set

    digits = data_mod.load("digits")
    images, labels = digits.x_train[:20], digits.y_train[:20]
    net, protocol = NetConfig(width=8, depth=2), EvalConfig(nets=3, epochs=4)

    def both() -> tuple:
        return (evaluate_set(images, labels, digits, protocol, net, "", torch.Generator().manual_seed(1)),
                baseline_random(digits, 1, protocol, net, "", torch.Generator().manual_seed(2)))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray task of one CPU computes
    try:
        here = both()
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("DISTILL_RAY_ADDRESS", "local")
    ticks: list[int] = []
    there = both()
    assert here == there and len(set(here[0].values)) > 1  # three networks, each from its own seed
    # Stop, asked as each network arrives, ends the evaluation
    from distill_core.evaluation.protocol import Stopped
    with pytest.raises(Stopped):
        evaluate_set(images, labels, digits, protocol, net, "", torch.Generator().manual_seed(1),
                     stop=lambda: ticks.append(1) or len(ticks) > protocol.epochs)
