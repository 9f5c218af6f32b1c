"""Bayesian engine, without sampling: priors, model structure, the marginal likelihood and the exact
conditional draws of group effects, each checked against a direct dense computation."""

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats
from scipy.linalg import block_diag

import bayeshlm as bh
from bayeshlm.bayes import LKJ, Prior, pymc_model
from bayeshlm.bayes.marginal import chain_statistics, draw_group_effects
from bayeshlm.bayes.marginal_graph import marginal_loglik
from bayeshlm.bayes.priors import resolve_priors
from bayeshlm.level1 import ar1_pairs


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


def _three_level(known_variance=False, seed=0):
    """Rows within 6 children within 3 schools, random intercept and slope at both levels."""
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(3), 8)
    child = np.repeat(np.arange(6), 4)
    x = rng.normal(size=24)
    y = 1 + 0.5 * x + rng.normal(size=3)[school] + rng.normal(size=6)[child] + rng.normal(scale=0.7, size=24)
    df = pd.DataFrame({"y": y, "x": x, "school": school.astype(str), "child": child.astype(str),
                       "v": rng.uniform(0.2, 1.0, 24)})
    return bh.HLM("y ~ x + (x | school) + (x | child)", df, known_variance="v" if known_variance else None)


def _full_Z(f):
    """Dense rows x (J q) random-effects matrix of one factor, columns (group, coefficient) row-major."""
    Z = np.zeros((len(f.codes), f.n_groups * f.n_coef))
    for k in range(f.n_coef):
        Z[np.arange(len(f.codes)), f.codes * f.n_coef + k] = f.Z[:, k]
    return Z


def _dense_cov(design, sigma2, Ts: dict):
    """Marginal covariance R + sum_f Z_f (I kron T_f) Z_f' of y, by dense matrices."""
    R = np.diag(design.known_variance) if design.known_variance is not None else sigma2 * np.eye(design.n_obs)
    for f in design.factors:
        if f.name in Ts:
            Zf = _full_Z(f)
            R = R + Zf @ np.kron(np.eye(f.n_groups), Ts[f.name]) @ Zf.T
    return R


def _graph_loglik(design, chain, sampled, beta, sigma2, Ls, strata=None, ar1=None):
    """sigma2: one level-1 variance, or one per stratum (``strata`` the rows' stratum codes); ``ar1``:
    (pairs, phi) for AR(1) errors."""
    stats_ = chain_statistics(design, chain, sampled, strata, None if ar1 is None else ar1[0])
    if design.known_variance is not None:
        s, logdet = np.ones(1), stats_.arrays["logdetV"]
    elif ar1 is not None:
        pairs, phi = ar1
        s = np.array([1.0, -phi, phi**2]) / ((1 - phi**2) * sigma2)
        logdet = design.n_obs * np.log(sigma2) + pairs.n_pairs * np.log(1 - phi**2)
    else:
        s = 1 / np.atleast_1d(sigma2)
        logdet = -stats_.arrays["rows_per_component"] @ np.log(s)
    expr = marginal_loglik(pt.constant(beta), pt.constant(s), pt.constant(logdet),
                           [pt.constant(Ls[f.name]) for f in chain],
                           {k: pt.constant(v) for k, v in stats_.arrays.items()}, stats_.sizes,
                           [pt.constant(p) for p in stats_.parents], stats_.n_groups)
    return pytensor.function([], expr, mode="FAST_COMPILE")()


L_A = np.array([[1.1, 0.0], [-0.4, 0.5]])
L_B = np.array([[0.7, 0.0], [0.2, 0.3]])


@pytest.mark.parametrize("known_variance", [False, True])
def test_marginal_loglik_matches_dense_multivariate_normal_two_level(known_variance):
    design = _toy(known_variance).design
    beta, sigma2 = np.array([0.8, 0.3]), 0.6
    value = _graph_loglik(design, list(design.factors), [], beta, sigma2, {"g": L_A})
    dense = stats.multivariate_normal(design.X @ beta, _dense_cov(design, sigma2, {"g": L_A @ L_A.T}))
    assert value == pytest.approx(dense.logpdf(design.y), rel=1e-10)


