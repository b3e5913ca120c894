import json

from distill_core.cli import main


def test_bench_writes_a_table_with_the_baseline(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--dataset", "digits", "--methods", "dm,nope", "--ipc", "1", "--out", str(out), "--",
                 "--iterations", "4", "--eval-nets", "1", "--eval-epochs", "3", "--width", "8"])
    assert code == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    ok, bad = rows
    a, b, run = ok["summary"]["accuracy"], ok["summary"]["baseline_random"], ok["summary"]["runs"][0]
    # the summary pools the evaluation networks of every seed: here one seed with one network each
    assert a["n"] == b["n"] == 1 and a["std"] == b["std"] == 0
    assert a["mean"] == run["accuracy"]["values"][0] and b["mean"] == run["baseline_random"]["values"][0]
    assert ok["summary"]["runs"][0]["iterations"] == 4 and ok["summary"]["peak_rss_mb"] > 0
    assert "unknown method 'nope'" in bad["summary"]["error"]
    table = (out / "bench.md").read_text()
    assert "| dm | random | 1 |" in table and "random real %" in table and "failed: error: unknown method" in table
    # the table shows the summary's numbers (3 evaluation epochs leave both near chance, so no margin here)
    assert f"| {100 * a['mean']:.1f} ± 0.0 (n=1) | {100 * b['mean']:.1f} ± 0.0 | {100 * (a['mean'] - b['mean']):+.1f} |" in table
