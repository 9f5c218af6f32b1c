"""Level-1 error structures as objects (bayeshlm.level1, issue 22): the registry and resolver, each structure's
relative variances / correlations and their analytic derivatives against central differences, their scale
behaviour, the marginal covariance the likelihood engine builds from them, the equations they write, and a toy
structure registered from this module (one module + one registration line)."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.design.scaling import standardise
from bayeshlm.level1 import (
    AR1,
    CAR1,
    CORRELATIONS,
    VARIANCE_FUNCTIONS,
    ByStratum,
    CorrelationStructure,
    Homogeneous,
    LogLinear,
    VarianceFunction,
    level1_errors,
)
from bayeshlm.likelihood.marginal import StructuredDeviance
from bayeshlm.spec import ResidualStructure


def _residual(n=40, seed=0):
    """A stand-in for a ResidualDesign: 3 strata, two log-linear predictors."""
    rng = np.random.default_rng(seed)
    return types.SimpleNamespace(strata=rng.integers(0, 3, n), strata_levels=pd.Index(["a", "b", "c"], name="g"),
                                 C=rng.normal(size=(n, 2)), C_names=("x1", "x2"))


# --- registry and resolver ------------------------------------------------------------------------------------

def test_resolver_maps_the_options_to_registered_objects():
    assert VARIANCE_FUNCTIONS == {"homogeneous": Homogeneous, "by_stratum": ByStratum, "log_linear": LogLinear}
    assert CORRELATIONS == {"ar1": AR1, "car1": CAR1}
    plain = level1_errors(None)
    assert isinstance(plain.variance, Homogeneous) and plain.correlation is None and plain.homogeneous
    both = level1_errors(ResidualStructure(variance_by="sector", correlation="ar1", time="t"))
    assert isinstance(both.variance, ByStratum) and both.variance.column == "sector"
    assert isinstance(both.correlation, AR1) and both.correlation.time == "t" and not both.homogeneous
    assert both.describe() == "level-1 variance by sector; AR1 errors in t"
    loglin = level1_errors(ResidualStructure(variance_formula="sector + female"))
    assert isinstance(loglin.variance, LogLinear) and loglin.describe() == "ln sigma^2 ~ sector + female"
    car = level1_errors(ResidualStructure(correlation="car1", time="age"))
    assert isinstance(car.variance, Homogeneous) and isinstance(car.correlation, CAR1)
    assert car.describe() == "CAR1 errors in age"


def test_unknown_correlation_is_refused_with_a_hint(sleepstudy):
    with pytest.raises(bh.OptionError, match="correlation='ar2' is not available. Did you mean 'ar1'.*'car1'"):
        level1_errors(ResidualStructure(correlation="ar2", time="t"))
    with pytest.raises(bh.OptionError, match="'ar1', 'car1'"):
        bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy, correlation="arma", time="Days")


def test_design_and_parameter_names_come_from_the_objects(sleepstudy):
    data = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 5, "early", "late"))
    design = bh.HLM("Reaction ~ Days + (1 | Subject)", data, level1_variance="phase", correlation="ar1",
                    time="Days").design
    errors = design.error_structure
    assert isinstance(errors.variance, ByStratum) and isinstance(errors.correlation, AR1)
    assert errors.parameter_names(design.residual) == ["log sd ratio phase=late", "atanh phi"]
    assert StructuredDeviance(design, "reml").extra_names() == ["log sd ratio phase=late", "atanh phi"]
    assert "Level-1 errors: level-1 variance by phase; AR1 errors in Days" in design.summary()
    assert bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy).design.error_structure.homogeneous


# --- numbers and derivatives ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variance", [ByStratum("g"), LogLinear("x1 + x2")], ids=["by_stratum", "log_linear"])
def test_variance_gradient_matches_central_differences(variance):
    """gradient(g) = d/d delta of sum_i g_i ln w_i(delta), to 1e-8 (the map is linear in delta)."""
    r = _residual()
    rng = np.random.default_rng(1)
    g = rng.normal(size=40)
    delta = rng.normal(size=variance.size(r))
    h = 1e-5
    numeric = [(g @ variance.log_relative_variances(r, delta + h * e, 40)
                - g @ variance.log_relative_variances(r, delta - h * e, 40)) / (2 * h) for e in np.eye(len(delta))]
    np.testing.assert_allclose(variance.gradient(r, g), numeric, rtol=1e-8, atol=1e-8)


def test_variance_functions_give_the_documented_relative_variances():
    r = _residual()
    delta = np.array([0.3, -0.2])
    w = np.exp(ByStratum("g").log_relative_variances(r, delta, 40))
    np.testing.assert_allclose(w, np.exp(2 * np.r_[0.0, delta])[r.strata], rtol=1e-15)  # sd ratio exp(delta_s)
    np.testing.assert_allclose(LogLinear("x").log_relative_variances(r, delta, 40), r.C @ delta, rtol=1e-15)
    np.testing.assert_array_equal(Homogeneous().log_relative_variances(r, np.zeros(0), 40), np.zeros(40))
    assert ByStratum("g").parameter_names(r) == ["log sd ratio g=b", "log sd ratio g=c"]
    assert LogLinear("x").parameter_names(r) == ["alpha x1", "alpha x2"]


@pytest.mark.parametrize("structure, z", [(AR1("t"), -0.7), (AR1("t"), 0.4), (CAR1("t"), 0.9)])
def test_correlation_derivatives_match_central_differences(structure, z):
    """d phi / d z and d phi^lag / d phi (lags 0..4) against central differences, to 1e-8; transform inverts phi."""
    h = 1e-6
    phi = structure.phi(z)
    np.testing.assert_allclose(structure.phi_derivative(phi), (structure.phi(z + h) - structure.phi(z - h)) / (2 * h),
                               rtol=1e-8)
    assert structure.transform(phi) == pytest.approx(z, abs=1e-12)
    lags = np.arange(5.0)
    numeric = (structure.correlations(phi + h, lags) - structure.correlations(phi - h, lags)) / (2 * h)
    np.testing.assert_allclose(structure.correlation_derivatives(phi, lags), numeric, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(structure.correlations(phi, lags), phi ** lags, rtol=1e-15)


def test_ar1_lags_are_whole_steps_and_car1_lags_are_not():
    lag = np.array([0.0, 1.0000000001, 2.9999999999, 0.5])
    np.testing.assert_array_equal(AR1("t").lags(lag), [0.0, 1.0, 3.0, 0.0])
    np.testing.assert_array_equal(CAR1("t").lags(lag), lag)
    assert -1 < AR1("t").phi(-3.0) < -0.99 and 0 < CAR1("t").phi(-30.0) < 1e-12


def test_marginal_covariance_is_built_from_the_objects(sleepstudy):
    """V_j / sigma^2 of the likelihood engine = Z Lambda Lambda' Z' + W^1/2 C(phi) W^1/2 per subject, with w and
    phi from the objects and C_ik = phi^|t_i - t_k| written out here (to 1e-12)."""
    data = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 5, "early", "late"))
    design = bh.HLM("Reaction ~ Days + (Days | Subject)", data, level1_variance="phase", correlation="car1",
                    time="Days").design
    objective = StructuredDeviance(design, "ml")
    x = np.r_[objective.params.start * 0.7, 0.4, 0.3]  # log sd ratio 0.4, logit phi 0.3
    phi = 1 / (1 + np.exp(-0.3))
    w = np.where(data["phase"] == "late", np.exp(0.8), 1.0)
    (lam,) = objective.params.lambdas(x)
    V = objective.covariances(x)
    f = design.factors[0]
    for batch, Vb in zip(objective.batches, V):
        for rows, Vg in zip(batch.rows, Vb):
            rows = rows[rows >= 0]
            t = design.residual.time[rows]
            Z = f.Z[rows]
            expected = Z @ lam @ lam.T @ Z.T + np.sqrt(np.outer(w[rows], w[rows])) * phi ** np.abs(t[:, None] - t)
            np.testing.assert_allclose(Vg[:len(rows), :len(rows)], expected, rtol=1e-12, atol=1e-12)


# --- scale behaviour -----------------------------------------------------------------------------------------

def test_time_steps_and_the_standardised_structure():
    assert AR1("t").time_step(np.array([2.0, 4.0, 6.0])) == 2.0
    assert AR1("t").standardised(2.0) == "car1" and AR1("t").standardised(3.0) == "ar1"
    assert CAR1("t").time_step(np.array([0.5, 1.0, 4.0])) == 1.0
    assert CAR1("t").standardised(2.0) == "car1"
    r = _residual()
    changes, scaling = LogLinear("x").standardised(r)
    np.testing.assert_allclose(changes["C"].mean(axis=0), 0.0, atol=1e-14)
    np.testing.assert_allclose(changes["C"].std(axis=0), 1.0, rtol=1e-14)
    np.testing.assert_allclose(scaling["c_centre"], r.C.mean(axis=0), rtol=1e-15)
    assert ByStratum("g").standardised(r) == ({}, {}) and Homogeneous().standardised(r) == ({}, {})


def test_variance_parameters_in_user_units_and_as_reported():
    """Log-linear: alpha* = alpha s (round trip exact to 1e-15) and ln sigma^2 moves by alpha'c; varIdent: unit-free,
    reported as sigma^2 exp(2 delta_s) per stratum and SD ratios exp(delta_s)."""
    scaling = types.SimpleNamespace(c_scale=np.array([2.0, 0.5]), c_centre=np.array([1.0, -3.0]))
    alpha_user = np.array([0.3, -0.2])
    alpha_std, log_ratio = LogLinear("x").convert(alpha_user, scaling, to_standard=True)
    np.testing.assert_allclose(alpha_std, [0.6, -0.1], rtol=1e-15)
    assert log_ratio == pytest.approx(0.3 * 1.0 + 0.2 * 3.0, rel=1e-15)
    back, log_ratio_back = LogLinear("x").convert(alpha_std, scaling, to_standard=False)
    np.testing.assert_allclose(back, alpha_user, rtol=1e-15)
    assert log_ratio_back == pytest.approx(log_ratio, rel=1e-15)
    reported = LogLinear("x").natural_parameters(_residual(), alpha_std, 1.5, scaling)
    assert reported == pytest.approx({"alpha0": 1.5, "alpha x1": 0.3, "alpha x2": -0.2}, rel=1e-15)
    delta = np.array([0.1, -0.4])
    assert ByStratum("g").convert(delta, scaling, True) == (pytest.approx(delta), 0.0)
    reported = ByStratum("g").natural_parameters(_residual(), delta, np.log(4.0), scaling)
    expected = {"sigma2 g=a": 4.0, "sigma2 g=b": 4.0 * np.exp(0.2), "sigma2 g=c": 4.0 * np.exp(-0.8),
                "sd ratio g=b": np.exp(0.1), "sd ratio g=c": np.exp(-0.4)}
    assert reported == pytest.approx(expected, rel=1e-14)


def test_standardise_asks_the_correlation_structure(sleepstudy):
    """AR(1) at occasions two apart is CAR(1) on t / 2 (phi* = phi^2 >= 0); the Scaling records the user's one."""
    data = sleepstudy.assign(Days=2 * sleepstudy["Days"])
    design = bh.HLM("Reaction ~ Days + (1 | Subject)", data, correlation="ar1", time="Days").design
    standard, scaling = standardise(design)
    assert isinstance(standard.error_structure.correlation, CAR1)
    assert scaling.time_step == 2.0 and scaling.correlation == "ar1"
    np.testing.assert_array_equal(standard.residual.time, design.residual.time / 2)


