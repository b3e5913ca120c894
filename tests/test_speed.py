"""``bench --speed`` times every hot loop and writes its tables."""
import json

from distill_core.cli import main


def test_speed_bench_writes_a_row_per_loop_and_precision(tmp_path, capsys):
    assert main(["bench", "--speed", "--preset", "app", "--repeats", "1", "--precisions", "fp32,bf16", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    loops = {"dm step", "dsa outer", "tm step", "expert epoch", "evaluation"}
    assert {(r["loop"], r["precision"]) for r in rows} == {(lp, pr) for lp in loops for pr in ("fp32", "bf16")}
    for r in rows:
        assert r["seconds"] > 0 and r["images_per_s"] > 0 and r["gflops"] > 0
    table = (tmp_path / "speed.md").read_text()
    assert "bf16 / fp32 time" in table and table in capsys.readouterr().out


def test_an_unknown_variant_is_refused_with_the_known_ones(tmp_path, capsys):
    assert main(["bench", "--speed", "--preset", "app", "--precisions", "fp16", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "unknown variant 'fp16'" in err and "bf16+compile" in err


def test_the_evaluation_group_is_timed_when_asked_beside_one_network(tmp_path):
    """``evaluation group`` (5 networks as one, a CUDA run's path) runs on a CPU only when asked; its
    unit is the 5 networks' protocol, so its images are 5 times one network's."""
    assert main(["bench", "--speed", "--preset", "app", "--repeats", "1", "--precisions", "fp32", "--loops", "evaluation,evaluation group",
                 "--out", str(tmp_path)]) == 0
    rows = {r["loop"]: r for r in json.loads((tmp_path / "speed.json").read_text())["rows"]}
    assert set(rows) == {"evaluation", "evaluation group"}
    one, group = rows["evaluation"], rows["evaluation group"]
    assert group["seconds"] > 0 and group["gflops"] > 0 and "5 networks as one group" in group["note"]
    # images per second x seconds = the unit's images: five networks' protocol against one's
    assert round(group["images_per_s"] * group["seconds"]) == round(5 * one["images_per_s"] * one["seconds"])
