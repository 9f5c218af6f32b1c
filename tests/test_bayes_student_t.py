"""Student-t group effects in the Bayesian engine (``random_effects="student_t"``, Seltzer's t level-2 model)."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeshlm as bh
from bayeshlm.bayes import Prior, pymc_model
from bayeshlm.bayes.plan import student_t_weights
from bayeshlm.bayes.priors import resolve_priors
from bayeshlm.errors import OptionError


def _data(J=12, n=5, q=1, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.standard_normal(J * n)
    u = rng.standard_t(3, (J, 2))
    y = 1.0 + 0.5 * x + u[g, 0] + (u[g, 1] * x if q == 2 else 0.0) + rng.standard_normal(J * n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{k:02d}" for k in g]})


def _logp_at(model, values: dict) -> float:
    """The model's log density (no Jacobian terms) at ``values`` given on the constrained scale."""
    point = {}
    for rv in model.free_RVs:
        value_var = model.rvs_to_values[rv]
        transform = model.rvs_to_transforms.get(rv)
        v = np.asarray(values[rv.name], dtype=float)
        point[value_var.name] = transform.forward(v).eval() if transform is not None else v
    import pytensor

    inputs = [model.rvs_to_values[rv] for rv in model.free_RVs]
    logp = pytensor.function(inputs, model.logp(jacobian=False), mode="FAST_COMPILE")  # no C compile: fast
    return float(logp(*(point[v.name] for v in inputs)))


@pytest.mark.parametrize("how", ["non-centred", "centred"])
def test_log_density_of_one_random_intercept_is_normal_plus_t_plus_priors(how):
    """The graph's log density at a point equals the hand sum: y ~ N(X beta + u, sigma), the effects t_nu with
    scale tau (non-centred: z ~ t_nu(0, 1), u = tau z; centred: b_j = gamma_0 + u_j ~ t_nu(gamma_0, tau)), and
    the priors, including nu ~ Gamma(2, rate 0.1)."""
    model = bh.HLM("y ~ x + (1 | g)", _data())
    design = model.design
    pm_model = pymc_model(design, random_effects="student_t", route="sampled", parameterization={"g": how})
    priors = resolve_priors(design, None, "student_t")
    rng = np.random.default_rng(1)
    beta, sigma, tau, nu = np.array([0.8, 0.4]), 1.3, 0.9, 4.5
    z = rng.standard_normal((12, 1))
    u = tau * z[:, 0]
    values = {"beta": beta, "sigma": sigma, "tau_g": np.array([tau]), "nu": nu}
    values |= {"z_g": z} if how == "non-centred" else {"coef_g": (beta[0] + u)[:, None]}
    eta = design.X @ beta + u[design.factor("g").codes]
    expected = stats.norm.logpdf(design.y, eta, sigma).sum()
    expected += stats.t.logpdf(z[:, 0], nu).sum() if how == "non-centred" else stats.t.logpdf(u, nu, 0, tau).sum()
    for k, name in enumerate(design.fixed_names):
        p = priors.fixed[name].params
        expected += stats.norm.logpdf(beta[k], p["mu"], p["sigma"])
    for value, prior in ((sigma, priors.sigma), (tau, priors.tau["g"])):
        expected += np.log(2) + stats.t.logpdf(value, prior.params["nu"].item(), 0, prior.params["sigma"].item())
    expected += stats.gamma.logpdf(nu, 2.0, scale=1 / 0.1)
    assert _logp_at(pm_model, values) == pytest.approx(expected, rel=1e-9, abs=1e-8)


def test_correlated_t_effects_add_the_multivariate_t_and_nu_prior_to_the_gaussian_density():
    """Two correlated coefficients: log p(t model) - log p(Gaussian model) at the same point equals
    sum_j [log t_nu(b_j | gamma, T) - log N(b_j | gamma, T)] + log Gamma(nu | 2, 0.1) (every other term is shared)."""
    design = bh.HLM("y ~ x + (x | g)", _data(q=2)).design
    t_model = pymc_model(design, random_effects="student_t", route="sampled", parameterization={"g": "centred"})
    normal = pymc_model(design, route="sampled", parameterization={"g": "centred"})
    rng = np.random.default_rng(2)
    beta, tau, nu, r = np.array([0.8, 0.4]), np.array([1.1, 0.6]), 3.0, 0.3
    corr_chol = np.linalg.cholesky(np.array([[1.0, r], [r, 1.0]]))
    L = tau[:, None] * corr_chol
    b = beta + rng.standard_normal((12, 2)) @ L.T
    values = {"beta": beta, "sigma": 1.2, "tau_g": tau, "corr_g": corr_chol, "coef_g": b, "nu": nu}
    T = L @ L.T
    expected = (stats.multivariate_t.logpdf(b, beta, T, df=nu).sum()
                - stats.multivariate_normal.logpdf(b, beta, T).sum() + stats.gamma.logpdf(nu, 2.0, scale=10.0))
    difference = _logp_at(t_model, values) - _logp_at(normal, {k: v for k, v in values.items() if k != "nu"})
    assert difference == pytest.approx(expected, rel=1e-9, abs=1e-8)


