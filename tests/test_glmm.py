"""Binary, binomial and count outcomes by maximum likelihood against lme4::glmer (issue 23).

References: tests/reference/glmm/glmm_reference.json, written by make_glmm_reference.R with tight settings
(bobyqa, rhoend 1e-10, tolPwrss 1e-12). Tolerances: log-likelihood 1e-6 relative; fixed effects, theta and
tau 1e-4 relative or 1e-6 absolute, whichever is larger; standard errors 1e-2 relative (lme4's Hessian-based
SEs); conditional modes 1e-4 absolute. The quadrature log-likelihood (nagq=25) is compared with the marginal
log-likelihood computed in R by stats::integrate per herd at glmer's nAGQ=25 estimates.
"""

from __future__ import annotations

import json
import re
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.errors import DataError, FormulaError, OptionError
from bayeshlm.families import get_family

REFERENCE = Path(__file__).parent / "reference" / "glmm"
REL, ABS = 1e-4, 1e-6
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
CONTRACEPTION = "use ~ age + I(age**2) + urban + livch + (1 | district)"


@cache
def reference() -> dict:
    return json.loads((REFERENCE / "glmm_reference.json").read_text())


def contraception() -> pd.DataFrame:
    data = bh.datasets.load("contraception")
    data["use"] = (data["use"] == "Y").astype(int)  # mlmRev codes use as N/Y; Y is the event
    data["livch"] = pd.Categorical(data["livch"], categories=["0", "1", "2", "3+"])
    return data


MODELS = {
    "cbpp_laplace": (lambda: bh.HLM(CBPP, bh.datasets.load("cbpp"), family="binomial"), {}),
    "cbpp_probit": (lambda: bh.HLM(CBPP, bh.datasets.load("cbpp"), family="binomial", link="probit"), {}),
    "cbpp_agq25": (lambda: bh.HLM(CBPP, bh.datasets.load("cbpp"), family="binomial"), {"nagq": 25}),
    "contraception_intercept": (lambda: bh.HLM(CONTRACEPTION, contraception(), family="bernoulli"), {}),
    "contraception_urban": (lambda: bh.HLM(CONTRACEPTION.replace("(1 |", "(urban |"), contraception(),
                                           family="bernoulli"), {}),
    "bernoulli_crossed": (lambda: bh.HLM("y ~ x + (1 | subject) + (1 | item)",
                                         pd.read_csv(REFERENCE / "bernoulli_crossed.csv"), family="bernoulli"), {}),
    "bernoulli_nested": (lambda: bh.HLM("y ~ x + (1 + x | school) + (1 | school:class)",
                                        pd.read_csv(REFERENCE / "bernoulli_nested.csv"), family="bernoulli"), {}),
    "poisson_exposure": (lambda: bh.HLM("y ~ x + (1 | g)", pd.read_csv(REFERENCE / "poisson_exposure.csv"),
                                        family="poisson", exposure="years"), {}),
}


def salamanders() -> pd.DataFrame:
    data = pd.read_csv(REFERENCE / "salamanders.csv")
    data["mined"] = pd.Categorical(data["mined"], categories=["yes", "no"])  # R's level order
    return data


SALAMANDERS = "count ~ cover + mined + (1 | site)"
PEERS = {  # glmmTMB (observed information) and glmer.nb (expected); shape k is glmmTMB's sigma, lme4's theta
    "nbinom_glmmtmb": (lambda: bh.HLM(SALAMANDERS, salamanders(), family="negative_binomial"),
                       {"information": "observed"}),
    "nbinom_glmer": (lambda: bh.HLM(SALAMANDERS, salamanders(), family="negative_binomial"), {}),
    "cbpp_probit_glmmtmb": (lambda: bh.HLM(CBPP, bh.datasets.load("cbpp"), family="binomial", link="probit"),
                            {"information": "observed"}),
}


@cache
def fitted(name: str):
    make, options = {**MODELS, **PEERS}[name]
    return make().fit(method="ml", **options)


