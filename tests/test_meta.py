"""Univariate meta-analysis (bh.meta) against metafor's rma() (tests/reference/metafor_reference.json, written by
tests/reference/make_reference.R) and the book's tables (R&B 2002, Tables 7.1-7.3 and 13.1 panel d).

Tolerances: every number 1e-6 relative or 1e-9 absolute (the reference was fitted with threshold 1e-12), except
REML/ML tau^2 and the quantities that depend on it (the optimiser stops at a relative gradient of 1e-9):
1e-5 relative or 1e-9 absolute. Boundary fits: tau^2, I^2 exactly 0 and H^2 = 1 (metafor: ~1e-14, ~1e-10).
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.likelihood import BoundaryFitWarning

matplotlib.use("Agg")

REFERENCE = Path(__file__).parent / "reference"
TIGHT = {"rtol": 1e-6, "atol": 1e-9}
OPTIM = {"rtol": 1e-5, "atol": 1e-9}


@cache
def metafor() -> dict:
    return json.loads((REFERENCE / "metafor_reference.json").read_text())


def fit(formula, data="teacher_expectancy", method="reml", **kwargs):
    frame = bh.datasets.load(data)
    if data == "eight_schools":
        frame = frame.assign(vi=frame["sigma"] ** 2)
        kwargs.setdefault("study", "school")
    kwargs.setdefault("study", "study")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        return bh.meta(formula, frame, vi="vi", method=method, **kwargs)


def check(actual, expected, tol):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), **tol)


CASES = [(key, formula, data, method)
         for key, formula, data, methods in [("raudenbush1985", "yi ~ 1", "teacher_expectancy", "reml ml dl"),
                                             ("raudenbush1985_weeks", "yi ~ weeks_c", "teacher_expectancy", "reml ml"),
                                             ("eight_schools", "y ~ 1", "eight_schools", "reml ml dl")]
         for method in methods.split()]


@pytest.mark.parametrize(("key", "formula", "data", "method"), CASES)
def test_agrees_with_metafor(key, formula, data, method):
    ref = metafor()[f"{key}_{method}"]
    m = fit(formula, data, method)
    tol = TIGHT if method == "dl" else OPTIM
    fe = m.fixed_effects
    check(fe["estimate"], list(ref["beta"].values()), tol)
    check(fe["se"], list(ref["se"].values()), tol)
    check(fe["ci_lower"], list(ref["ci_lb"].values()), tol)
    check(m.vcov, ref["vcov"]["cov"], tol)
    check(m.tau2, ref["tau2"], {"rtol": tol["rtol"], "atol": 1e-12})
    check(m.se_tau2, ref["se_tau2"], tol)
    check([m.q_test.statistic, m.q_test.p], [ref["QE"], ref["QEp"]], TIGHT)
    assert m.q_test.df == ref["QE_df"] and m.k == ref["k"]
    check([m.i2, m.h2], [ref["I2"], ref["H2"]], {"rtol": tol["rtol"], "atol": 1e-8})
    effects = m.study_effects
    check(effects["eb"], ref["blup"]["pred"], tol)
    check(effects["eb_se"], ref["blup"]["se"], tol)
    check(effects["eb_lower"], ref["blup"]["pi_lb"], tol)
    if "pred" in ref:
        pred = m.prediction()
        check(pred[["estimate", "se", "ci_lower", "ci_upper", "pi_lower", "pi_upper"]],
              [ref["pred"][k] for k in ("pred", "se", "ci_lb", "ci_ub", "pi_lb", "pi_ub")], tol)
    else:
        check([m.qm_test.statistic, m.qm_test.p], [ref["QM"], ref["QMp"]], tol)
    if method == "ml":
        check(m.loglik, ref["loglik"], {"rtol": 1e-6, "atol": 0})
    elif method == "reml":  # metafor's restricted log-likelihood adds (1/2) log|X'X|
        X = m.design.X
        check(m.loglik + 0.5 * np.linalg.slogdet(X.T @ X)[1], ref["loglik"], {"rtol": 1e-6, "atol": 0})
    else:
        assert m.loglik is None and m.likelihood_fit is None


def test_book_tables_7_1_to_7_3():
    t72 = fit("yi ~ 1")
    assert round(t72.fixed_effects.loc["(Intercept)", "estimate"], 4) == 0.0837
    assert round(t72.fixed_effects.loc["(Intercept)", "se"], 4) == 0.0516
    assert round(t72.tau2, 4) == 0.0188 and round(t72.q_test.statistic, 2) == 35.83 and t72.q_test.df == 18
    assert round(fit("yi ~ 1", method="ml").tau2, 4) == 0.0126
    # Table 13.1 panel (d), EB-REML means (SDs); study 15's printed mean -0.023 is a book typo (panel (c) and
    # metafor: -0.029), see the digest section 3.11. Table 7.1's two-decimal EB column rounds these values.
    means = [0.054, 0.100, -0.006, 0.214, 0.105, -0.008, 0.017, -0.029, 0.160, 0.249, 0.162, 0.110, 0.065, 0.110,
             -0.029, 0.026, 0.190, 0.074, 0.025]
    sds = [0.096, 0.104, 0.111, 0.137, 0.137, 0.085, 0.085, 0.123, 0.110, 0.127, 0.133, 0.123, 0.131, 0.132, 0.108,
           0.110, 0.101, 0.080, 0.113]
    np.testing.assert_allclose(t72.study_effects["eb"], means, atol=0.001)
    np.testing.assert_allclose(t72.study_effects["eb_se"], sds, atol=0.002)
    t73 = fit("yi ~ weeks_c")
    assert t73.fixed_effects["estimate"].round(3).tolist() == [0.407, -0.157]
    assert t73.tau2 == 0 and t73.boundary and round(t73.q_test.statistic, 2) == 16.57
    # Table 7.1, EB conditional column: the fitted values 0.41, 0.25, 0.09, -0.06 for weeks 0..3
    expected = {0: 0.41, 1: 0.25, 2: 0.09, 3: -0.06}
    weeks = bh.datasets.load("teacher_expectancy")["weeks_c"]
    np.testing.assert_allclose(t73.study_effects["eb"], weeks.map(expected), atol=0.005 + 1e-9)
    np.testing.assert_allclose(t73.study_effects["eb"], t73.study_effects["fitted"], atol=1e-12)


def test_study_effects_shrink_by_the_reliability():
    m = fit("yi ~ 1")
    e = m.study_effects
    v = bh.datasets.load("teacher_expectancy")["vi"].to_numpy()
    np.testing.assert_allclose(e["shrinkage"], m.tau2 / (m.tau2 + v))
    gamma = m.fixed_effects.loc["(Intercept)", "estimate"]
    np.testing.assert_allclose(e["eb"], e["shrinkage"] * e["effect"] + (1 - e["shrinkage"]) * gamma)
    assert list(e.index) == list(range(1, 20)) and e.index.name == "study"
    assert e.loc[4, "effect"] == 1.18 and round(e.loc[4, "eb"], 2) == 0.21  # R&B: study 4, 1.18 -> 0.21


def test_boundary_is_explained_in_plain_words():
    frame = bh.datasets.load("eight_schools").assign(vi=lambda d: d["sigma"] ** 2)
    with pytest.warns(BoundaryFitWarning, match="tau\\^2 is estimated as 0 by REML"):
        m = bh.meta("y ~ 1", frame, vi="vi", study="school")
    assert m.boundary and m.tau2 == 0 and m.i2 == 0 and m.h2 == 1
    assert "equals the fixed-effect" in m.messages[0] and "prediction interval equals" in m.messages[0]
    assert round(m.fixed_effects.loc["(Intercept)", "estimate"], 3) == 7.686
    assert round(m.fixed_effects.loc["(Intercept)", "se"], 3) == 4.072
    pred = m.prediction()
    assert pred["pi_lower"] == pred["ci_lower"]
    assert "Prediction interval" in m.summary() and m.messages[0] in m.summary()
    weeks = fit("yi ~ weeks_c")
    assert "After the moderators (weeks_c)" in weeks.messages[0] and "fitted value" in weeks.messages[0]
    assert fit("yi ~ 1").messages == []


def test_study_ids_and_equivalence_with_hlm():
    frame = bh.datasets.load("teacher_expectancy")
    numbered = fit("yi ~ 1", study=None)
    assert list(numbered.study_effects.index) == list(range(1, 20))
    assert numbered.study_effects.index.name == "study_id"  # "study" is taken by a column
    direct = bh.HLM("yi ~ 1 + (1 | study)", frame, known_variance="vi").fit("reml")
    assert numbered.tau2 == pytest.approx(direct.tau["study"].iloc[0, 0], rel=1e-12)
    assert isinstance(numbered.likelihood_fit, bh.results.LikelihoodFit)
    assert repr(numbered).startswith("<MetaFit REML")


def test_prediction_with_moderators():
    m = fit("yi ~ weeks_c")
    at0 = m.prediction({"weeks_c": 0})
    assert at0["estimate"] == pytest.approx(m.fixed_effects.loc["(Intercept)", "estimate"])
    assert at0["pi_lower"] == pytest.approx(at0["ci_lower"])  # tau^2 = 0
    with pytest.raises(bh.OptionError, match="give a value for \\['weeks_c'\\]"):
        m.prediction()
    with pytest.raises(bh.OptionError, match="not a moderator"):
        m.prediction({"weeks": 1})


def test_bad_input():
    frame = bh.datasets.load("teacher_expectancy")
    with pytest.raises(bh.OptionError, match="Unknown method 'reml2'"):
        bh.meta("yi ~ 1", frame, vi="vi", method="reml2")
    with pytest.raises(bh.FormulaError, match="adds the random study effect"):
        bh.meta("yi ~ 1 + (1 | study)", frame, vi="vi")
    with pytest.raises(bh.DataError, match="is not a column"):
        bh.meta("yi ~ 1", frame, vi="vi", study="studdy")
    with pytest.raises(bh.DataError, match="three-level"):
        bh.meta("yi ~ 1", frame, vi="vi", study="weeks_c")
    with pytest.raises(bh.FormulaError):
        bh.meta("yi", frame, vi="vi")


def test_forest_plot_draws_every_study():
    m = fit("yi ~ 1")
    figure = bh.plots.forest(m)
    ax = figure.axes[0]
    by_gid = {c.get_gid(): c for c in ax.collections if c.get_gid()}
    assert len(by_gid["observed"].get_offsets()) == 19 and len(by_gid["eb"].get_offsets()) == 19
    np.testing.assert_allclose(by_gid["eb"].get_offsets()[:, 0], m.study_effects["eb"])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 20 and labels[-1] == "REML model"
    assert len(ax.patches) == 1  # the pooled-estimate diamond
    moderated = bh.plots.forest(fit("yi ~ weeks_c")).axes[0]
    assert len(moderated.get_yticklabels()) == 19 and len(moderated.patches) == 0
    with pytest.raises(bh.OptionError, match="MetaFit"):
        bh.plots.forest(m.likelihood_fit)
