import json

from distill_core.cli import main


def test_bench_writes_a_table_with_the_baseline(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--dataset", "digits", "--methods", "dm,nope", "--ipc", "1", "--out", str(out), "--",
                 "--iterations", "4", "--eval-nets", "1", "--eval-epochs", "3", "--width", "8"])
    assert code == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    ok, bad = rows
    assert ok["summary"]["accuracy"]["n"] == 1 and 0 <= ok["summary"]["baseline_random"]["mean"] <= 1
    assert ok["summary"]["runs"][0]["iterations"] == 4 and ok["summary"]["peak_rss_mb"] > 0
    assert "unknown method 'nope'" in bad["summary"]["error"]
    table = (out / "bench.md").read_text()
    assert "| dm | random | 1 |" in table and "random real %" in table and "failed: error: unknown method" in table