# --- equations ---------------------------------------------------------------------------------------------------

def test_equations_name_the_level1_error_model(sleepstudy):
    data = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 5, "early", "late"))
    text = bh.HLM("Reaction ~ Days + (1 | Subject)", data, level1_variance="phase", correlation="ar1",
                  time="Days").equations().text
    assert "r_ij ~ N(0, sigma^2[phase_ij])" in text
    assert "cor(r_ij, r_i'j) = phi^|t_ij - t_i'j|  (AR1, t = Days)" in text
    loglin = bh.HLM("Reaction ~ Days + (1 | Subject)", data, level1_variance="~ phase").equations().text
    assert "r_ij ~ N(0, sigma^2_ij)" in loglin and "ln sigma^2_ij = alpha_0 + alpha'c_ij, c: phase" in loglin
    assert "r_ij ~ N(0, sigma^2)" in bh.HLM("Reaction ~ Days + (1 | Subject)", data).equations().text


# --- a new structure: one module + one registration line ----------------------------------------------------

class ExponentialCorrelation(CorrelationStructure):
    """nlme's corExp: cor = exp(-lag / range), range = exp(z), i.e. phi^lag with phi = exp(-exp(-z))."""

    name = "exponential"
    label = "EXP"
    transform_name = "log range"

    def phi(self, z):
        return np.exp(-np.exp(-z))

    def phi_derivative(self, phi):
        return -phi * np.log(phi)

    def transform(self, phi):
        return -np.log(-np.log(phi))

    def time_step(self, lags):
        return float(np.median(lags))


