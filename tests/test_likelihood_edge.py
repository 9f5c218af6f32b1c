"""Likelihood engine: the profiled criterion against a direct dense computation, degenerate inputs, and
deviance tests."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.errors import DataError, OptionError
from bayeshlm.likelihood import BoundaryFitWarning
from bayeshlm.likelihood.fit import ProfiledDeviance
from bayeshlm.results.contract import wide


def dense_criterion(design, theta, reml: bool) -> float:
    """-2 log L (or the REML criterion) from the n x n marginal covariance, sigma^2 profiled out."""
    objective = ProfiledDeviance(design, "reml" if reml else "ml")
    n, p = design.n_obs, design.n_fixed
    G = np.zeros((n, n))
    for f, lam in zip(design.factors, objective.params.lambdas(np.asarray(theta, float))):
        same = f.codes[:, None] == f.codes[None, :]
        G += same * (f.Z @ lam @ lam.T @ f.Z.T)
    V = G + np.eye(n)
    Vi = np.linalg.inv(V)
    XtViX = design.X.T @ Vi @ design.X
    beta = np.linalg.solve(XtViX, design.X.T @ Vi @ design.y)
    e = design.y - design.X @ beta
    r2 = e @ Vi @ e
    dof = n - p if reml else n
    value = np.linalg.slogdet(V)[1] + dof * (1 + np.log(2 * np.pi * r2 / dof))
    return value + np.linalg.slogdet(XtViX)[1] if reml else value


def synthetic(n_groups=(12, 5), rows=60, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_groups[0], rows)
    b = rng.integers(0, n_groups[1], rows)
    x = rng.normal(size=rows)
    y = 1 + 0.5 * x + rng.normal(size=n_groups[0])[a] + 0.7 * rng.normal(size=n_groups[1])[b] + rng.normal(size=rows)
    return pd.DataFrame({"y": y, "x": x, "a": a, "b": b, "c": a // 3})


@pytest.mark.parametrize("formula", [
    "y ~ x + (x | a)",                      # single factor, correlated
    "y ~ x + (1 | a) + (x || b)",           # crossed
    "y ~ x + (x | a) + (1 | c)",            # nested chain a in c
])
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_equals_dense_computation(formula, reml):
    design = bh.HLM(formula, synthetic()).design
    objective = ProfiledDeviance(design, "reml" if reml else "ml")
    rng = np.random.default_rng(3)
    for _ in range(3):
        theta = rng.uniform(0.1, 1.5, objective.params.size) * np.where(objective.params.lower_bounds == 0, 1, 0.3)
        assert objective(theta) == pytest.approx(dense_criterion(design, theta, reml), rel=1e-10)


def test_balanced_one_way_anova_equals_moment_estimators():
    rng = np.random.default_rng(7)
    J, n = 15, 6
    g = np.repeat(np.arange(J), n)
    y = rng.normal(size=J)[g] * 1.5 + rng.normal(size=J * n) + 10
    frame = pd.DataFrame({"y": y, "g": g})
    fit = bh.HLM("y ~ 1 + (1 | g)", frame).fit("reml")
    means = frame.groupby("g")["y"].mean().to_numpy()
    msw = ((y - means[g]) ** 2).sum() / (J * (n - 1))
    msb = n * ((means - y.mean()) ** 2).sum() / (J - 1)
    assert fit.sigma2 == pytest.approx(msw, rel=1e-6)
    assert fit.tau["g"].iloc[0, 0] == pytest.approx((msb - msw) / n, rel=1e-6)
    assert fit.fixed_effects.loc["(Intercept)", "se"] == pytest.approx(np.sqrt(msb / (J * n)), rel=1e-6)


def test_two_groups_only():
    frame = synthetic(n_groups=(2, 2), rows=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        fit = bh.HLM("y ~ x + (1 | a)", frame).fit("reml")
    assert fit.converged and np.isfinite(fit.deviance)
    assert fit.fixed_effects.loc["(Intercept)", "df"] == 1  # J - S - 1 = 2 - 0 - 1
    assert fit.group_effects("a").shape[0] == 2


def test_groups_of_size_one_with_random_slope():
    frame = synthetic(rows=80)
    frame = pd.concat([frame, pd.DataFrame({"y": [0.3, -1.0], "x": [0.1, 0.2], "a": [100, 101], "b": [0, 1],
                                            "c": [50, 51]})], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)  # the synthetic slopes do not vary
        fit = bh.HLM("y ~ x + (x | a)", frame).fit("reml")
    assert fit.converged
    ols = fit.ols_group_estimates("a")
    assert ols.loc[["100", "101"], "estimate"].isna().all().all()  # one row cannot fit a line
    assert ols["estimate"].drop(index=["100", "101"]).notna().all().all()
    ge = fit.group_effects("a")
    assert np.isfinite(ge["estimate"].to_numpy()).all()  # EB estimates exist for every group


def test_every_group_of_size_one_is_refused():
    frame = pd.DataFrame({"y": np.arange(10.0) ** 1.5, "g": np.arange(10)})
    with pytest.raises(DataError, match="cannot be told apart from the level-1 variance"):
        bh.HLM("y ~ 1 + (1 | g)", frame).fit("reml")


def test_unknown_option_is_refused():
    with pytest.raises(OptionError, match="maxiter"):
        bh.HLM("y ~ x + (1 | a)", synthetic()).fit("reml", maxiterations=5)


# --- deviance tests -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hsb():
    return bh.datasets.load("hsb")


def test_reml_deviance_test_of_random_slope(hsb):
    full = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb).fit("reml")
    intercept_only = bh.HLM("mathach ~ meanses*cses + sector*cses + (1 | school)", hsb).fit("reml")
    test = bh.deviance_test(intercept_only, full)
    assert test.df == 2
    assert test.statistic == pytest.approx(1.13, abs=0.005)  # digest section 3.2: REML difference 1.13
    assert test.p_value == pytest.approx(np.exp(-test.statistic / 2), rel=1e-9)  # chi2(2) survival
    assert "conservative" in test.note


def test_reml_comparison_of_different_fixed_effects_is_refused(hsb):
    a = bh.HLM("mathach ~ cses + (cses | school)", hsb).fit("reml")
    b = bh.HLM("mathach ~ meanses + cses + (cses | school)", hsb).fit("reml")
    with pytest.raises(OptionError, match="fixed effects differ.*method='ml'"):
        bh.deviance_test(a, b)
    test = bh.deviance_test(bh.HLM("mathach ~ cses + (cses | school)", hsb).fit("ml"),
                            bh.HLM("mathach ~ meanses + cses + (cses | school)", hsb).fit("ml"))
    assert test.df == 1 and test.statistic > 100


@pytest.mark.parametrize("formula", [
    "y ~ x + (x | a)",                      # single factor
    "y ~ x + (x | a) + (1 | c)",            # nested chain
    "y ~ x + (1 | a) + (x || b)",           # crossed, scalar first factor
    "y ~ x + (x | a) + (x | b)",            # crossed, correlated slopes in both factors
])
@pytest.mark.parametrize("reml", [True, False])
def test_analytic_gradient_equals_finite_differences(formula, reml):
    design = bh.HLM(formula, synthetic()).design
    objective = ProfiledDeviance(design, "reml" if reml else "ml")
    rng = np.random.default_rng(5)
    theta = rng.uniform(0.2, 1.2, objective.params.size) * np.where(objective.params.lower_bounds == 0, 1, 0.3)
    _, gradient = objective.value_and_gradient(theta)
    h = 1e-6
    numeric = [(objective(theta + h * e) - objective(theta - h * e)) / (2 * h) for e in np.eye(len(theta))]
    assert np.allclose(gradient, numeric, rtol=1e-6, atol=1e-6)


def test_crossed_modes_solve_the_dense_system():
    """Conditional modes of a crossed design with correlated slopes equal the dense PLS solution."""
    design = bh.HLM("y ~ x + (x | a) + (x | b)", synthetic()).design
    objective = ProfiledDeviance(design, "reml")
    theta = np.array([0.8, 0.2, 0.5, 0.6, -0.3, 0.4])
    fac = objective.factorize(theta)
    lambdas = objective.params.lambdas(theta)
    blocks = []
    for f, lam in zip(design.factors, lambdas):
        Zf = np.zeros((design.n_obs, f.n_groups * f.n_coef))
        for c in range(f.n_coef):
            Zf[np.arange(design.n_obs), f.codes * f.n_coef + c] = f.Z[:, c]
        blocks.append(Zf @ np.kron(np.eye(f.n_groups), lam))
    ZL = np.hstack(blocks)
    M = np.hstack([ZL, design.X])
    lhs = M.T @ M + np.diag(np.r_[np.ones(ZL.shape[1]), np.zeros(design.n_fixed)])
    solution = np.linalg.solve(lhs, M.T @ design.y)
    u = fac.modes()
    by_name = dict(zip([f.name for f in objective.solver_factors], u))
    expected = np.concatenate([by_name[f.name].ravel() for f in design.factors])
    assert np.allclose(expected, solution[:ZL.shape[1]], rtol=1e-8, atol=1e-10)
    assert np.allclose(fac.beta, solution[ZL.shape[1]:], rtol=1e-8)


# --- issue 21: units of the data ------------------------------------------------------------------------------
SLOPE = "mathach ~ ses + (ses | school)"


def _hsb_fit(hsb, **columns):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        return bh.HLM(SLOPE, hsb.assign(**columns)).fit("reml")


@pytest.mark.parametrize("shift", [3e6, 1e8])
def test_large_outcome_location_changes_only_the_intercept(hsb, shift):
    """mathach + 3e6 gave tau_00 4.76 (not 4.83) and no convergence; + 1e8 tau_11 0.083 and a deviance
    18,000 too low. Now everything but the intercept is unchanged (rel 1e-6), the REML criterion too."""
    base = _hsb_fit(hsb)
    fit = _hsb_fit(hsb, mathach=hsb["mathach"] + shift)
    assert fit.converged
    np.testing.assert_allclose(fit.tau["school"], base.tau["school"], rtol=1e-6)
    assert fit.sigma2 == pytest.approx(base.sigma2, rel=1e-6)
    np.testing.assert_allclose(fit.fixed_effects["estimate"] - [shift, 0.0], base.fixed_effects["estimate"],
                               rtol=1e-6)
    np.testing.assert_allclose(fit.fixed_effects["se"], base.fixed_effects["se"], rtol=1e-6)
    assert fit.deviance == pytest.approx(base.deviance, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-5, 1e4])
def test_random_slope_predictor_in_other_units(hsb, scale):
    """ses * 1e-5 collapsed T (tau_11 1.1e8 instead of 4.1e9) and ses * 1e4 raised LinAlgError. Now
    T scales as 1/c^2 (slope) and 1/c (covariance); the REML criterion moves by 2 log c (its log|X'X| part)."""
    base = _hsb_fit(hsb)
    fit = _hsb_fit(hsb, ses=hsb["ses"] * scale)
    assert fit.converged
    units = np.array([1.0, scale])
    np.testing.assert_allclose(fit.tau["school"], base.tau["school"].to_numpy() / np.outer(units, units), rtol=1e-6)
    np.testing.assert_allclose(fit.fixed_effects["estimate"], base.fixed_effects["estimate"] / units, rtol=1e-6)
    np.testing.assert_allclose(fit.fixed_effects["robust_se"], base.fixed_effects["robust_se"] / units, rtol=1e-6)
    np.testing.assert_allclose(wide(fit.group_effects()), wide(base.group_effects()) / units, rtol=1e-6)
    assert fit.deviance == pytest.approx(base.deviance + 2 * np.log(scale), rel=1e-9)


def test_sat_like_units(hsb):
    """Outcome on a SAT-like scale (mean ~500, SD 100), random-slope predictor with SD 100 (a slope's location
    is part of the model: only its scale may change): the base fit in the new units."""
    base = _hsb_fit(hsb)
    a, c = 100 / hsb["mathach"].std(), 100 / hsb["ses"].std()
    fit = _hsb_fit(hsb, mathach=500 + a * hsb["mathach"], ses=c * hsb["ses"])
    assert fit.converged
    assert fit.sigma2 == pytest.approx(a**2 * base.sigma2, rel=1e-6)
    units = np.array([1.0, c])
    np.testing.assert_allclose(fit.tau["school"], a**2 * base.tau["school"].to_numpy() / np.outer(units, units),
                               rtol=1e-6)
    assert fit.fixed_effects["estimate"]["ses"] == pytest.approx(a / c * base.fixed_effects["estimate"]["ses"],
                                                                 rel=1e-6)


def test_log_linear_variance_predictor_with_sd_100(hsb):
    """ln sigma^2 = alpha_0 + alpha C with C of SD 100 returned alpha = 0 and a deviance 2.5 worse (the old
    start's step could not reach it). Now alpha is the SD-1 fit's alpha / 100, the deviance the same."""
    formula = "mathach ~ ses + (1 | school)"
    base = bh.HLM(formula, hsb, level1_variance="~ ses").fit("ml")
    c = 100 / hsb["ses"].std()
    fit = bh.HLM(formula, hsb.assign(ses=c * hsb["ses"]), level1_variance="~ ses").fit("ml")
    assert fit.deviance == pytest.approx(base.deviance, rel=1e-9)
    assert fit.residual_parameters["alpha ses"] == pytest.approx(base.residual_parameters["alpha ses"] / c, rel=1e-6)
    assert fit.residual_parameters["alpha0"] == pytest.approx(base.residual_parameters["alpha0"], rel=1e-6)


@pytest.mark.parametrize("shift", [1e6, 1e8])
@pytest.mark.parametrize("dask", [False, True])
def test_level2_predictor_far_from_zero_is_not_called_collinear(hsb, shift, dask):
    """meanses + 1e6 was refused as collinear with the intercept (the rank test ran on raw columns), from
    pandas and from Dask. Now the fit is the unshifted one: the intercept moves by -gamma shift, the rest
    stays (tau rel 1e-8: the shifted column itself keeps only ~1e-8 of its digits at 1e8)."""
    formula = "mathach ~ ses + meanses + (1 | school)"
    base = bh.HLM(formula, hsb).fit("ml")
    data = hsb.assign(meanses=hsb["meanses"] + shift)
    if dask:
        dd = pytest.importorskip("dask.dataframe")
        data = dd.from_pandas(data, npartitions=3)
    fit = bh.HLM(formula, data).fit("ml")
    g0, g_ses, g_mean = base.fixed_effects["estimate"]
    np.testing.assert_allclose(fit.fixed_effects["estimate"], [g0 - g_mean * shift, g_ses, g_mean], rtol=1e-8)
    assert fit.tau["school"].iloc[0, 0] == pytest.approx(base.tau["school"].iloc[0, 0], rel=1e-8)
    assert fit.deviance == pytest.approx(base.deviance, rel=1e-10)


def test_precision_warning_only_where_digits_are_really_lost():
    """y + 1e8 keeps ~9 digits of the variation (no warning, estimates unchanged); y + 1e11 keeps ~5: said so."""
    import dask.dataframe as dd

    from bayeshlm.errors import PrecisionWarning

    hsb = bh.datasets.load("hsb")[["mathach", "ses", "school"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        bh.HLM("mathach ~ ses + (1 | school)", hsb.assign(mathach=hsb["mathach"] + 1e8)).fit("reml")
    for data in (hsb.assign(mathach=hsb["mathach"] + 1e11), dd.from_pandas(hsb.assign(ses=hsb["ses"] + 1e10), 2)):
        with pytest.warns(PrecisionWarning, match=r"keeps about [45] significant digits of that variation"):
            bh.HLM("mathach ~ ses + (1 | school)", data).fit("reml")
