"""The coreset experiment (``distill_core.initializers.coreset``): sensitivity sampling keeps digits' k-means cost
better than uniform sampling, its with-replacement weights are unbiased, the CLI writes its files and
the Initializations page draws the chart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from distill_core import data as data_mod
from distill_core import initializers as I
from distill_core.cli import main
from distill_core.initializers import coreset, leverage, sensitivity

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return data_mod.load("digits")


def class_costs(data, c: int = 0):
    """Sensitivity scores and point costs against 3 evaluation centre sets, for digits class ``c``."""
    f = data.x_train[data.class_indices()[c]].flatten(1).double()
    return coreset.kmeans_class(f, 10, False, 3, (0, 1))


def test_sensitivity_sampling_beats_uniform_on_digits(digits):
    res = coreset.coreset_experiment(digits, "sensitivity", ms=(5, 20, 100), draws=200, seed=0)
    for row in res["rows"]:
        # exact (no draws): the i.i.d. relative standard error, worst over Q
        assert row["importance_exact_rse"] < row["uniform_exact_rse"], row
        # measured: the worst relative error over Q, mean over 200 draws
        assert row["importance"]["mean"] < row["uniform"]["mean"], row
    # and the error falls like 1 / sqrt(m)
    assert -0.65 < coreset.sqrt_m_slope(res) < -0.35


def test_with_replacement_weights_are_unbiased(digits):
    s, costs = class_costs(digits)
    full = costs.sum(0)
    g = torch.Generator().manual_seed(0)
    for draw in coreset.DRAWS.values():
        est = torch.stack([(w[:, None] * costs[r]).sum(0) for r, w in (draw(s, 5, g) for _ in range(3000))])
        se = est.std(0) / 3000**0.5
        assert ((est.mean(0) - full).abs() < 4 * se).all(), (est.mean(0), full, se)
        assert (est.std(0) > 0.01 * full).all()  # a sample of 5 does vary: the check above is not vacuous


def test_leverage_scores_of_the_whitened_features_are_the_initializers(digits):
    f = digits.x_train[digits.class_indices()[1]].flatten(1).double()
    for kind in ("rbf", "linear"):
        cfg = I.options_of("krr-sensitivity", {"kernel": kind}).resolved(digits, 1, 0)
        lam, kernel, phi = leverage.ridge_problem(f, cfg, torch.Generator().manual_seed(0))
        psi = coreset.whitened_features(lam, kernel, phi)
        assert torch.allclose((psi * psi).sum(1), leverage.ridge_leverage(lam, kernel, phi), atol=1e-8)
    # the Lanczos path (large feature spaces) gives the dense path's spectral norm
    psi = torch.randn(600, 450, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / 30
    gram = psi.T @ psi
    rows, w = sensitivity.importance_sample((psi * psi).sum(1), 40, torch.Generator().manual_seed(2))
    dense = float(torch.linalg.eigvalsh(psi[rows].T @ (w[:, None] * psi[rows]) - gram).abs().max())
    assert abs(coreset.spectral_error(psi, gram, rows, w) - dense) < 1e-6 * dense


def test_krr_error_falls_with_m(digits):
    res = coreset.coreset_experiment(digits, "krr-sensitivity", cls=0, ms=(10, 100), draws=5, kernel="linear")
    small, large = res["rows"]
    for scheme in ("importance", "uniform"):
        assert large[scheme]["mean"] < small[scheme]["mean"]
        assert large[f"{scheme}_typical"]["mean"] < small[f"{scheme}_typical"]["mean"]
    assert 0 < res["effective_dof"][0] <= 64  # at most the 64 pixels of the linear kernel


def test_cli_writes_coreset_json_and_md(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["coreset", "--dataset", "digits", "--class", "3", "--ms", "5,50", "--draws", "3", "--out", str(out)]) == 0
    result = json.loads((out / "coreset.json").read_text())
    assert (result["dataset"], result["init"], result["k"], result["features"], result["classes"], result["draws"]) == (
        "digits", "sensitivity", 10, "pixels", ["3"], 3)
    assert [r["m"] for r in result["rows"]] == [5, 50]
    for row in result["rows"]:
        for scheme in ("importance", "uniform", "distinct"):
            assert set(row[scheme]) == {"mean", "std"} and row[scheme]["mean"] > 0
    table = (out / "coreset.md").read_text()
    assert table.count("\n| ") == 3 and "| 50 |" in table  # header and two rows
    assert "| 50 |" in capsys.readouterr().out
    assert main(["coreset", "--class", "nope", "--out", str(out)]) == 2  # a clear error, no trace


def test_the_page_draws_the_coreset_chart():
    at = AppTest.from_file(str(ROOT / "views" / "initializations.py"), default_timeout=120)
    at.session_state["umap"] = False
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert "sensitivity" in at.multiselect(key="inits").value  # one of the default choices
    assert any("coreset weights w" in c.value for c in at.caption)  # beside sensitivity's images
    charts_before = len(at.get("plotly_chart"))
    at.selectbox(key="coreset_class").set_value("3").run()
    at.button(key="coreset_go").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.get("plotly_chart")) == charts_before + 1
    assert any("mean ± std over 20 draws" in c.value for c in at.caption)