@pytest.mark.parametrize("known_variance", [False, True])
def test_marginal_loglik_integrates_a_nested_chain_exactly(known_variance):
    design = _three_level(known_variance).design
    child, school = design.factor("child"), design.factor("school")
    beta, sigma2 = np.array([0.8, 0.3]), 0.6
    value = _graph_loglik(design, [child, school], [], beta, sigma2, {"child": L_A, "school": L_B})
    cov = _dense_cov(design, sigma2, {"child": L_A @ L_A.T, "school": L_B @ L_B.T})
    assert value == pytest.approx(stats.multivariate_normal(design.X @ beta, cov).logpdf(design.y), rel=1e-10)


def test_marginal_loglik_of_a_crossed_design_given_the_sampled_effects():
    rng = np.random.default_rng(4)
    a, b = np.repeat(np.arange(6), 5), np.tile(np.arange(5), 6)
    df = pd.DataFrame({"y": rng.normal(size=30), "x": rng.normal(size=30), "a": a.astype(str), "b": b.astype(str)})
    design = bh.HLM("y ~ x + (x | a) + (1 | b)", df).design
    fa, fb = design.factor("a"), design.factor("b")
    beta, sigma2, u_b = np.array([0.8, 0.3]), 0.6, rng.normal(size=5)
    value = _graph_loglik(design, [fa], [fb], np.concatenate([beta, u_b]), sigma2, {"a": L_A})
    mean = design.X @ beta + u_b[fb.codes]
    cov = _dense_cov(design, sigma2, {"a": L_A @ L_A.T})
    assert value == pytest.approx(stats.multivariate_normal(mean, cov).logpdf(design.y), rel=1e-10)


def test_marginal_loglik_with_a_level1_variance_per_stratum():
    design = _three_level().design
    child, school = design.factor("child"), design.factor("school")
    strata = (np.arange(design.n_obs) % 3).astype(np.int64)  # three strata cutting across groups
    beta, sigma2 = np.array([0.8, 0.3]), np.array([0.6, 1.4, 0.3])
    value = _graph_loglik(design, [child, school], [], beta, sigma2, {"child": L_A, "school": L_B}, strata)
    cov = _dense_cov(design, 1.0, {"child": L_A @ L_A.T, "school": L_B @ L_B.T}) + np.diag(sigma2[strata] - 1.0)
    assert value == pytest.approx(stats.multivariate_normal(design.X @ beta, cov).logpdf(design.y), rel=1e-10)


def test_marginal_loglik_with_ar1_errors_within_the_innermost_units():
    design = _three_level().design
    t = np.tile(np.arange(4.0), 6)  # 4 consecutive occasions per child (rows are child-major)
    child, school = design.factor("child"), design.factor("school")
    order = np.random.default_rng(3).permutation(design.n_obs)  # row order must not matter
    pairs = ar1_pairs(child.codes[order], t[order], "child")
    assert pairs.n_pairs == 18 and pairs.interior.sum() == 12
    inverse = np.argsort(order)
    pairs = type(pairs)(order[pairs.first], order[pairs.second], pairs.in_pairs[inverse], pairs.interior[inverse])
    beta, sigma2, phi = np.array([0.8, 0.3]), 0.6, 0.55
    value = _graph_loglik(design, [child, school], [], beta, sigma2, {"child": L_A, "school": L_B},
                          ar1=(pairs, phi))
    same = child.codes[:, None] == child.codes[None, :]
    R = sigma2 * np.where(same, phi ** np.abs(t[:, None] - t[None, :]), 0.0)
    cov = _dense_cov(design, 0.0, {"child": L_A @ L_A.T, "school": L_B @ L_B.T}) + R
    assert value == pytest.approx(stats.multivariate_normal(design.X @ beta, cov).logpdf(design.y), rel=1e-10)
    with pytest.raises(bh.OptionError, match="needs consecutive occasions within each child"):
        ar1_pairs(child.codes, np.tile([0, 1, 3, 4], 6), "child")


