"""Growth models (R&B 2002, ch. 6 and 8): time codings, covariance structures, variance decomposition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh

GRADES = pd.DataFrame({"grade": [1, 2, 3, 4, 5, 6]})


def test_polynomial_time_status_rate_acceleration_at_L():
    frame = bh.growth.polynomial_time(pd.DataFrame({"age": [11.0, 12, 13, 14, 15]}), "age", center=13, degree=2)
    assert frame["age_c"].tolist() == [-2, -1, 0, 1, 2]
    assert frame["age_c2"].tolist() == [4, 1, 0, 1, 4]
    named = bh.growth.polynomial_time(frame, "age", center=12, degree=1, names=("a12",))
    assert named["a12"].tolist() == [-1, 0, 1, 2, 3]
    assert "a12" not in frame  # a copy, the input is untouched


@pytest.mark.parametrize("scheme, origin, a1, a2", [
    ("two_rate", 1, [0, 1, 2, 2, 2, 2], [0, 0, 0, 1, 2, 3]),   # R&B Table 6.9 (a), origin grade 1
    ("two_rate", 3, [-2, -1, 0, 0, 0, 0], [0, 0, 0, 1, 2, 3]),  # (a), origin grade 3
    ("increment", 1, [0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]),   # (b), origin grade 1
    ("increment", 3, [-2, -1, 0, 1, 2, 3], [0, 0, 0, 1, 2, 3]),  # (b), origin grade 3
])
def test_piecewise_codings_of_table_6_9(scheme, origin, a1, a2):
    frame = bh.growth.piecewise_time(GRADES, "grade", knot=3, origin=origin, scheme=scheme)
    assert frame["a1"].tolist() == a1
    assert frame["a2"].tolist() == a2


def test_piecewise_status_predictions_of_table_6_9():
    """Under (a) with origin grade 1 the predicted status is pi0, pi0+pi1, pi0+2pi1, pi0+2pi1+pi2, ..."""
    frame = bh.growth.piecewise_time(GRADES, "grade", knot=3)
    pi0, pi1, pi2 = 10.0, 3.0, 1.0
    status = pi0 + pi1 * frame["a1"] + pi2 * frame["a2"]
    assert status.tolist() == [pi0, pi0 + pi1, pi0 + 2 * pi1, pi0 + 2 * pi1 + pi2, pi0 + 2 * pi1 + 2 * pi2,
                               pi0 + 2 * pi1 + 3 * pi2]


def test_codings_work_in_both_notations(sleepstudy):
    frame = bh.growth.polynomial_time(sleepstudy, "Days", center=4.5, degree=1)
    by_formula = bh.HLM("Reaction ~ Days_c + (Days_c | Subject)", frame)
    by_levels = bh.HLM.from_levels("Reaction ~ Days_c", {"intercept": "~ 1", "Days_c": "~ 1"}, groups="Subject",
                                   data=frame)
    assert by_formula.spec == by_levels.spec
    fit = by_formula.fit("reml")
    # status at day 4.5 = intercept + 4.5 slope of the uncentred model
    plain = bh.HLM("Reaction ~ Days + (Days | Subject)", sleepstudy).fit("reml")
    beta = plain.fixed_effects["estimate"]
    assert fit.fixed_effects.loc["(Intercept)", "estimate"] == pytest.approx(
        beta["(Intercept)"] + 4.5 * beta["Days"], rel=1e-6)
    assert fit.deviance == pytest.approx(plain.deviance, rel=1e-8)


def test_coding_errors_name_the_problem():
    with pytest.raises(bh.OptionError, match="knot"):
        bh.growth.piecewise_time(GRADES, "grade", knot=9)
    with pytest.raises(bh.OptionError, match="scheme"):
        bh.growth.piecewise_time(GRADES, "grade", knot=3, scheme="spline")
    with pytest.raises(bh.DataError, match="grades"):
        bh.growth.polynomial_time(GRADES, "grades")
    with pytest.raises(bh.OptionError, match="degree"):
        bh.growth.polynomial_time(GRADES, "grade", degree=0)


def test_codings_never_overwrite_data_or_each_other():
    heights = pd.DataFrame({"age": [1.0, 2.0, 3.0, 4.0], "height": [80.0, 88.0, 95.0, 101.0]})
    with pytest.raises(bh.OptionError, match="already has a column 'height' with other values"):
        bh.growth.polynomial_time(heights, "age", degree=1, names=("height",))
    with pytest.raises(bh.OptionError, match="already has a column 'age'"):
        bh.growth.polynomial_time(heights, "age", center=2, degree=1, names=("age",))
    with pytest.raises(bh.OptionError, match="'a' is given more than once"):
        bh.growth.piecewise_time(heights, "age", knot=2, names=("a", "a"))
    with pytest.raises(bh.OptionError, match="'t' is given more than once"):
        bh.growth.polynomial_time(heights, "age", degree=2, names=("t", "t"))
    # adding the same codings again (re-running a notebook cell) changes nothing
    once = bh.growth.polynomial_time(heights, "age", center=2)
    pd.testing.assert_frame_equal(bh.growth.polynomial_time(once, "age", center=2), once)


def test_unrestricted_covariance_is_the_sample_covariance_when_the_mean_is_saturated():
    """Complete data, one mean per occasion: the ML estimate of Sigma is the sample covariance (divisor N)."""
    ox = bh.datasets.load("oxboys").query("Occasion <= 4")
    fit = bh.growth.UnrestrictedFit(ox, "height", "Occasion", "Subject", "~ 0 + C(Occasion)", "ml")
    wide = ox.pivot(index="Subject", columns="Occasion", values="height")
    np.testing.assert_allclose(fit.sigma.to_numpy(), np.cov(wide.to_numpy().T, bias=True), rtol=1e-5)
    np.testing.assert_allclose(fit.fixed_effects["estimate"], wide.mean().to_numpy(), rtol=1e-8)


@pytest.mark.filterwarnings("ignore::bayeshlm.likelihood.BoundaryFitWarning")
def test_covariance_structures_table_6_12_style():
    early = bh.datasets.load("early")
    table = bh.growth.covariance_structures(early, "cog", "age", "id")
    assert list(table.index) == ["random intercept, compound symmetry", "random intercept, AR(1)",
                                 "random slope, homogeneous sigma^2", "random slope, sigma^2 per occasion",
                                 "random slope, log-linear sigma^2 in age", "unrestricted"]
    assert table["n_params"].tolist() == [4, 5, 6, 8, 7, 8]
    assert table["converged"].all()
    # every structure is a special case of the unrestricted Sigma: its deviance is the lowest
    assert (table["deviance"] >= table.loc["unrestricted", "deviance"] - 1e-6).all()
    cs = bh.HLM("cog ~ age + (1 | id)", early).fit("ml")
    assert table.loc["random intercept, compound symmetry", "deviance"] == pytest.approx(cs.deviance, rel=1e-10)
    row = table.loc["random slope, homogeneous sigma^2"]
    assert row["lrt_vs_unrestricted"] == pytest.approx(row["deviance"] - table.loc["unrestricted", "deviance"])
    assert row["df"] == 2 and 0 < row["p"] < 1


def test_variance_decomposition_of_egsingle_matches_lme4(egsingle):
    import json
    from pathlib import Path

    ref = json.loads((Path(__file__).parent / "reference" / "lme4_reference.json").read_text())["egsingle_uncond_reml"]
    fit = bh.HLM("math ~ year + (year | childid) + (year | schoolid)", egsingle).fit("reml")
    table = bh.growth.variance_decomposition(fit, inner="childid", outer="schoolid")
    child, school = (np.diag(ref["varcorr"][f]["cov"]) for f in ("childid", "schoolid"))
    np.testing.assert_allclose(table["share_between"], school / (school + child), rtol=1e-4)
    assert table.loc["year", "share_between"] == pytest.approx(0.50, abs=0.01)  # half the rate variance
    with pytest.raises(bh.OptionError, match="nested"):
        bh.growth.variance_decomposition(fit, inner="schoolid", outer="childid")


def test_growth_plot_lines_and_band(sleepstudy):
    from matplotlib.collections import PolyCollection

    fit = bh.HLM("Reaction ~ Days + (Days | Subject)", sleepstudy).fit("reml")
    figure = bh.plots.growth(fit, time="Days", person="Subject", n_persons=5)
    ax = figure.axes[0]
    assert len(ax.lines) == 2 * 5 + 1  # observed + fitted per person, population line
    population = ax.lines[-1]
    beta = fit.fixed_effects["estimate"]
    np.testing.assert_allclose(population.get_ydata(), beta["(Intercept)"] + beta["Days"] * np.arange(10))
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1
    fitted = ax.lines[1].get_ydata()  # first person's EB line is straight
    assert np.allclose(np.diff(fitted, 2), 0)
    ox = bh.datasets.load("oxboys")
    ox_fit = bh.HLM("height ~ age + (age | Subject)", ox, correlation="ar1", time="Occasion").fit("ml")
    assert len(bh.plots.growth(ox_fit, time="Occasion", data=ox, n_persons=3).axes[0].lines) == 7
    with pytest.raises(bh.OptionError, match="data="):
        bh.plots.growth(ox_fit, time="Occasion")


def test_unrestricted_model_does_not_depend_on_the_units_of_the_outcome():
    """Heights in km plus 1e6: the deviance moves by n log(s^2) and Sigma by s^2 exactly (it was -2.1e10 off)."""
    ox = bh.datasets.load("oxboys")
    base = bh.growth.UnrestrictedFit(ox, "height", "Occasion", "Subject", "~ age", "ml")
    moved = bh.growth.UnrestrictedFit(ox.assign(height=ox["height"] * 1e-3 + 1e6), "height", "Occasion", "Subject",
                                      "~ age", "ml")
    assert moved.deviance - base.deviance == pytest.approx(len(ox) * np.log(1e-6), abs=1e-4)
    np.testing.assert_allclose(moved.sigma.to_numpy(), 1e-6 * base.sigma.to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(moved.fixed_effects.loc["age", "estimate"],
                               1e-3 * base.fixed_effects.loc["age", "estimate"], rtol=1e-6)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_unrestricted_gradient_equals_central_differences(method):
    """The analytic gradient the optimiser uses (dD/dL = 2 (dD/dSigma) L), with persons missing occasions,
    at a point away from the optimum: equal to central differences of the deviance."""
    ox = bh.datasets.load("oxboys").query("Occasion <= 4")
    fit = bh.growth.UnrestrictedFit(ox.drop(ox.index[::7]), "height", "Occasion", "Subject", "~ age", method)
    T = len(fit.occasions)
    x = np.eye(T)[fit._tril] + 0.1 * np.random.default_rng(1).standard_normal(T * (T + 1) // 2)
    _, gradient = fit._value_and_gradient(x)
    h = 1e-6
    central = [(fit._value_and_gradient(x + h * e)[0] - fit._value_and_gradient(x - h * e)[0]) / (2 * h)
               for e in np.eye(len(x))]
    np.testing.assert_allclose(gradient, central, rtol=1e-5, atol=1e-4)
