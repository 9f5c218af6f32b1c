"""Bayesian engine, without sampling: priors, model structure, the marginal likelihood and the exact
conditional draws of group effects, each checked against a direct dense computation."""

import numpy as np
import pandas as pd
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats

import bayeshlm as bh
from bayeshlm.bayes import LKJ, Prior, pymc_model
from bayeshlm.bayes.marginal import draw_group_effects, marginal_loglik
from bayeshlm.bayes.priors import resolve_priors


def _toy(known_variance=False, seed=0):
    rng = np.random.default_rng(seed)
    J, n = 5, 4
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = 1 + 0.5 * x + rng.normal(size=J)[g] + rng.normal(scale=0.7, size=J * n)
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "v": rng.uniform(0.2, 1.0, J * n)})
    if known_variance:
        return bh.HLM("y ~ x + (x | g)", df, known_variance="v")
    return bh.HLM("y ~ x + (x | g)", df)


def _dense_loglik(design, beta, sigma2, T):
    """log N(y | X beta, R + Z_j T Z_j') summed over groups, by dense matrices."""
    f = design.factors[0]
    total = 0.0
    for j in range(f.n_groups):
        rows = f.codes == j
        Z, X, y = f.Z[rows], design.X[rows], design.y[rows]
        R = np.diag(design.known_variance[rows]) if design.known_variance is not None else sigma2 * np.eye(len(y))
        total += stats.multivariate_normal(X @ beta, R + Z @ T @ Z.T).logpdf(y)
    return total


@pytest.mark.parametrize("known_variance", [False, True])
def test_marginal_loglik_matches_dense_multivariate_normal(known_variance):
    design = _toy(known_variance).design
    cp = design.crossproducts(design.factors[0])
    data = {"ZtZ": cp.ZtZ, "ZtX": cp.ZtX, "Zty": cp.Zty, "XtX": cp.XtX, "Xty": cp.Xty, "yty": cp.yty,
            "n_obs": float(design.n_obs)}
    if known_variance:
        data["logdetV"] = float(np.sum(np.log(design.known_variance)))
    beta, sigma2 = np.array([0.8, 0.3]), 0.6
    L = np.array([[1.1, 0.0], [-0.4, 0.5]])
    s = pt.constant(1.0) if known_variance else pt.constant(1 / sigma2)
    expr = marginal_loglik(pt.constant(beta), s, pt.constant(L), {k: pt.constant(v) for k, v in data.items()},
                           2, has_sigma=not known_variance)
    value = pytensor.function([], expr, mode="FAST_COMPILE")()
    assert value == pytest.approx(_dense_loglik(design, beta, sigma2, L @ L.T), rel=1e-10)


def test_conditional_group_effect_draws_match_dense_posterior():
    design = _toy().design
    f = design.factors[0]
    cp = design.crossproducts(f)
    stats_ = {"ZtZ": cp.ZtZ, "ZtX": cp.ZtX, "Zty": cp.Zty}
    beta, sigma2 = np.array([0.8, 0.3]), 0.6
    L = np.array([[1.1, 0.0], [-0.4, 0.5]])
    S = 20000
    u = draw_group_effects(stats_, np.tile(beta, (S, 1)), np.full(S, 1 / sigma2), np.tile(L, (S, 1, 1)),
                           np.random.default_rng(1))
    T = L @ L.T
    for j in range(f.n_groups):
        rows = f.codes == j
        Z, X, y = f.Z[rows], design.X[rows], design.y[rows]
        cov = np.linalg.inv(np.linalg.inv(T) + Z.T @ Z / sigma2)
        mean = cov @ Z.T @ (y - X @ beta) / sigma2
        np.testing.assert_allclose(u[:, j].mean(0), mean, atol=4 * np.sqrt(np.diag(cov) / S).max())
        np.testing.assert_allclose(np.cov(u[:, j].T), cov, atol=0.03 * np.abs(cov).max())


