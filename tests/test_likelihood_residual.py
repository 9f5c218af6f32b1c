"""Level-1 error structures in the REML / ML engine against nlme::lme (tests/reference/nlme_reference.json,
written by make_reference.R) and R&B (2002) Table 5.9.

Tolerance: 1e-4 relative in the log-likelihood, fixed effects, their SEs, T, sigma^2 and the variance-function
parameters. The Oxboys AR(1) fits have phi ~ 0.98 and a very flat likelihood: nlme stops 1.3e-5 (ML) and
1.7e-5 (REML) log-likelihood units below our optimum (whose gradient is < 1e-6; a Newton step from it moves no
parameter by more than 1e-6), so there the estimates are compared at 5e-4 and our log-likelihood must not be
lower than nlme's. The same holds for tau_11 of Table 5.9 (nlme's -2 log L is 1.7e-7 above ours; tau_11 differs
by 1.6e-4). ``test_criterion_at_nlme_estimates`` checks the criterion itself: evaluated at nlme's estimates it
gives nlme's log-likelihood.
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.likelihood.fit import optimum_at
from bayeshlm.likelihood.marginal import StructuredDeviance
from bayeshlm.likelihood.theta_units import theta_to_standard

REFERENCE = json.loads((Path(__file__).parent / "reference" / "nlme_reference.json").read_text())
CASES = {
    "oxboys_lme_ar1_ml": ("oxboys", "height ~ age + (age | Subject)", {"correlation": "ar1", "time": "Occasion"}),
    "oxboys_lme_ar1_reml": ("oxboys", "height ~ age + (age | Subject)", {"correlation": "ar1", "time": "Occasion"}),
    "oxboys_lme_varident_ml": ("oxboys", "height ~ age + (age | Subject)", {"level1_variance": "Occasion"}),
    "oxboys_lme_varident_reml": ("oxboys", "height ~ age + (age | Subject)", {"level1_variance": "Occasion"}),
    "sleep_lme_varident_ml": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", {"level1_variance": "Days"}),
    "sleep_lme_varident_reml": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", {"level1_variance": "Days"}),
    "hsb_t59_hetero_ml": ("hsb", "mathach ~ sector * cses + (cses | school)", {"level1_variance": "sector"}),
}
FLAT = {"oxboys_lme_ar1_ml", "oxboys_lme_ar1_reml", "hsb_t59_hetero_ml"}


@cache
def fitted(key: str, **overrides):
    dataset, formula, options = CASES[key]
    method = REFERENCE[key]["method"].lower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.likelihood.BoundaryFitWarning)
        return bh.HLM(formula, bh.datasets.load(dataset), **{**options, **overrides}).fit(method)


def relative(actual, expected) -> float:
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


@pytest.mark.parametrize("key", list(CASES))
def test_matches_nlme(key):
    ref, fit = REFERENCE[key], fitted(key)
    assert fit.converged
    assert relative(fit.loglik, ref["loglik"]) < 1e-6
    assert fit.loglik >= ref["loglik"] - 1e-7
    tol = 5e-4 if key in FLAT else 1e-4
    names = list(ref["fixef"])
    assert relative(fit.fixed_effects.loc[names, "estimate"], list(ref["fixef"].values())) < tol
    assert relative(fit.fixed_effects.loc[names, "se"], list(ref["fixef_se"].values())) < tol
    factor, varcorr = next(iter(ref["varcorr"].items()))
    assert relative(fit.tau[factor].to_numpy(), varcorr["cov"]) < tol
    assert relative(fit.sigma2, ref["sigma2"]) < tol
    parameters = fit.residual_parameters
    if "ar1_phi" in ref:
        assert relative(parameters["phi (AR1)"], ref["ar1_phi"]) < tol
    if "varident_ratios" in ref:
        column = fit.design.residual.strata_levels.name
        for level, ratio in ref["varident_ratios"].items():
            if level != ref["varident_reference"]:
                assert relative(parameters[f"sd ratio {column}={level}"], ratio) < tol
            assert relative(parameters[f"sigma2 {column}={level}"], ref["varident_sigma2"][level]) < tol


@pytest.mark.parametrize("key", list(CASES))
def test_criterion_at_nlme_estimates(key):
    """theta = chol(T / sigma^2), log SD ratios and atanh(phi) from nlme's estimates give nlme's -2 log L."""
    ref, fit = REFERENCE[key], fitted(key)
    factor, varcorr = next(iter(ref["varcorr"].items()))
    lam = np.linalg.cholesky(np.array(varcorr["cov"]) / ref["sigma2"])
    x = [lam[0, 0], lam[1, 0], lam[1, 1]]
    if "varident_ratios" in ref:
        x += [np.log(r) for level, r in ref["varident_ratios"].items() if level != ref["varident_reference"]]
    if "ar1_phi" in ref:
        x.append(np.arctanh(ref["ar1_phi"]))
    user = StructuredDeviance(fit.design, fit.method)
    assert user(np.array(x)) == pytest.approx(-2 * ref["loglik"], rel=1e-9)
    # the same point on the standardised scale the fit works on, its criterion mapped back
    standard = theta_to_standard(fit._objective, fit._scaling, np.array(x))
    n, p = fit.design.n_obs, fit.design.n_fixed
    assert fit._scaling.deviance(fit._objective(standard), n, p, fit.method == "reml") == pytest.approx(
        -2 * ref["loglik"], rel=1e-9)


def test_table_5_9_heterogeneous_level1_variance_by_sector(hsb):
    """R&B (2002) Table 5.9: -2 log L 46633.881 (homogeneous) vs 46604.740; sigma^2_public 40.001, Catholic /
    public SD ratio 0.9127; ln sigma^2 = 3.6889 - 0.1827 SECTOR; LRT 29.141 on 1 df."""
    homogeneous = bh.HLM("mathach ~ sector * cses + (cses | school)", hsb).fit("ml")
    by_sector = fitted("hsb_t59_hetero_ml")
    loglinear = bh.HLM("mathach ~ sector * cses + (cses | school)", hsb, level1_variance="~ sector").fit("ml")
    assert round(homogeneous.deviance, 3) == 46633.881
    for fit in (by_sector, loglinear):
        assert round(fit.deviance, 3) == 46604.740
        assert round(fit.sigma2, 3) == 40.001
    assert round(by_sector.residual_parameters["sd ratio sector=1"], 4) == 0.9127
    assert round(loglinear.residual_parameters["alpha0"], 4) == 3.6889
    assert round(loglinear.residual_parameters["alpha sector"], 4) == -0.1827
    test = bh.deviance_test(homogeneous, by_sector)
    assert round(test.statistic, 3) == 29.141 and test.df == 1


def test_variance_function_rows_in_components_theta_and_report():
    fit = fitted("oxboys_lme_ar1_ml")
    rows = fit.variance_components.query("factor == 'Residual'")
    assert "phi (AR1)" in rows["term"].tolist()
    assert fit.theta.index[-1] == "atanh phi" and fit.n_params == 2 + 3 + 1 + 1
    text = str(fit.report())
    assert "phi (AR1)" in text and "AR1 errors in Occasion" in text
    hetero = fitted("sleep_lme_varident_reml")
    assert "sd ratio Days=9" in hetero.variance_components["term"].tolist()


def test_group_effects_use_the_structured_covariance(sleepstudy):
    """With every variance ratio fixed at 1 the marginal path reproduces the plain engine (modes, SDs, SEs)."""
    fit = fitted("sleep_lme_varident_reml")
    plain = bh.HLM("Reaction ~ Days + (Days | Subject)", sleepstudy).fit("reml")
    theta = plain.theta.to_numpy()
    objective = StructuredDeviance(fit.design, "reml")
    k = objective.params.size
    same = type(fit)(optimum_at(fit.design, "reml", np.concatenate([theta, np.zeros(objective.size - k)]),
                                converged=True, optimizer_message="", n_evaluations=0))
    assert same.deviance == pytest.approx(plain.deviance, rel=1e-10)
    np.testing.assert_allclose(same.group_effects().to_numpy(float), plain.group_effects().to_numpy(float), rtol=1e-7)
    np.testing.assert_allclose(same.fixed_effects.to_numpy(float), plain.fixed_effects.to_numpy(float), rtol=1e-7)


def test_unequal_times_refused_for_ar1_and_accepted_by_car1():
    ox = bh.datasets.load("oxboys")
    with pytest.raises(bh.DataError, match="car1"):
        bh.HLM("height ~ age + (age | Subject)", ox, correlation="ar1", time="age")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.likelihood.BoundaryFitWarning)
        fit = bh.HLM("height ~ age + (1 | Subject)", ox, correlation="car1", time="age").fit("ml")
    assert 0 < fit.residual_parameters["phi (CAR1)"] < 1


def test_option_errors_are_clear(sleepstudy):
    with pytest.raises(bh.OptionError, match="time="):
        bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy, correlation="ar1")
    with pytest.raises(bh.OptionError, match="ar1"):
        bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy, correlation="arma", time="Days")
    with pytest.raises(bh.DataError, match="Dayz"):
        bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy, level1_variance="Dayz")
    with pytest.raises(bh.OptionError, match="Bayesian engine fits correlation='ar1'.*but not 'car1'"):
        bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy, correlation="car1", time="Days").fit("bayes")
    doubled = sleepstudy.assign(Days=sleepstudy["Days"] // 2)
    with pytest.raises(bh.DataError, match="repeats within Subject"):
        bh.HLM("Reaction ~ Days + (1 | Subject)", doubled, correlation="ar1", time="Days")


def test_deviance_test_notes_the_boundary_only_for_random_effect_variances():
    """Adding AR(1) errors tests a correlation, not a variance at zero: no boundary note; adding a random
    slope does get it."""
    ox = bh.datasets.load("oxboys")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        intercept = bh.HLM("height ~ age + (1 | Subject)", ox).fit("ml")
        slope = bh.HLM("height ~ age + (age | Subject)", ox).fit("ml")
        ar1 = bh.HLM("height ~ age + (1 | Subject)", ox, correlation="ar1", time="Occasion").fit("ml")
    assert bh.deviance_test(intercept, ar1).note == ""
    assert "boundary" in bh.deviance_test(intercept, slope).note


# --- issue 21: start points at stationary points -------------------------------------------------------------
@pytest.mark.parametrize("key", ["oxboys_lme_ar1_ml", "oxboys_lme_ar1_reml"])
def test_ar1_with_occasions_two_apart_matches_nlme(key):
    """Occasions coded 2, 4, ..., 18: the old start phi = 0 is a stationary point of phi^2, phi^4, ...; the fit
    stayed there and said converged (ML -2 log L 725.97 instead of 657.74). nlme's log-likelihood and
    estimates (phi per occasion = phi_2^2) to the tolerances of :func:`test_matches_nlme`."""
    ref = REFERENCE[key]
    fit = fitted(key)
    ox = bh.datasets.load("oxboys")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.likelihood.BoundaryFitWarning)
        spaced = bh.HLM("height ~ age + (age | Subject)", ox.assign(Occasion=2 * ox["Occasion"]),
                        correlation="ar1", time="Occasion").fit(fit.method)
    assert spaced.converged
    assert relative(spaced.loglik, ref["loglik"]) < 1e-6
    assert spaced.deviance == pytest.approx(fit.deviance, rel=1e-9)
    assert relative(spaced.residual_parameters["phi (AR1)"] ** 2, ref["ar1_phi"]) < 5e-4
    assert relative(spaced.fixed_effects["estimate"], fit.fixed_effects["estimate"]) < 1e-6
    assert relative(spaced.tau["Subject"].to_numpy(), fit.tau["Subject"].to_numpy()) < 1e-5


def test_random_intercept_ar1_spaced_two_apart_and_car1_in_days():
    """The issue's case (Oxboys, random intercept, ML): -2 log L 940.57 at phi = 0 before, 682.23 as the
    consecutive coding; CAR(1) in days gives the same fit with phi_day = phi_occasion^(1/365.25)."""
    ox = bh.datasets.load("oxboys")
    formula = "height ~ age + (1 | Subject)"
    base = bh.HLM(formula, ox, correlation="ar1", time="Occasion").fit("ml")
    spaced = bh.HLM(formula, ox.assign(Occasion=2 * ox["Occasion"]), correlation="ar1", time="Occasion").fit("ml")
    days = bh.HLM(formula, ox.assign(day=365.25 * ox["Occasion"]), correlation="car1", time="day").fit("ml")
    assert base.deviance == pytest.approx(682.2275, abs=1e-4)
    for fit in (spaced, days):
        assert fit.converged
        assert fit.deviance == pytest.approx(base.deviance, rel=1e-9)
        assert relative(fit.fixed_effects["estimate"], base.fixed_effects["estimate"]) < 1e-6
    phi = base.residual_parameters["phi (AR1)"]
    assert spaced.residual_parameters["phi (AR1)"] == pytest.approx(phi ** 0.5, rel=1e-6)
    assert days.residual_parameters["phi (CAR1)"] == pytest.approx(phi ** (1 / 365.25), rel=1e-8)


def test_end_point_with_slope_is_not_reported_converged():
    """The check behind ``converged``: the largest slope of the criterion, 0 at the optimum, not at a start."""
    from bayeshlm.likelihood.optimize import GRADIENT_TOL

    fit = fitted("oxboys_lme_ar1_ml")
    objective, x = fit._objective, fit._theta_std
    assert np.max(np.abs(objective.value_and_gradient(x)[1])) < GRADIENT_TOL
    moved = x.copy()
    moved[-1] -= 0.5  # phi further from its optimum
    assert np.max(np.abs(objective.value_and_gradient(moved)[1])) > 100 * GRADIENT_TOL