def test_heterogeneous_level1_variance_models_in_the_bayesian_engine(hsb):
    by_sector = bh.HLM("mathach ~ cses + (1 | school)", hsb, level1_variance="~ sector")
    model = by_sector.pymc_model()
    assert {v.name for v in model.free_RVs} == {"beta", "sigma_strata", "tau_school"}
    assert list(model.coords["stratum"]) == ["sector=0", "sector=1"]
    assert list(model.coords["variance_term"]) == ["alpha0", "alpha sector"]
    point = {"sigma_strata_log__": np.log([2.0, 3.0]), "beta": np.zeros(2), "tau_school_log__": np.zeros(1)}
    alpha = pytensor.function(model.value_vars, model.replace_rvs_by_values([model["alpha"]])[0],
                              on_unused_input="ignore")(
        *[point[v.name] for v in model.value_vars])
    np.testing.assert_allclose(alpha, [np.log(4.0), np.log(9.0 / 4.0)])  # ln sigma^2 = alpha0 + alpha1 sector
    per_school = bh.HLM("mathach ~ cses + (1 | school)", hsb, level1_variance="sector").pymc_model(
        route="sampled", parameterization={"school": "non-centred"})
    assert "sigma_strata" in {v.name for v in per_school.free_RVs}
    with pytest.raises(bh.OptionError, match="only when it gives one variance per distinct predictor value"):
        bh.HLM("mathach ~ cses + (1 | school)", hsb, level1_variance="~ ses").pymc_model()
    ox = bh.load_model(Path(__file__).parent.parent / "models" / "oxboys_ar1.toml")
    assert "phi" in {v.name for v in ox.pymc_model().free_RVs}
    with pytest.raises(bh.OptionError, match="use route='marginal'"):
        ox.pymc_model(route="sampled")
    both = bh.HLM("height ~ age + (age | Subject)", bh.datasets.load("oxboys"), correlation="ar1", time="Occasion",
                  level1_variance="Occasion")
    with pytest.raises(bh.OptionError, match="one level-1 error structure at a time.*likelihood engine fits both"):
        both.pymc_model()


def _dense_posterior_of_effects(design, beta, sigma2, Ts):
    """Joint Gaussian posterior of all factors' effects given beta, T and sigma2 (dense)."""
    Z = np.hstack([_full_Z(f) for f in design.factors])
    precision = block_diag(*(np.kron(np.eye(f.n_groups), np.linalg.inv(Ts[f.name])) for f in design.factors))
    precision += Z.T @ Z / sigma2
    cov = np.linalg.inv(precision)
    return cov @ Z.T @ (design.y - design.X @ beta) / sigma2, cov


@pytest.mark.parametrize("which", ["two-level", "three-level"])
def test_conditional_group_effect_draws_match_dense_posterior(which):
    design = _toy().design if which == "two-level" else _three_level().design
    chain = design.chain
    Ls = {"g": L_A} if which == "two-level" else {"child": L_A, "school": L_B}
    beta, sigma2, S = np.array([0.8, 0.3]), 0.6, 20000
    draws = draw_group_effects(chain_statistics(design, chain, []), np.tile(beta, (S, 1)), np.full((S, 1), 1 / sigma2),
                               [np.tile(Ls[f.name], (S, 1, 1)) for f in chain], np.random.default_rng(1))
    mean, cov = _dense_posterior_of_effects(design, beta, sigma2, {k: L @ L.T for k, L in Ls.items()})
    by_factor = {f.name: u.reshape(S, -1) for f, u in zip(chain, draws)}
    joint = np.hstack([by_factor[f.name] for f in design.factors])
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(joint.mean(0), mean, atol=4.5 * sd.max() / np.sqrt(S))
    np.testing.assert_allclose(np.cov(joint.T), cov, atol=0.03 * np.abs(cov).max())


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
    with pytest.raises(bh.OptionError, match="effects of 'g' are integrated out on route='marginal'"):
        model.pymc_model(parameterization={"g": "centred"})
    with pytest.raises(bh.OptionError, match="use 'centred' or 'non-centred'"):
        model.pymc_model(route="sampled", parameterization={"g": "centered-ish"})
    with pytest.raises(bh.OptionError, match="No grouping factor 'school'"):
        model.pymc_model(route="sampled", parameterization={"school": "centred"})