def by_text_level(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Groups x terms of one column of a long group table, groups sorted as text (R's factor order)."""
    wide = table[column].unstack("term")
    return wide.set_index(wide.index.astype(str)).sort_index()


def assert_close(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    np.testing.assert_allclose(actual, expected, rtol=REL, atol=ABS, err_msg=what)


@pytest.mark.parametrize("name", list(MODELS))
def test_matches_glmer(name):
    ref, fit = reference()[name], fitted(name)
    assert fit.converged, fit.messages
    assert abs(fit.loglik - ref["loglik"]) <= 1e-6 * abs(ref["loglik"])
    assert fit.deviance == pytest.approx(-2 * fit.loglik)
    assert_close(fit.fixed_effects["estimate"], ref["beta"], "fixed effects")
    order = list(ref["tau"])  # lme4 orders grouping factors by decreasing number of groups
    theta = np.concatenate([fit.theta[[n for n in fit.theta.index if n.startswith(f"{f}.")]] for f in order])
    assert_close(theta, np.atleast_1d(ref["theta"]), "theta")
    tau = np.concatenate([fit.tau[f].to_numpy().ravel() for f in order])
    assert_close(tau, np.concatenate([np.ravel(t) for t in ref["tau"].values()]), "tau")
    np.testing.assert_allclose(fit.fixed_effects["se"], ref["se"], rtol=1e-2)
    assert fit.aic == pytest.approx(fit.deviance + 2 * (len(ref["beta"]) + len(np.atleast_1d(ref["theta"]))))


@pytest.mark.parametrize("name", list(PEERS))
def test_negative_binomial_and_observed_information_match_peers(name):
    """information='observed' is glmmTMB's Laplace, 'expected' (default) lme4's; they differ by 0.05 here."""
    ref, fit = reference()[name], fitted(name)
    assert fit.converged, fit.messages
    assert abs(fit.loglik - ref["loglik"]) <= 1e-6 * abs(ref["loglik"])
    assert_close(fit.fixed_effects["estimate"], ref["beta"], "fixed effects")
    sd = np.sqrt(next(iter(fit.tau.values())).iloc[0, 0])
    assert_close(sd, ref["sd"] if "sd" in ref else ref["theta"], "random-intercept SD")
    if name.startswith("nbinom"):
        assert_close(fit.family_parameters["shape"], ref["shape"], "shape k")
        assert fit.n_params == 5
    np.testing.assert_allclose(fit.fixed_effects["se"], ref["se"], rtol=1e-2)
    assert "rate_ratio" in fit.fixed_effects or "probit" in name


def test_information_choice_matters_only_for_non_canonical_links():
    observed = bh.HLM(CONTRACEPTION, contraception(), family="bernoulli").fit(information="observed")
    assert observed.loglik == pytest.approx(fitted("contraception_intercept").loglik, rel=1e-9)
    assert abs(fitted("nbinom_glmmtmb").loglik - fitted("nbinom_glmer").loglik) > 0.01
    with pytest.raises(OptionError, match="information='fisher'.*'expected'.*'observed'"):
        bh.HLM(CONTRACEPTION, contraception(), family="bernoulli").fit(information="fisher")


@pytest.mark.parametrize("name", ["cbpp_laplace", "contraception_intercept", "poisson_exposure",
                                  "bernoulli_crossed"])
def test_group_effects_match_ranef(name):
    """Conditional modes; R orders factor levels as text ('1', '10', '11', ...), so sort ours the same way."""
    effects = fitted(name).random_effects()
    np.testing.assert_allclose(by_text_level(effects, "estimate")["(Intercept)"], reference()[name]["ranef"],
                               atol=1e-4)
    np.testing.assert_allclose(by_text_level(effects, "se")["(Intercept)"], reference()[name]["ranef_sd"], rtol=1e-3)


def test_quadrature_loglik_is_the_marginal_and_one_point_is_laplace():
    """nagq=25 equals R's integrate() marginal (glmer's own logLik at nAGQ > 1 is on another scale)."""
    ref = reference()["cbpp_agq25"]
    assert fitted("cbpp_agq25").loglik == pytest.approx(ref["loglik"], rel=1e-6)
    assert abs(fitted("cbpp_agq25").loglik - ref["glmer_loglik_scale"]) > 40  # the saturated offset
    model, _ = MODELS["cbpp_laplace"]
    assert model().fit(nagq=1).loglik == pytest.approx(fitted("cbpp_laplace").loglik, rel=1e-12)


def test_odds_ratios_intervals_and_latent_icc():
    fit = fitted("contraception_intercept")
    table = fit.fixed_effects
    np.testing.assert_allclose(table["odds_ratio"], np.exp(table["estimate"]))
    np.testing.assert_allclose(table["odds_ratio_upper"], np.exp(table["estimate"] + 1.959964 * table["se"]),
                               rtol=1e-6)
    np.testing.assert_allclose(table["z"], table["estimate"] / table["se"])
    tau00 = reference()["contraception_intercept"]["tau"]["district"]
    assert fit.icc() == pytest.approx(tau00 / (tau00 + np.pi ** 2 / 3), rel=1e-4)
    assert "rate_ratio" in fitted("poisson_exposure").fixed_effects
    assert fitted("cbpp_probit").icc() == pytest.approx(fitted("cbpp_probit").tau["herd"].iloc[0, 0] /
                                                        (fitted("cbpp_probit").tau["herd"].iloc[0, 0] + 1))
    with pytest.raises(OptionError, match="latent-scale ICC.*log link"):
        fitted("poisson_exposure").icc()
    assert "eta = log(phi / (1 - phi))" in fit.report()


@pytest.mark.parametrize("name, tolerance", [("cbpp_probit", 1e-10), ("poisson_exposure", 1e-10),
                                             ("cbpp_laplace", 0.02)])
def test_population_average_is_the_marginal_mean(name, tolerance):
    """Marginal mean E_u[g^-1(eta + u)] by 60-point Gauss-Hermite vs g^-1 of the population-average predictor:
    exact for probit and log, the logit approximation within 0.02 on the logit scale."""
    from scipy import special

    fit = fitted(name)
    table = fit.population_average()
    tau = fit.tau[fit.design.factor_names[0]].iloc[0, 0]
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    X = fit.design.X
    eta = X @ table["unit_specific"].to_numpy()
    marginal = (fit.family.mean(eta[:, None] + np.sqrt(tau) * nodes) @ weights) / weights.sum()
    link_of = {"probit": special.ndtri, "log": np.log, "logit": special.logit}[fit.family.link.name]
    np.testing.assert_allclose(X @ table["population_average"].to_numpy(), link_of(marginal), atol=tolerance)
    with pytest.raises(OptionError, match="random slopes.*urban"):
        fitted("contraception_urban").population_average(method="closed_form")


def test_unscaled_predictor_does_not_hurt():
    """age in thousandths of a year (age^2 up to ~4e8): the same model, coefficients rescaled exactly."""
    data = contraception()
    data["age"] = data["age"] * 1000
    fit = bh.HLM(CONTRACEPTION, data, family="bernoulli").fit()
    ref = reference()["contraception_intercept"]
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-6)
    scale = np.array([1, 1e-3, 1e-6, 1, 1, 1, 1])
    assert_close(fit.fixed_effects["estimate"] / scale, ref["beta"], "rescaled fixed effects")


def test_level_notation_gives_the_same_fit():
    """R&B's level equations: eta_ij = beta_0j + ..., beta_0j = gamma_00 + u_0j (here with cbind and probit)."""
    model = bh.HLM.from_levels("cbind(incidence, size - incidence) ~ period", {"intercept": "~ 1"}, groups="herd",
                               data=bh.datasets.load("cbpp"), family="binomial", link="probit")
    fit = model.fit()
    assert fit.loglik == pytest.approx(reference()["cbpp_probit"]["loglik"], rel=1e-6)
    assert_close(fit.fixed_effects["estimate"], reference()["cbpp_probit"]["beta"], "level notation")
    with pytest.warns(UserWarning, match="only the values 0 and 1"):
        bh.HLM.from_levels("use ~ urban", {"intercept": "~ 1"}, groups="district", data=contraception())


def test_trials_column_equals_cbind_and_two_column_cbind():
    cbpp = bh.datasets.load("cbpp")
    by_trials = bh.HLM("incidence ~ period + (1 | herd)", cbpp, family="binomial", trials="size").fit()
    assert by_trials.loglik == pytest.approx(reference()["cbpp_laplace"]["loglik"], rel=1e-6)
    two = cbpp.assign(healthy=cbpp["size"] - cbpp["incidence"])
    by_failures = bh.HLM("cbind(incidence, healthy) ~ period + (1 | herd)", two, family="binomial").fit()
    assert by_failures.loglik == pytest.approx(by_trials.loglik, rel=1e-9)


def test_offset_in_formula_equals_exposure():
    data = pd.read_csv(REFERENCE / "poisson_exposure.csv")
    by_formula = bh.HLM("y ~ x + offset(log(years)) + (1 | g)", data, family="poisson").fit()
    assert by_formula.loglik == pytest.approx(reference()["poisson_exposure"]["loglik"], rel=1e-6)
    plain = bh.HLM("y ~ offset(log_years) + x + (1 | g)", data.assign(log_years=np.log(data["years"])),
                   family="poisson").fit()
    assert plain.loglik == pytest.approx(by_formula.loglik, rel=1e-9)
    assert_close(plain.fixed_effects["estimate"], reference()["poisson_exposure"]["beta"], "offset(column)")


def _separated(kind: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 6000 if kind == "large" else 100
    data = pd.DataFrame({"g": np.arange(n) % 10, "x": rng.normal(size=n), "c": np.tile(list("abcd"), n // 4)})
    if kind in ("complete", "large"):
        data["y"] = (data["x"] > 0.3).astype(int)
    elif kind == "category":
        data["y"] = (rng.random(100) < 0.5).astype(int)
        data.loc[data["c"] == "d", "y"] = 0
    else:
        data["y"] = rng.poisson(2.0, 100)
        data.loc[data["c"] == "b", "y"] = 0
    return data


@pytest.mark.parametrize("kind, family, formula, names", [
    ("complete", "bernoulli", "y ~ x + (1 | g)", "'x'"),
    ("large", "bernoulli", "y ~ x + (1 | g)", "'x'"),  # > 5,000 rows: the linear program runs after the GLM drifts
    ("category", "bernoulli", "y ~ x + c + (1 | g)", "'c[T.d]'"),
    ("zero_counts", "poisson", "y ~ x + c + (1 | g)", "'c[T.b]'"),
])
def test_separation_detected_and_explained(kind, family, formula, names):
    """Old behaviour (before the check): 'converged' with coefficients ~25 and a wrong log-likelihood."""
    with pytest.raises(DataError, match=rf"predictors {re.escape(names)} separate the outcome.*merge or drop"):
        bh.HLM(formula, _separated(kind), family=family).fit()


def test_missing_trials_dropped_and_counted():
    """A row missing its trials is dropped like any other (before: absent from design.dropped's count)."""
    cbpp = bh.datasets.load("cbpp")
    cbpp.loc[3, "size"] = np.nan
    cbpp.loc[5, "incidence"] = np.nan
    model = bh.HLM(CBPP, cbpp, family="binomial")
    assert model.design.n_obs == len(model.outcome.size) == 54
    assert str(model.design.dropped) == ("2 of 56 rows dropped for missing values in: incidence (1), size (1); "
                                         "54 rows analysed")
    assert list(model.design.dropped.positions) == [3, 5]
    complete = bh.HLM(CBPP, cbpp.drop(index=[3, 5]), family="binomial")
    assert model.fit().loglik == pytest.approx(complete.fit().loglik, rel=1e-12)
    with pytest.raises(DataError, match=r"Missing values in 'size' \(row 3\)"):
        bh.HLM(CBPP, cbpp, family="binomial", missing="raise")


def test_boundary_variance_reported_in_words():
    """Outcome unrelated to the groups: tau -> 0, said in words; the fit is then the plain logistic GLM."""
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"g": np.repeat(np.arange(10), 20), "x": rng.normal(size=200)})
    data["y"] = (rng.random(200) < 0.5).astype(int)
    fit = bh.HLM("y ~ x + (1 | g)", data, family="bernoulli").fit()
    assert fit.tau["g"].iloc[0, 0] < 1e-8
    assert any("'g'" in m and "boundary fit" in m for m in fit.messages)
    X = np.column_stack([np.ones(200), data["x"]])
    beta = fit.fixed_effects["estimate"].to_numpy()
    mu = 1 / (1 + np.exp(-X @ beta))
    y = data["y"].to_numpy()
    assert fit.loglik == pytest.approx(np.sum(y * np.log(mu) + (1 - y) * np.log1p(-mu)), rel=1e-9)
    assert np.abs(X.T @ (y - mu)).max() < 1e-6  # the GLM score equations
    glm_se = np.sqrt(np.diag(np.linalg.inv(X.T @ (X * (mu * (1 - mu))[:, None]))))
    np.testing.assert_allclose(fit.fixed_effects["se"], glm_se, rtol=1e-3)
    row = fit.variance_components.iloc[0]  # held at the boundary: no standard error, interval not claimed
    assert row["estimate"] < 1e-8 and np.isnan(row["se"]) and np.isnan(row["upper"])
    effects = fit.random_effects("g")
    np.testing.assert_allclose(effects["estimate"], 0.0, atol=1e-6)


# --- families -------------------------------------------------------------------------------------------
def test_family_loglik_has_every_constant():
    from scipy import stats

    eta, y, n = np.array([-2.0, 0.3, 1.5]), np.array([1.0, 2.0, 4.0]), np.array([3.0, 4.0, 5.0])
    for link in ("logit", "probit", "cloglog"):
        fam = get_family("binomial", link)
        assert np.allclose(fam.loglik(y, eta, n), stats.binom.logpmf(y, n, fam.mean(eta)))
        h = 1e-6
        assert np.allclose(fam.link.mu_eta(eta), (fam.mean(eta + h) - fam.mean(eta - h)) / (2 * h), rtol=1e-6)
    assert np.allclose(get_family("poisson").loglik(y, eta, 1.0), stats.poisson.logpmf(y, np.exp(eta)))
    far = get_family("bernoulli").loglik(np.array([1.0, 0.0]), np.array([-800.0, 800.0]), 1.0)
    assert np.allclose(far, [-800.0, -800.0])  # no overflow to -inf in the tails
    assert get_family("poisson").equation() == "eta = log(lambda)"


# --- bad input ------------------------------------------------------------------------------------------
def _frame(y, **extra) -> pd.DataFrame:
    n = len(y)
    return pd.DataFrame({"y": y, "x": np.linspace(0, 1, n), "g": np.arange(n) % 3, **extra})


BAD_INPUTS = [
    ("bernoulli_not_01", lambda: bh.HLM("y ~ x + (1 | g)", _frame([0, 1, 2, 0, 1, 1]), family="bernoulli"),
     DataError, r"must be 0 or 1.*row 2\)"),
    ("bernoulli_text", lambda: bh.HLM("y ~ x + (1 | g)", _frame(list("NYNYYN")), family="bernoulli"),
     DataError, r"holds text.*Say which value is the event"),
    ("successes_over_trials", lambda: bh.HLM("cbind(y, n - y) ~ x + (1 | g)", _frame([1, 5, 2, 0, 1, 1],
                                             n=[2, 4, 2, 2, 2, 2]), family="binomial"),
     DataError, r"exceed the number of trials.*row 1\)"),
    ("fractional_successes", lambda: bh.HLM("y ~ x + (1 | g)", _frame([1, 1.5, 2, 0, 1, 1], n=[2] * 6),
                                            family="binomial", trials="n"),
     DataError, r"whole numbers.*row 1\)"),
    ("negative_count", lambda: bh.HLM("y ~ x + (1 | g)", _frame([1, 3, -2, 0, 1, 4]), family="poisson"),
     DataError, r"count.*row 2\)"),
    ("fractional_count", lambda: bh.HLM("y ~ x + (1 | g)", _frame([1, 3, 2.5, 0, 1, 4]), family="poisson"),
     DataError, r"count.*row 2\)"),
    ("nbinom_fractional_count", lambda: bh.HLM("y ~ x + (1 | g)", _frame([1, 3, 2, 0, 1.25, 4]),
                                                family="negative_binomial"),
     DataError, r"negative_binomial outcome is a count.*row 4\)"),
    ("zero_exposure", lambda: bh.HLM("y ~ x + (1 | g)", _frame([1, 3, 2, 0, 1, 4], t=[1, 2, 0, 1, -1, 1.0]),
                                     family="poisson", exposure="t"),
     DataError, r"exposure 't' must be positive.*rows 2, 4"),
    ("binomial_without_trials", lambda: bh.HLM("y ~ x + (1 | g)", _frame([0, 1] * 3), family="binomial"),
     OptionError, r"needs the number of trials.*cbind"),
    ("cbind_other_expression", lambda: bh.HLM("cbind(y, n - x) ~ x + (1 | g)", _frame([0, 1] * 3, n=[2] * 6),
                                               family="binomial"),
     FormulaError, r"'n - y'"),
    ("cbind_code", lambda: bh.HLM("cbind(y, __import__('os')) ~ x + (1 | g)", _frame([0, 1] * 3),
                                  family="binomial"),
     FormulaError, r"Cannot read the outcome"),
    ("cbind_gaussian", lambda: bh.HLM("cbind(y, n) ~ x + (1 | g)", _frame([0, 1] * 3, n=[2] * 6)),
     OptionError, r"family='binomial'"),
    ("missing_trials_column", lambda: bh.HLM("y ~ x + (1 | g)", _frame([0, 1] * 3), family="binomial",
                                             trials="size"),
     DataError, r"'size' is not in the data"),
    ("unknown_family", lambda: bh.HLM("y ~ x + (1 | g)", _frame([0, 1] * 3), family="bernouli"),
     OptionError, r"Did you mean 'bernoulli'"),
    ("wrong_link", lambda: bh.HLM("y ~ x + (1 | g)", _frame([0, 1] * 3), family="poisson", link="logit"),
     OptionError, r"link='logit' is not available for the poisson family"),
    ("offset_expression", lambda: bh.HLM("y ~ x + offset(2 * t) + (1 | g)", _frame([1, 3, 2, 0, 1, 4], t=[1.0] * 6),
                                         family="poisson"),
     FormulaError, r"Cannot read the offset"),
    ("offset_interaction", lambda: bh.HLM("y ~ x + offset(t):x + (1 | g)", _frame([1, 3, 2, 0, 1, 4], t=[1.0] * 6),
                                          family="poisson"),
     FormulaError, r"its own term"),
    ("offset_log_of_zero", lambda: bh.HLM("y ~ x + offset(log(t)) + (1 | g)",
                                          _frame([1, 3, 2, 0, 1, 4], t=[1, 2, 0, 1, 1, 1.0]), family="poisson"),
     DataError, r"exposure 't' must be positive.*row 2\."),
    ("offset_and_exposure", lambda: bh.HLM("y ~ x + offset(log(t)) + (1 | g)", _frame([1, 3, 2, 0, 1, 4], t=[1.0] * 6),
                                           family="poisson", exposure="t"),
     OptionError, r"Give the exposure once"),
    ("exposure_on_bernoulli", lambda: bh.HLM("y ~ x + (1 | g)", _frame([0, 1] * 3, t=[1.0] * 6),
                                             family="bernoulli", exposure="t"),
     OptionError, r"exposure= applies to count outcomes"),
]


@pytest.mark.parametrize("name, make, error, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_refused(name, make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_fit_options_refused():
    model = MODELS["contraception_urban"][0]()
    with pytest.raises(OptionError, match="method='reml' is not defined for the bernoulli family.*Laplace"):
        model.fit(method="reml")
    with pytest.raises(OptionError, match="one grouping factor with a random intercept only"):
        model.fit(nagq=25)
    with pytest.raises(OptionError, match="nagq=0"):
        model.fit(nagq=0)
    with pytest.raises(OptionError, match="Unknown fit option 'nAGQ'.*nagq"):
        model.fit(nAGQ=25)


def test_binary_outcome_with_gaussian_family_warns():
    data = contraception()
    with pytest.warns(UserWarning, match="only the values 0 and 1.*family='bernoulli'"):
        bh.HLM(CONTRACEPTION, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bh.HLM(CONTRACEPTION, data, family="gaussian")  # said explicitly: no warning
        bh.HLM("age ~ use + (1 | district)", data)  # not binary: no warning


@pytest.mark.parametrize("name", ["cbpp_probit", "contraception_urban", "poisson_exposure", "bernoulli_nested",
                                  "bernoulli_crossed", "nbinom_glmmtmb"])
def test_analytic_gradient_matches_differences(name):
    """The Laplace deviance's analytic gradient in (beta, theta) (non-canonical probit, a correlated slope, an
    offset, two nested or crossed factors on the Schur path, the negative binomial with the observed
    information) against central differences of the deviance."""
    from threadpoolctl import threadpool_limits

    from bayeshlm.likelihood.glmm import GLMMObjective

    with threadpool_limits(1, user_api="blas"):  # as fit_glmm does: threads only contend on small matrices
        _check_gradient(name, GLMMObjective)


@pytest.mark.parametrize("name, nagq", [("cbpp_laplace", 25), ("cbpp_probit", 7), ("poisson_exposure", 9),
                                        ("nbinom_glmer", 5)])
def test_quadrature_gradient_matches_differences(name, nagq):
    """The adaptive-quadrature log-likelihood's analytic gradient (the mode and the node spacing move with the
    parameters) against central differences (it was central differences of the deviance before)."""
    from threadpoolctl import threadpool_limits

    from bayeshlm.likelihood.glmm import GLMMObjective

    with threadpool_limits(1, user_api="blas"):
        _check_gradient(name, GLMMObjective, nagq)


def _check_gradient(name, GLMMObjective, nagq=1):
    make, options = {**MODELS, **PEERS}[name]
    model = make()
    objective = GLMMObjective(model.design, model.outcome, nagq=nagq,
                              information=options.get("information", "expected"))
    rng = np.random.default_rng(1)
    x = objective.start()
    x[:objective.p] = rng.normal(size=objective.p) * 0.3
    x[objective.p:objective.p + objective.n_theta] *= 0.7
    x[objective.p:objective.p + objective.n_theta] += 0.1 * rng.normal(size=objective.n_theta)
    analytic = -2 * objective.score(x)
    assert len(analytic) == objective.p + objective.n_theta
    u0, h, numeric = objective.u.copy(), 3e-5, []
    for k in range(len(analytic)):
        step = np.zeros(len(x))
        step[k] = h
        objective.u = u0.copy()
        up = objective.deviance(x + step)
        objective.u = u0.copy()
        numeric.append((up - objective.deviance(x - step)) / (2 * h))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-6)


def test_equations_on_the_link_scale():
    """Level 1 is the sampling model and the link (R&B eqs. 10.1-10.3): no r_ij, no sigma^2 (the Gaussian
    renderer alone wrote 'incidence_ij = ... + r_ij, r_ij ~ N(0, sigma^2)')."""
    cbpp = bh.HLM(CBPP, bh.datasets.load("cbpp"), family="binomial").equations()
    assert "incidence_ij ~ Binomial(n_ij, phi_ij)" in cbpp.text
    assert "eta_ij = log(phi_ij / (1 - phi_ij)) = b0_j + b1_j*(period[T.2])_ij" in cbpp.text
    assert "sigma" not in cbpp.text and "r_ij" not in cbpp.text and r"\sigma" not in cbpp.latex
    assert r"\eta_{ij} = log(\varphi_{ij} / (1 - \varphi_{ij}))" in cbpp.latex
    nested = MODELS["bernoulli_nested"][0]().equations().text
    assert "eta_ijk = log(phi_ijk / (1 - phi_ijk)) = p0_jk" in nested and "r_jk ~ N(0, T_pi)" in nested
    assert "e_ijk" not in nested and "sigma" not in nested
    counts = bh.HLM("y ~ x + (1 | g)", pd.read_csv(REFERENCE / "poisson_exposure.csv"), family="poisson",
                    exposure="years").equations().text
    assert "eta_ij = log(lambda_ij) = b0_j + b1_j*(x)_ij + log(years)_ij" in counts
    assert "Combined:  eta = log(lambda) = g0 + g1*x + u[g]0 + log(years)  (y ~ Poisson(lambda))" in counts


@pytest.mark.parametrize("name, make", [
    ("cbpp_pql", lambda: bh.HLM(CBPP, bh.datasets.load("cbpp"), family="binomial")),
    ("contraception_pql", lambda: bh.HLM(CONTRACEPTION, contraception(), family="bernoulli")),
])
def test_pql_matches_the_iteration_written_in_r(name, make):
    """PQL (sigma^2 = 1, REML steps) against make_pql_reference.R (the same iteration with metafor::rma.mv)."""
    ref = json.loads((REFERENCE / "pql_reference.json").read_text())[name]
    fit = make().fit(method="pql")
    assert fit.converged and fit.loglik is None and fit.deviance is None
    assert_close(fit.fixed_effects["estimate"], ref["beta"], "PQL fixed effects")
    np.testing.assert_allclose(fit.fixed_effects["se"], ref["se"], rtol=1e-6)
    assert_close(next(iter(fit.tau.values())).iloc[0, 0], ref["tau"], "PQL tau")
    np.testing.assert_allclose(by_text_level(fit.random_effects(), "estimate")["(Intercept)"], ref["modes"],
                               atol=1e-6)
    with pytest.raises(OptionError, match="only option is maxiter"):
        make().fit(method="pql", nagq=5)


def test_deviance_test_between_nested_hglms_matches_glmer():
    """LR test of the urban random slope (R&B ch. 10): twice glmer's log-likelihood difference (tight fits)."""
    data = contraception()
    simple = bh.HLM(CONTRACEPTION, data, family="bernoulli").fit()
    slope = bh.HLM(CONTRACEPTION.replace("(1 | district)", "(urban | district)"), data, family="bernoulli").fit()
    test = bh.deviance_test(slope, simple)
    expected = 2 * (reference()["contraception_urban"]["loglik"] - reference()["contraception_intercept"]["loglik"])
    assert test.statistic == pytest.approx(expected, rel=1e-6) and test.df == 2
    assert test.p_value == pytest.approx(0.002336, abs=1e-6) and "boundary" in test.note


def test_deviance_test_refuses_hglm_comparisons_that_are_not_likelihood_ratios():
    cbpp = bh.datasets.load("cbpp")
    laplace = bh.HLM(CBPP, cbpp, family="binomial").fit()
    with pytest.raises(OptionError, match=r"uses Laplace and the other adaptive Gauss-Hermite quadrature \(25"):
        bh.deviance_test(laplace, bh.HLM(CBPP, cbpp, family="binomial").fit(nagq=25))
    with pytest.raises(OptionError, match=r"different families or links \(binomial/logit vs binomial/probit\)"):
        bh.deviance_test(laplace, bh.HLM(CBPP, cbpp, family="binomial", link="probit").fit())
    gaussian = bh.HLM("incidence ~ period + (1 | herd)", cbpp.assign(incidence=cbpp["incidence"] + 0.5)).fit("ml")
    with pytest.raises(OptionError, match=r"a Gaussian model and the other a binary/count \(HGLM\) model"):
        bh.deviance_test(gaussian, laplace)


# --- the result contract, predictions and residuals (glmm_predict_reference.json) -----------------------------

@cache
def predict_reference() -> dict:
    return json.loads((REFERENCE / "glmm_predict_reference.json").read_text())


@pytest.mark.parametrize("name", ["cbpp_laplace", "contraception_urban", "bernoulli_nested", "bernoulli_crossed",
                                  "nbinom_glmer"])
def test_tables_follow_the_result_contract(name):
    from bayeshlm.results.contract import contract_problems

    fit = fitted(name)
    assert contract_problems("fixed_effects", fit.fixed_effects) == []
    assert list(fit.fixed_effects.columns[4:6]) == ["z", "p"]
    assert contract_problems("variance_components", fit.variance_components) == []
    for f in fit.design.factors:
        for kind in ("group_effects", "random_effects"):
            table = getattr(fit, kind)(f.name)
            assert contract_problems(kind, table, f.name) == []
            assert len(table) == f.n_groups * f.n_coef
    tau = [fit.tau[f.name].iloc[a, b] for f in fit.design.factors  # column by column, variance first
           for b in range(f.n_coef) for a in range(b, f.n_coef)]
    np.testing.assert_allclose(fit.variance_components["estimate"], tau, rtol=1e-12)
    narrow = fit.fixed_effects_at(0.5)
    assert (narrow["upper"] - narrow["lower"] < fit.fixed_effects["upper"] - fit.fixed_effects["lower"]).all()


def test_variance_component_se_matches_glmmtmb():
    """se(tau) by the delta method from 2 H^-1; glmmTMB gives log(sd) with its SE (same Laplace deviance)."""
    ref = predict_reference()["cbpp"]
    row = fitted("cbpp_laplace").variance_components.iloc[0]
    assert row["estimate"] == pytest.approx(ref["glmmtmb_tau"], rel=1e-4)
    assert row["se"] == pytest.approx(ref["glmmtmb_tau_se"], rel=1e-2)
    assert row["lower"] == max(0.0, row["estimate"] - 1.959964 * row["se"])  # a variance is >= 0
    assert row["upper"] == pytest.approx(row["estimate"] + 1.959964 * row["se"], rel=1e-6)


def test_random_slope_effects_match_ranef_condvar_and_coef():
    """Contraception (urban | district): modes, conditional SDs and coef() (fixef + ranef, also in the
    districts without urban women, whose urban coefficient is still gamma_urban + b)."""
    ref, fit = predict_reference()["contraception_urban"], fitted("contraception_urban")
    modes = by_text_level(fit.random_effects("district"), "estimate").loc[ref["levels"]]
    sd = by_text_level(fit.random_effects("district"), "se").loc[ref["levels"]]
    coef = by_text_level(fit.group_effects("district"), "estimate").loc[ref["levels"]]
    np.testing.assert_allclose(modes["(Intercept)"], ref["ranef_intercept"], atol=1e-4)
    np.testing.assert_allclose(modes["urban[T.Y]"], ref["ranef_urban"], atol=1e-4)
    np.testing.assert_allclose(sd["(Intercept)"], ref["sd_intercept"], rtol=1e-3)
    np.testing.assert_allclose(sd["urban[T.Y]"], ref["sd_urban"], rtol=1e-3)
    np.testing.assert_allclose(coef["(Intercept)"], ref["coef_intercept"], atol=1e-4)
    np.testing.assert_allclose(coef["urban[T.Y]"], ref["coef_urban"], atol=1e-4)


@pytest.mark.parametrize("name, key", [("cbpp_laplace", "cbpp"), ("contraception_urban", "contraception_urban")])
def test_fitted_and_residuals_match_glmer(name, key):
    ref, fit = predict_reference()[key], fitted(name)
    np.testing.assert_allclose(fit.fitted(), ref["fitted"], atol=1e-5)
    np.testing.assert_allclose(fit.residuals(), ref["residuals_deviance"], atol=1e-4)
    np.testing.assert_allclose(fit.residuals("pearson"), ref["residuals_pearson"], atol=1e-4)
    np.testing.assert_allclose(fit.residuals("response"), fit._objective.y / fit._objective.size - fit.fitted())
    if "predict_link" in ref:
        np.testing.assert_allclose(fit.predict(), ref["predict_link"], atol=1e-5)


def test_predict_new_data_known_and_new_groups_matches_glmer():
    ref = predict_reference()
    fit = fitted("cbpp_laplace")
    new = pd.DataFrame(ref["cbpp"]["newdata"])
    np.testing.assert_allclose(fit.predict(new), ref["cbpp"]["new_link"], atol=1e-5)
    np.testing.assert_allclose(fit.predict(new, type="response"), ref["cbpp"]["new_response"], atol=1e-6)
    np.testing.assert_allclose(fit.predict(new, type="response", groups="population"), ref["cbpp"]["new_population"],
                               atol=1e-6)
    new = pd.DataFrame(ref["contraception_urban"]["newdata"])
    np.testing.assert_allclose(fitted("contraception_urban").predict(new, type="response"),
                               ref["contraception_urban"]["new_response"], atol=1e-6)


def test_predict_with_exposure_and_bad_requests():
    fit = fitted("poisson_exposure")
    data = pd.read_csv(REFERENCE / "poisson_exposure.csv")
    np.testing.assert_allclose(fit.predict(data.iloc[:5], type="response"), fit.fitted().iloc[:5], rtol=1e-12)
    doubled = data.iloc[:5].assign(years=2 * data["years"].iloc[:5])
    np.testing.assert_allclose(fit.predict(doubled, type="response"), 2 * fit.fitted().iloc[:5], rtol=1e-12)
    with pytest.raises(DataError, match="lacks the exposure column 'years'"):
        fit.predict(data.drop(columns="years"))
    with pytest.raises(DataError, match=r"exposure 'years' must be positive.*row 1"):
        fit.predict(data.iloc[:3].assign(years=[1.0, 0.0, 2.0]))
    with pytest.raises(OptionError, match="type='reponse'.*'response'"):
        fit.predict(type="reponse")
    with pytest.raises(OptionError, match="groups='new'"):
        fit.predict(groups="new")
    with pytest.raises(OptionError, match="type='raw'.*'deviance'"):
        fit.residuals("raw")
    with pytest.raises(OptionError, match="level=1.5"):
        fit.group_effects(level=1.5)


@pytest.mark.parametrize("name", ["cbpp_laplace", "contraception_intercept", "poisson_exposure"])
def test_compiled_conditional_modes_equal_the_numpy_path(name):
    """Designs from 50,000 rows with one scalar random effect find the modes by the compiled per-group Newton
    kernel; forced on a small design, it gives the numpy scoring path's modes and log-likelihood."""
    from bayeshlm.likelihood.glmm import GLMMObjective
    from bayeshlm.likelihood.glmm_kernel import family_code

    model = MODELS[name][0]()
    numpy_path = GLMMObjective(model.design, model.outcome)
    compiled = GLMMObjective(model.design, model.outcome)
    assert numpy_path._compiled is None
    compiled._compiled = family_code(model.family)
    x = numpy_path.start()
    x[numpy_path.p:] = 0.8
    assert compiled.loglik(x) == pytest.approx(numpy_path.loglik(x), rel=1e-12)
    np.testing.assert_allclose(compiled.u, numpy_path.u, atol=1e-9)


# --- population-average coefficients (R&B 10.14-10.19; gee_reference.json) -----------------------------------

@pytest.mark.parametrize("name, tolerance", [("cbpp_probit", 1e-8), ("poisson_exposure", 1e-8),
                                             ("cbpp_laplace", 0.04)])
def test_integrated_population_average_equals_the_closed_forms(name, tolerance):
    """Probit and log: integrating over u gives the exact closed forms; logit: within 0.04 of Zeger et al.'s
    approximation (cbpp, tau = 0.41: the approximation is 2-3% off the GLM fitted to the marginal means)."""
    fit = fitted(name)
    integrated = fit.population_average(method="integrate")
    closed = fit.population_average(method="closed_form")
    np.testing.assert_allclose(integrated["population_average"], closed["population_average"], atol=tolerance)
    assert integrated.attrs["method"].startswith("integrated")
    assert integrated.index.name == "term"


def test_integrated_population_average_with_random_slopes():
    """(urban | district): each row's marginal mean by a 2-D Gauss-Hermite over (u0, u1) ~ N(0, T) equals the 1-D
    one over z'u, and gamma* solves the GLM score equations for these means."""
    from bayeshlm.likelihood.gee import marginal_means, random_spread

    fit = fitted("contraception_urban")
    table = fit.population_average()
    assert "integrated" in table.attrs["method"]
    X, Z = fit.design.X, fit.design.factors[0].Z
    eta = X @ table["unit_specific"].to_numpy()
    T = fit.tau["district"].to_numpy()
    nodes, weights = np.polynomial.hermite_e.hermegauss(30)
    grid = np.array([[a, b] for a in nodes for b in nodes]) @ np.linalg.cholesky(T).T
    grid_weights = np.outer(weights, weights).ravel() / weights.sum() ** 2
    two_d = fit.family.mean(eta[:, None] + Z @ grid.T) @ grid_weights
    one_d = marginal_means(fit.family, eta, random_spread(fit.design, {"district": T}))
    np.testing.assert_allclose(one_d, two_d, atol=1e-12)
    mu = fit.family.mean(X @ table["population_average"].to_numpy())
    np.testing.assert_allclose(X.T @ (one_d - mu), 0.0, atol=1e-8)  # canonical link: X'(y - mu) = 0
    assert abs(table.loc["urban[T.Y]", "population_average"]) < abs(table.loc["urban[T.Y]", "unit_specific"])


@cache
def gee_reference() -> dict:
    return json.loads((REFERENCE / "gee_reference.json").read_text())


@pytest.mark.parametrize("name", ["contraception_intercept", "contraception_urban"])
def test_gee_population_average_matches_the_iteration_written_in_r(name):
    """HLM's population-average GEE (working covariance W^-1 + Z T Z') against make_gee_reference.R (dense
    per-district solves at glmer's T): estimates 1e-6, model-based and robust SEs 1e-5 relative."""
    ref, fit = gee_reference()[name], fitted(name)
    table = fit.population_average(method="gee")
    assert list(table.columns[:2]) == ["unit_specific", "population_average"]
    np.testing.assert_allclose(table["population_average"], ref["beta"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(table["model_se"], ref["se"], rtol=1e-5)
    np.testing.assert_allclose(table["se"], ref["robust_se"], rtol=1e-5)
    np.testing.assert_allclose(table["unit_specific"], ref["unit_specific"], rtol=1e-4, atol=1e-6)
    assert table.loc["(Intercept)", "population_average"] > table.loc["(Intercept)", "unit_specific"]


def test_gee_population_average_for_a_nested_chain_matches_r():
    """Classes within schools: the clusters are the schools, Sigma_school = W^-1 + tau_school 11' + tau_class
    [same class] (make_gee_reference.R, dense per school): estimates 1e-6, SEs 1e-5 relative."""
    ref = gee_reference()["nested_intercepts"]
    fit = bh.HLM("y ~ x + (1 | school) + (1 | school:class)", pd.read_csv(REFERENCE / "bernoulli_nested.csv"),
                 family="bernoulli").fit()
    table = fit.population_average(method="gee")
    np.testing.assert_allclose(table["unit_specific"], ref["unit_specific"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(table["population_average"], ref["beta"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(table["model_se"], ref["se"], rtol=1e-5)
    np.testing.assert_allclose(table["se"], ref["robust_se"], rtol=1e-5)


def test_gee_sandwich_with_no_random_variance_matches_geepack():
    """T = 0: the estimator is the GLM with a cluster sandwich, geepack's independence GEE (estimates and
    robust SEs to 1e-6)."""
    from bayeshlm.likelihood.gee import gee_coefficients
    from bayeshlm.likelihood.glmm import GLMMObjective

    model, fit = MODELS["contraception_intercept"][0](), fitted("contraception_intercept")
    result = gee_coefficients(GLMMObjective(model.design, model.outcome), np.zeros(1),
                              fit.fixed_effects["estimate"].to_numpy())
    ref = gee_reference()["independence"]
    assert result.converged
    np.testing.assert_allclose(result.estimate, ref["beta"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(np.diag(result.robust_cov)), ref["robust_se"], rtol=1e-6)


def test_population_average_refusals():
    with pytest.raises(OptionError, match="method='marginal'.*'integrate'"):
        fitted("cbpp_laplace").population_average(method="marginal")
    with pytest.raises(OptionError, match="independent clusters.*crossed.*method='integrate'"):
        fitted("bernoulli_crossed").population_average(method="gee")
    with pytest.raises(OptionError, match="closed form only with random intercepts.*method='integrate'"):
        fitted("contraception_urban").population_average(method="closed_form")
    nested = fitted("bernoulli_nested").population_average()  # integration takes any structure
    assert np.all(np.abs(nested["population_average"]) < np.abs(nested["unit_specific"]))


# --- adaptive quadrature for two nested factors (glmm_nested.py) --------------------------------------------

def _nested_subset():
    data = pd.read_csv(REFERENCE / "bernoulli_nested.csv")
    data = data[data["school"].isin(sorted(data["school"].unique())[:10])]  # 10 schools, 40 classes, 320 rows
    return bh.HLM("y ~ x + (1 | school) + (1 | school:class)", data, family="bernoulli")


def _grid_marginal_loglik(model, beta, lam_school, lam_class) -> float:
    """sum_k log int phi(v) prod_j int phi(u) prod_i p(y_i | x_i'beta + lam_school v + lam_class u) du dv on a
    241-point grid over [-8, 8] in each of u and v (trapezoid rule: the integrands are smooth and decay like
    a normal density, so the error is far below 1e-10)."""
    from scipy.special import logsumexp

    grid = np.linspace(-8.0, 8.0, 241)
    log_weights = np.log(np.full(grid.size, grid[1] - grid[0])) - 0.5 * grid ** 2 - 0.5 * np.log(2 * np.pi)
    log_weights[[0, -1]] -= np.log(2.0)
    design, y = model.design, model.outcome.y
    eta = design.X @ beta
    school, klass = design.factor("school"), design.factor("school:class")
    total = 0.0
    for k in range(school.n_groups):
        inner_sum = np.zeros(grid.size)
        for j in np.unique(klass.codes[school.codes == k]):
            rows = klass.codes == j
            e = eta[rows, None, None] + lam_school * grid[None, :, None] + lam_class * grid[None, None, :]
            log_p = np.where(y[rows, None, None] > 0.5, -np.logaddexp(0, -e), -np.logaddexp(0, e)).sum(axis=0)
            inner_sum += logsumexp(log_p + log_weights[None, :], axis=1)
        total += logsumexp(inner_sum + log_weights)
    return float(total)


def test_nested_quadrature_is_the_marginal_likelihood():
    """Two nested random intercepts: the nested adaptive quadrature equals the marginal log-likelihood by brute-force
    numerical integration (1e-9 relative at 15 nodes), and with one node it is the Laplace approximation."""
    from bayeshlm.likelihood.glmm import GLMMObjective
    from bayeshlm.likelihood.glmm_nested import NestedQuadrature

    model = _nested_subset()
    laplace = GLMMObjective(model.design, model.outcome)
    x = laplace.start()
    x[:laplace.p], x[laplace.p:] = [0.1, 0.6], [0.9, 0.7]
    names = list(laplace.params.names())
    assert names == ["school.(Intercept)", "school:class.(Intercept)"]
    exact = _grid_marginal_loglik(model, laplace.scaling.A @ x[:laplace.p], 0.9, 0.7)
    quadrature = GLMMObjective(model.design, model.outcome, nagq=15).loglik(x)
    assert quadrature == pytest.approx(exact, rel=1e-9)
    assert abs(laplace.loglik(x) - exact) > 0.1  # the Laplace approximation is visibly off here
    u, eta0, ZL, _ = laplace.pirls(*laplace.split(x))
    assert NestedQuadrature(laplace, 1).loglik(u, eta0, ZL) == pytest.approx(laplace.loglik(x), rel=1e-12)


def test_nested_quadrature_fit():
    """fit(nagq=9) on the nested chain converges; its log-likelihood at the optimum is the integrated one and above
    the Laplace fit's value there; three factors or random slopes are refused in words."""
    model = _nested_subset()
    fit = model.fit(nagq=9)
    assert fit.converged, fit.messages
    beta_s = np.linalg.solve(fit._objective.scaling.A, fit.fixed_effects["estimate"].to_numpy())
    lams = np.sqrt([fit.tau["school"].iloc[0, 0], fit.tau["school:class"].iloc[0, 0]])
    assert fit.loglik == pytest.approx(_grid_marginal_loglik(model, fit.fixed_effects["estimate"].to_numpy(),
                                                             *lams), rel=1e-8)
    assert np.all(np.isfinite(fit.fixed_effects["se"])) and len(beta_s) == 2
    with pytest.raises(OptionError, match="two nested factors with a random intercept each"):
        MODELS["bernoulli_nested"][0]().fit(nagq=9)  # (1 + x | school): a random slope


def test_compare_sets_laplace_quadrature_and_pql_side_by_side():
    """bh.compare reads the contract tables of HGLM fits (it raised AttributeError for PQL fits)."""
    laplace, quadrature = fitted("cbpp_laplace"), fitted("cbpp_agq25")
    pql = MODELS["cbpp_laplace"][0]().fit(method="pql")
    table = bh.compare(laplace, quadrature, pql, names=["Laplace", "AGQ", "PQL"])
    assert table.shape == (5, 14)
    assert table.loc["herd: var((Intercept))", ("PQL", "estimate")] == pytest.approx(pql.tau["herd"].iloc[0, 0])
    assert table.loc["herd: var((Intercept))", ("AGQ", "se")] > 0
    assert abs(table.loc["fixed: (Intercept)", ("AGQ", "diff/se")]) < 0.05
    assert list(pql.variance_components_at(0.9)["factor"]) == ["herd"]


def test_predict_refuses_new_data_it_cannot_code():
    fit = fitted("cbpp_laplace")
    with pytest.raises(DataError, match="period.*'5'"):
        fit.predict(pd.DataFrame({"herd": ["1"], "period": ["5"]}))
    with pytest.raises(DataError, match="lacks columns.*'period'"):
        fit.predict(pd.DataFrame({"herd": ["1"]}))
    with pytest.raises(DataError, match="missing values in 'herd'"):
        fit.predict(pd.DataFrame({"herd": [None], "period": ["1"]}))