def test_structures_the_bayesian_engine_lacks_are_refused_not_simplified():
    """A variance function or correlation structure without a Bayesian form is refused by name, never fitted as
    one sigma^2 or independent errors."""
    class Power(VarianceFunction):
        name = "power"

    with pytest.raises(bh.OptionError, match="does not fit Power level-1 variances.*'reml' or 'ml'"):
        Power().strata(_residual())
    with pytest.raises(bh.OptionError, match="not 'exponential'.*'reml' or 'ml'"):
        ExponentialCorrelation("t").pairs(_residual(), np.zeros(40, dtype=np.int64))
    assert Homogeneous().strata(_residual()) is None


def test_a_structure_registered_here_is_fitted_by_the_likelihood_engine(monkeypatch):
    """Registering corExp (one line) makes correlation='exponential' resolve and fit; it is CAR(1) in another
    parameter, so the ML deviance and phi equal the CAR(1) fit's (1e-8 relative, 1e-4)."""
    monkeypatch.setitem(CORRELATIONS, "exponential", ExponentialCorrelation)
    assert isinstance(level1_errors(ResidualStructure(correlation="exponential", time="t")).correlation,
                      ExponentialCorrelation)
    oxboys = bh.datasets.load("oxboys")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.likelihood.BoundaryFitWarning)
        car1 = bh.HLM("height ~ age + (1 | Subject)", oxboys, correlation="car1", time="age").fit("ml")
        exp = bh.HLM("height ~ age + (1 | Subject)", oxboys, correlation="exponential", time="age").fit("ml")
    assert exp.design.error_structure.describe() == "EXP errors in age"
    assert exp.deviance == pytest.approx(car1.deviance, rel=1e-8)
    phi = exp.residual_parameters.iloc[-1]
    assert phi == pytest.approx(car1.residual_parameters["phi (CAR1)"], abs=1e-4)
    assert exp.theta.iloc[-1] == pytest.approx(-np.log(-np.log(phi)), rel=1e-10)  # theta in the structure's own z