def test_crossed_design_integrates_the_larger_factor_and_samples_the_other(monkeypatch):
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"y": rng.normal(size=40), "a": np.repeat(list("abcdefgh"), 5), "b": list("vwxyz") * 8})
    model = bh.HLM("y ~ 1 + (1 | a) + (1 | b)", df)
    built = model.pymc_model(parameterization={"b": "centred"})
    # centred on the intercept: b_j ~ N(beta_0, tau_b^2) is sampled, u_b = b - beta_0 is derived
    assert {v.name for v in built.free_RVs} == {"beta", "sigma", "tau_a", "tau_b", "coef_b"}
    assert "u_b" in {v.name for v in built.deterministics}
    monkeypatch.setattr("bayeshlm.bayes.plan.MAX_CROSS_CELLS", 10)
    with pytest.raises(bh.OptionError, match="cannot integrate this crossed design.*Use route='sampled'"):
        model.pymc_model(route="marginal")
    assert {"z_a", "z_b"} <= {v.name for v in model.pymc_model().free_RVs}  # both sampled (non-centred)


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


def test_diagnostics_leave_out_constant_entries():
    """The unit diagonal of a correlation factor is constant: its R-hat is undefined and ArviZ gives it an ESS
    equal to the number of draws, which must not stand in for the varying entries."""
    import xarray as xr

    from bayeshlm.bayes.diagnostics import diagnose

    rng = np.random.default_rng(0)
    anti = np.zeros((2, 300))  # negatively autocorrelated, as NUTS draws often are: ESS above the draws
    for t in range(1, 300):
        anti[:, t] = -0.5 * anti[:, t - 1] + rng.normal(size=2)
    corr = np.stack([np.ones((2, 300)), 0.3 + 0.01 * anti], axis=-1)
    tree = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"c": (("chain", "draw", "k"), corr)}),
        "sample_stats": xr.Dataset({"diverging": (("chain", "draw"), np.zeros((2, 300), bool))})})
    diagnostics, _ = diagnose(tree, ["c"], chains=2)
    expected = float(az.ess(tree, var_names=["c"], method="bulk")["c"].values[1])
    assert expected > 600 and diagnostics["min_ess_bulk"] == pytest.approx(expected)
    assert np.isfinite(diagnostics["max_rhat"])


def test_the_engine_asks_for_its_reference_fit_and_a_model_fits_it_once(monkeypatch):
    """The Bayesian engine runs no REML fit of its own (layers: bayes does not import likelihood): the choice of
    centred or non-centred sampled effects reads the reliabilities from the fit the caller's ``reference_fit``
    returns, asked for only when there is a choice to make; HLM fits it once and keeps it."""
    from bayeshlm.bayes.build import build_model
    from bayeshlm.results.likelihood_fit import fit_likelihood

    rng = np.random.default_rng(2)
    a, b = np.arange(800) % 4, np.arange(800) // 200  # crossed, 200 rows per group: reliabilities near 1
    df = pd.DataFrame({"y": 3.0 * rng.normal(size=4)[a] + 3.0 * rng.normal(size=4)[b] + rng.normal(size=800),
                       "a": a, "b": b.astype(str)})
    model = bh.HLM("y ~ 1 + (1 | a) + (1 | b)", df)
    design = model.design
    priors = resolve_priors(design, None)
    calls = []

    def reference():
        calls.append(1)
        return fit_likelihood(design, method="reml")

    _, info = build_model(design, priors, route="sampled", reference_fit=reference)
    assert len(calls) == 1 and min(info.reliability.values()) > 0.8
    assert set(info.parameterization.values()) == {"centred"}
    _, info = build_model(design, priors, route="sampled")  # no reference: the safe choice, no fit
    assert info.parameterization == {"a": "non-centred", "b": "non-centred"} and info.reliability == {"a": 0.0,
                                                                                                        "b": 0.0}
    _, info = build_model(design, priors, reference_fit=reference)  # one factor integrated, the other sampled
    _, info = build_model(design, priors, route="sampled", parameterization={"a": "centred", "b": "centred"},
                          reference_fit=reference)  # nothing left to choose
    assert len(calls) == 2
    fits = []
    monkeypatch.setattr("bayeshlm.results.likelihood_fit.fit_likelihood",
                        lambda *a, **k: fits.append(1) or fit_likelihood(*a, **k))
    model.pymc_model(route="sampled")
    model.pymc_model(route="sampled", priors="flat")
    assert len(fits) == 1