def test_fixed_nu_enters_as_a_constant_and_a_nu_prior_override_is_used():
    design = bh.HLM("y ~ x + (1 | g)", _data()).design
    fixed = pymc_model(design, random_effects="student_t", nu=4)
    assert "nu" not in [rv.name for rv in fixed.free_RVs] and float(fixed["nu"].eval()) == 4.0
    override = resolve_priors(design, {"nu": Prior("Exponential", lam=1 / 30)}, "student_t")
    assert override.as_dict()["nu"].startswith("Exponential(lam=0.03333)")
    assert resolve_priors(design, None, "student_t", 4).as_dict()["nu"].startswith("fixed at 4")
    assert resolve_priors(design, None, "student_t").as_dict()["nu"].startswith("Gamma(alpha=2, beta=0.1)")
    assert "nu" not in resolve_priors(design, None).as_dict()  # Gaussian effects: no nu


def test_mixing_weights_follow_their_gamma_conditional():
    """w_j | u_j, nu, T ~ Gamma((nu + q)/2, rate (nu + u_j' T^-1 u_j)/2): the mean of many draws for one
    posterior draw repeated matches (nu + q) / (nu + d_j) within 4 Monte Carlo SEs."""
    L = np.array([[2.0, 0.0], [0.6, 0.5]])
    u = np.array([[0.0, 0.0], [2.0, 1.0], [10.0, -3.0]])
    S, nu = 20000, 3.0
    w = student_t_weights(np.broadcast_to(u, (S, 3, 2)), np.broadcast_to(L, (S, 2, 2)), np.full(S, nu),
                          np.random.default_rng(0))
    d = np.einsum("ji,ij->j", u, np.linalg.solve(L @ L.T, u.T))
    mean, sd = (nu + 2) / (nu + d), np.sqrt((nu + 2) / 2) * 2 / (nu + d)
    assert np.all(np.abs(w.mean(0) - mean) < 4 * sd / np.sqrt(S))
    assert w.mean(0)[2] < 0.1 < 0.9 < w.mean(0)[0]  # the far-out group is down-weighted


BAD_OPTIONS = [
    ({"random_effects": "student_t", "nu": 0}, "positive finite number"),
    ({"random_effects": "student_t", "nu": -2.0}, "positive finite number"),
    ({"random_effects": "student_t", "nu": float("nan")}, "positive finite number"),
    ({"random_effects": "student_t", "nu": float("inf")}, "positive finite number"),
    ({"random_effects": "student_t", "nu": True}, "positive finite number"),
    ({"random_effects": "student_t", "nu": "4"}, "positive finite number"),
    ({"random_effects": "studentt"}, "Did you mean 'student_t'"),
    ({"random_effects": "t"}, "use 'normal'"),
    ({"random_effects": None}, "use 'normal'"),
    ({"nu": 4}, "add random_effects='student_t'"),
    ({"priors": {"nu": Prior("Gamma", alpha=2, beta=0.1)}}, "add random_effects='student_t'"),
    ({"random_effects": "student_t", "nu": 4, "priors": {"nu": Prior("Gamma", alpha=2, beta=0.1)}},
     "either fixed"),
    ({"random_effects": "student_t", "priors": {"nu": Prior("Normal", mu=5, sigma=1)}}, "must be positive"),
    ({"random_effects": "student_t", "priors": {"nu": 4}}, "give a bayeshlm.bayes.Prior"),
    ({"random_effects": "student_t", "priors": {"nu": Prior("Gamma", alpha=2, beta=0.1, on="variance")}},
     "on='variance'"),
    ({"random_effects": "student_t", "route": "marginal"}, "route='marginal' integrates Gaussian"),
]


@pytest.mark.parametrize("options, words", BAD_OPTIONS)
def test_bad_student_t_options_are_refused_in_words(options, words):
    model = bh.HLM("y ~ x + (1 | g)", _data())
    with pytest.raises(OptionError, match=words):
        model.fit(method="bayes", draws=10, tune=10, chains=1, progress=False, **options)