def test_a_fit_records_its_error_structure(sleepstudy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.likelihood.BoundaryFitWarning)
        fit = bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy, correlation="ar1", time="Days").fit("reml")
    assert isinstance(fit.error_structure.correlation, AR1) and fit.error_structure.describe() == "AR1 errors in Days"
    assert bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy).fit("reml").error_structure.homogeneous


def test_prior_predictive_draws_noise_by_the_error_structure(sleepstudy):
    """Prior predictive noise e = y - X beta - Z u follows the structure: e_i / sigma_stratum(i) has variance 1 in
    each stratum, and AR(1) innovations (e_t - phi e_t-1) / (sigma sqrt(1 - phi^2)) have variance 1 (50 draws x
    ~90 rows per stratum, 180 rows: within 0.2; using one sigma for both strata, or no correlation, fails)."""
    from bayeshlm.bayes import prior_predictive

    data = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 5, "early", "late"))
    for options in ({"level1_variance": "phase"}, {"correlation": "ar1", "time": "Days"}):
        model = bh.HLM("Reaction ~ Days + (1 | Subject)", data, **options)
        design = model.design
        tree = prior_predictive(design, model.pymc_model(), draws=50, seed=3)
        prior, y = tree["prior"], tree["prior_predictive"]["y"].values[0]
        (f,) = design.factors
        u = prior[f"u_{f.name}"].values[0]  # (draws, groups, coefficients)
        noise = y - prior["beta"].values[0] @ design.X.T - np.einsum("nq,dnq->dn", f.Z, u[:, f.codes])
        if "sigma_strata" in prior:
            codes = design.error_structure.variance.strata(design.residual).codes
            z = noise / prior["sigma_strata"].values[0][:, codes]
            for k in range(2):
                assert np.var(z[:, codes == k]) == pytest.approx(1.0, abs=0.2)
        else:
            pairs = design.error_structure.correlation.pairs(design.residual, f.codes)
            phi, sigma = prior["phi"].values[0][:, None], prior["sigma"].values[0][:, None]
            innovation = (noise[:, pairs.second] - phi * noise[:, pairs.first]) / (sigma * np.sqrt(1 - phi ** 2))
            assert np.var(innovation) == pytest.approx(1.0, abs=0.2)