def test_posterior_correlations_are_labelled_matrices_beside_their_cholesky_factor():
    """``corr_<factor>`` is the correlation matrix L_Ω L_Ω' with the factor's coefficient names on both dims and
    an exact unit diagonal (a constant the diagnostics leave out, not rounding noise); the factor the sampler
    drew is ``corr_chol_<factor>``, and summaries and diagnostics run on both."""
    import xarray as xr

    from bayeshlm.bayes import labelled_correlations
    from bayeshlm.bayes.diagnostics import diagnose

    f = _toy().design.factor("g")
    rng = np.random.default_rng(4)
    y = rng.normal(0.4, 0.3, size=(2, 50))
    r = np.tanh(y)
    chol = np.zeros((2, 50, 2, 2))
    chol[..., 0, 0], chol[..., 1, 0], chol[..., 1, 1] = 1.0, r, np.sqrt(1.0 - r**2)
    post = xr.Dataset({"corr_g": (("chain", "draw", "corr_g_dim_0", "corr_g_dim_1"), chol)},
                      coords={"corr_g_dim_0": [0, 1], "corr_g_dim_1": [0, 1]})
    post = labelled_correlations(f, post)
    corr = post["corr_g"]
    assert corr.dims == ("chain", "draw", "g__coef", "g__coef2")
    assert list(corr["g__coef"].values) == list(corr["g__coef2"].values) == ["(Intercept)", "x"]
    np.testing.assert_allclose(corr.sel({"g__coef": "x", "g__coef2": "(Intercept)"}).values, r, rtol=1e-12)
    assert np.all(corr.values[..., [0, 1], [0, 1]] == 1.0)
    np.testing.assert_array_equal(post["corr_chol_g"].values, chol)
    assert "corr_g_dim_0" not in post.dims
    tree = xr.DataTree.from_dict({"posterior": post, "sample_stats": xr.Dataset(
        {"diverging": (("chain", "draw"), np.zeros((2, 50), bool))})})
    summary = az.summary(tree, var_names=["corr_g"], ci_kind="eti", ci_prob=0.95, round_to="none")
    assert summary.index[1] == "corr_g[(Intercept), x]" and np.isnan(summary["r_hat"].iloc[0])
    diagnostics, _ = diagnose(tree, ["corr_g"], chains=2)
    assert np.isfinite(diagnostics["max_rhat"]) and diagnostics["min_ess_bulk"] < 150


def test_the_prior_families_checked_without_pymc_have_pymcs_parameter_names():
    from bayeshlm.bayes.priors import COMMON_FAMILIES, pymc_parameter_names

    for dist, names in COMMON_FAMILIES.items():
        assert list(names) == pymc_parameter_names(dist), dist
    with pytest.raises(bh.OptionError, match="Normal has no parameter 'sd'. Did you mean 'sigma'"):
        Prior("Normal", mu=0, sd=1)