def test_student_t_effects_need_bayes_and_a_gaussian_outcome():
    data = _data()
    with pytest.raises(OptionError, match="method='bayes' only; method='reml'"):
        bh.HLM("y ~ x + (1 | g)", data).fit(random_effects="student_t")
    with pytest.raises(OptionError, match="method='ml'"):
        bh.HLM("y ~ x + (1 | g)", data).fit(method="ml", nu=4)
    data["b"] = (data["y"] > 1).astype(int)
    with pytest.raises(OptionError, match="family='bernoulli'"):
        bh.HLM("b ~ x + (1 | g)", data, family="bernoulli").fit(method="bayes", random_effects="student_t")


@pytest.fixture(scope="module")
def hsb_t_fit(hsb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bh.HLM("mathach ~ ses + (1 | school)", hsb)
        return model, model.fit(method="bayes", random_effects="student_t", draws=300, tune=300, chains=2,
                                random_seed=1, progress=False)


def test_hsb_with_t_school_effects_samples_cleanly_and_agrees_with_the_gaussian_fit(hsb, hsb_t_fit):
    """0 divergences at 2 x 300 draws (measured: max R-hat 1.040, min bulk ESS 604), fixed effects within
    0.5 posterior SD of the REML (Gaussian) fit's, nu in the posterior with per-school weights, and the route
    and the reason for it in fit.sampler."""
    model, fit = hsb_t_fit
    d = fit.diagnostics
    assert d["divergences"] == 0 and d["max_rhat"] < 1.06 and d["min_ess_bulk"] > 100
    gaussian = model.fit()
    table = fit.fixed_effects
    assert np.all(np.abs(table["estimate"] - gaussian.fixed_effects["estimate"]) < 0.5 * table["se"])
    assert fit.sampler["route"] == "sampled" and fit.sampler["log_density"] == "PyMC graph"
    assert "cannot be integrated out" in fit.sampler["note"] and fit.sampler["nu"] == "estimated"
    w = fit.draws("w_school")
    assert w.sizes["school"] == 160 and float(w.min()) > 0
    assert 2.0 < float(fit.draws("nu").median()) < 200.0
    assert "nu: Gamma(alpha=2, beta=0.1)" in fit.report_sections()[1][1]
    assert "note: Student-t" in fit.report_sections()[0][1]
    # the result tables keep the contract
    assert list(fit.variance_components["factor"]) == ["school", "Residual"]
    assert fit.random_effects("school").shape[0] == 160
    # a new group's effect is a t draw; Gaussian-only computations are refused
    assert fit.plausible_values().shape == (1, 4)
    with pytest.raises(OptionError, match="Student-t"):
        fit.log_likelihood(kind="marginal")
    new_school = hsb.head(3).assign(school="a new school")
    with pytest.raises(OptionError, match="Student-t"):
        fit.predict(new_school, kind="interval")


def _simulated(effects: str, J=200, n=20, seed=2):
    rng = np.random.default_rng([seed, 7])
    u = rng.standard_t(3, J) / np.sqrt(3.0) if effects == "t3" else rng.standard_normal(J)  # both variance 1
    g = np.repeat(np.arange(J), n)
    x = rng.standard_normal(J * n)
    return pd.DataFrame({"y": 1.0 + 0.5 * x + u[g] + rng.standard_normal(J * n), "x": x, "g": g.astype(str)})


def test_nu_is_recovered_lower_for_t3_school_effects_than_for_gaussian_ones():
    """200 groups of 20, effects of variance 1 either t(3) or Gaussian, same seed: the posterior median of nu is
    below 10 for the t(3) data and above 15 for the Gaussian data, and the t(3) posterior puts more than twice
    the mass below nu = 10 (criterion; larger run in the commit message)."""
    out = {}
    for effects in ("t3", "normal"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = bh.HLM("y ~ x + (1 | g)", _simulated(effects)).fit(
                method="bayes", random_effects="student_t", draws=300, tune=300, chains=2, random_seed=2,
                progress=False)
        assert fit.diagnostics["divergences"] == 0
        out[effects] = fit.draws("nu").values.ravel()
    assert np.median(out["t3"]) < 10 < 15 < np.median(out["normal"])
    assert np.mean(out["t3"] < 10) > 2 * np.mean(out["normal"] < 10)


def test_variance_ratio_statistics_are_refused_for_t_effects(hsb_t_fit):
    """T is the t effects' scale, not their covariance: ICC, reliability and variance explained would be wrong
    by the factor nu / (nu - 2), so they are refused in words; the report still prints."""
    model, fit = hsb_t_fit
    for call in (fit.icc, fit.reliability, fit.reliability_summary, lambda: fit.variance_explained(fit)):
        with pytest.raises(OptionError, match="Student-t.*scale, not their variance"):
            call()
    report = str(fit.report())
    assert "Fixed effects" in report and report.count("not available: ") >= 2  # reliability and ICC