def test_default_priors_are_scaled_to_the_data_and_documented():
    design = _toy().design
    priors = resolve_priors(design, None)
    sd_y = np.std(design.y, ddof=1)
    assert priors.sigma.dist == "HalfStudentT" and float(priors.sigma.params["sigma"]) == pytest.approx(sd_y)
    assert float(priors.fixed["x"].params["sigma"]) == pytest.approx(2.5 * sd_y / np.std(design.X[:, 1]))
    assert str(priors.corr["g"]) == "LKJ(eta=2)"
    assert set(priors.as_dict()) == {"(Intercept)", "x", "sigma", "tau_g", "corr_g"}


def test_prior_overrides_by_name_and_flat_priors():
    design = _toy().design
    priors = resolve_priors(design, {"beta": Prior("Normal", mu=0, sigma=1), "x": Prior("StudentT", nu=3, mu=0,
                                     sigma=2), "sigma": Prior("Exponential", lam=1.0), "corr_g": 4})
    assert priors.fixed["(Intercept)"].dist == "Normal" and priors.fixed["x"].dist == "StudentT"
    assert priors.sigma.dist == "Exponential" and priors.corr["g"] == LKJ(4.0)
    flat = resolve_priors(design, "flat")
    assert {p.dist for p in flat.fixed.values()} == {"Flat"} and flat.tau["g"].on == "variance"


def test_unknown_prior_name_lists_the_valid_names():
    design = _toy().design
    with pytest.raises(bh.OptionError, match=r"tau_school.*Did you mean 'tau_g'.*Valid names: beta, \(Intercept\), "
                                             r"x, sigma, tau_g, corr_g"):
        resolve_priors(design, {"tau_school": Prior("HalfNormal", sigma=1)})
    with pytest.raises(bh.OptionError, match="not a PyMC distribution"):
        Prior("Normall", mu=0)
    with pytest.raises(bh.OptionError, match="priors='vague'"):
        resolve_priors(design, "vague")


def test_pymc_model_marginal_and_sampled_routes():
    model = _toy().pymc_model()
    assert isinstance(model, pm.Model)
    assert {v.name for v in model.free_RVs} == {"beta", "sigma", "tau_g", "corr_g"}
    assert model.named_vars_to_dims["beta"] == ("fixed",)
    sampled = pymc_model(_toy().design, route="sampled", parameterization={"g": "non-centred"})
    assert {v.name for v in sampled.free_RVs} == {"beta", "sigma", "tau_g", "corr_g", "z_g"}
    assert sampled.named_vars_to_dims["u_g"] == ("g", "g__coef")
    flat = pymc_model(_toy().design, priors="flat")
    assert {v.name for v in flat.free_RVs} == {"beta", "sigma2", "tau2_g", "corr_g"}


def test_bad_options_are_explained():
    model = _toy()
    with pytest.raises(bh.OptionError, match="route='marginal' integrates out one grouping factor"):
        df = pd.DataFrame({"y": np.arange(8.0), "a": list("aabbccdd"), "b": list("xyxyxyxy")})
        bh.HLM("y ~ 1 + (1 | a) + (1 | b)", df).pymc_model(route="marginal")
    with pytest.raises(bh.OptionError, match="use 'centred' or 'non-centred'"):
        model.pymc_model(route="sampled", parameterization={"g": "centered-ish"})
    with pytest.raises(bh.OptionError, match="No grouping factor 'school'"):
        model.pymc_model(route="sampled", parameterization={"school": "centred"})


@pytest.mark.parametrize("route", ["marginal", "sampled"])
def test_prior_predictive_simulates_outcomes_on_the_data_scale(route):
    from bayeshlm.bayes import prior_predictive

    model = _toy()
    tree = prior_predictive(model.design, model.pymc_model(route=route), draws=200, seed=3)
    y = tree["prior_predictive"]["y"]
    assert y.shape == (1, 200, model.design.n_obs)
    assert tree["prior"]["u_g"].dims == ("chain", "draw", "g", "g__coef")
    spread = float(np.median(np.abs(y.values - np.median(y.values))))
    assert 0.1 * np.std(model.design.y) < spread < 100 * np.std(model.design.y)
