"""The Bayesian engine samples on y* = (y - c) / s and reports in the user's units (bayeshlm/bayes/units.py).

Without sampling: the log posterior the sampler reads, for y changed to a y + b, at the image of a parameter
point equals the original model's log posterior there plus the Jacobian constant, to 1e-6 (before: off by
100 to 1,000 at y + 1e8, and by 1e9 at 1e-3 y + 1e8); each prior family's rewriting is exact; every posterior
variable maps back by its rule; priors without a rule leave the outcome unstandardised and say so; a design
built from Dask sums standardises to the in-memory numbers. With a tiny fit: the marginal log-likelihood per
group does not depend on a shift of y.
"""

import copy

import numpy as np
import pandas as pd
import pymc as pm
import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm.bayes import LKJ, Prior, pymc_model, sampled_model
from bayeshlm.bayes.priors import resolve_priors
from bayeshlm.bayes.units import LOCATION_FAMILIES, PARAMETER_ROLES, OutcomeUnits, rewritten_prior

FORMULA = "y ~ w + x + (x | g)"


def _data(seed=5, groups=30):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), rng.integers(3, 12, size=groups))
    w, x = rng.normal(size=groups), rng.normal(size=len(g))
    u0, u1 = rng.normal(scale=[0.7, 0.4], size=(groups, 2)).T
    y = 1 + 0.5 * w[g] + u0[g] + (0.3 + u1[g]) * x + rng.normal(size=len(g))
    return pd.DataFrame({"y": y, "w": w[g], "x": x, "g": [f"s{k}" for k in g]})


def _points():
    """Parameter values of the base model: beta, log sigma, log tau, the LKJ coordinate."""
    rng = np.random.default_rng(0)
    return [(rng.normal(size=3), rng.normal(), rng.normal(size=2), rng.normal(size=1)) for _ in range(3)]


def _log_posterior(model, a, b, units):
    """Log density (no transform Jacobian) of ``model``, whose outcome is y* = (a y + b - c) / s, at the image of
    each base point: beta -> a beta + b e_0, sigma and tau -> a (.), then into y*'s units (b - c first, exactly)."""
    logp = model.compile_logp(jacobian=False, mode="FAST_COMPILE")
    values = []
    for beta, log_sigma, log_tau, corr in _points():
        star = a * beta
        star[0] += b - units.centre
        step = np.log(a / units.scale)
        inputs = {v.name for v in model.value_vars}
        point = {"corr_g_cholesky_corr__": corr}
        if "beta" in inputs:
            point["beta"] = star / units.scale
        else:  # one variable per coefficient (priors of several families)
            point |= {f"beta[{name}]": v for name, v in zip(("(Intercept)", "w", "x"), star / units.scale)}
        for name, log_sd in (("sigma", log_sigma + step), ("tau_g", log_tau + step)):
            on_variance = name.replace("_", "2_", 1) if "_" in name else name + "2"  # sigma2, tau2_g
            if f"{on_variance}_log__" in inputs:
                point[f"{on_variance}_log__"] = 2.0 * log_sd
            else:
                point[f"{name}_log__"] = log_sd
        values.append(logp(point))
    return np.array(values)


def _user_priors(a, b):
    """Priors of several families, stated for the outcome a y + b (their images of the a = 1, b = 0 ones)."""
    return {"(Intercept)": Prior("StudentT", nu=4.0, mu=a * 1.0 + b, sigma=a * 5.0),
            "w": Prior("Normal", mu=a * 0.2, sigma=a * 3.0), "x": Prior("Laplace", mu=0.0, b=a * 2.0),
            "sigma": Prior("Exponential", lam=0.5 / a**2, on="variance"),
            "tau_g": Prior("HalfNormal", sigma=[a * 2.0, a * 1.0]), "corr_g": LKJ(3.0)}


@pytest.mark.parametrize("a, b, priors", [
    (1.0, 1e8, None), (1.0, 3e6, None), (1e-6, 0.0, None), (1e6, 0.0, None), (1e-3, 1e8, None),
    (1e-3, 1e8, "flat"), (1e-3, 1e8, "user"),
])
def test_sampled_log_posterior_is_equivariant_under_affine_changes_of_y(a, b, priors):
    """log p*(theta* | y*) = log p(theta | y) + K log(s / a), K = n + p + 1 + q the dimension of (y, beta,
    sigma, tau) (one more for a prior on sigma^2; with flat priors p + 1 + q less: a flat density does not
    change with the units). The base
    data are the stored ones, (fl(a y + b) - b) / a, so the digits a y + b lost are lost in both."""
    frame = _data()
    stored = a * frame["y"].to_numpy() + b
    base = bh.HLM(FORMULA, frame.assign(y=(stored - b) / a)).design
    other = bh.HLM(FORMULA, frame.assign(y=stored)).design
    base_priors, other_priors = (_user_priors(1.0, 0.0), _user_priors(a, b)) if priors == "user" else (priors,) * 2
    if priors is None:
        # the default intercept prior is centred on mean(y): near 1e8 a float holds that mean only to ~1e-8,
        # 1e-5 SDs of 1e-3 y, so the base model takes the image of that centre rather than its own mean(y)
        centre = resolve_priors(other, None).fixed["(Intercept)"].params["mu"]
        spread = resolve_priors(base, None).fixed["(Intercept)"].params["sigma"]
        base_priors = {"(Intercept)": Prior("Normal", mu=(centre - b) / a, sigma=spread)}
    model, info, units, notes = sampled_model(other, other_priors)
    assert notes == [] and units.intercept == 0 and units.scale == pytest.approx(abs(a) * np.std(base.y, ddof=1))
    assert info.priors.as_dict() == resolve_priors(other, other_priors).as_dict()  # the user's, as fit.priors
    expected = _log_posterior(pymc_model(base, base_priors), 1.0, 0.0, OutcomeUnits())
    K = base.n_obs + (0 if priors == "flat" else base.n_fixed + 1 + 2) + (priors == "user")  # sigma^2: twice
    np.testing.assert_allclose(_log_posterior(model, a, b, units), expected + K * np.log(units.scale / a),
                               rtol=0, atol=1e-6)


FAMILY_EXAMPLES = {  # parameters, a value in the support of theta
    "Flat": ({}, 0.3), "HalfFlat": ({}, 0.7),
    "Normal": ({"mu": 1.0, "sigma": 2.0}, 0.3), "StudentT": ({"nu": 3.0, "mu": 1.0, "lam": 0.5}, -0.4),
    "Cauchy": ({"alpha": 1.0, "beta": 2.0}, 0.3), "Laplace": ({"mu": 1.0, "b": 2.0}, 2.5),
    "Logistic": ({"mu": 1.0, "s": 2.0}, 0.3), "Gumbel": ({"mu": 1.0, "beta": 2.0}, 0.3),
    "Moyal": ({"mu": 1.0, "sigma": 2.0}, 0.3), "SkewNormal": ({"alpha": 2.0, "mu": 1.0, "tau": 0.5}, 0.3),
    "ExGaussian": ({"mu": 1.0, "sigma": 2.0, "nu": 0.5}, 0.3), "Uniform": ({"lower": -1.0, "upper": 2.0}, 0.3),
    "TruncatedNormal": ({"mu": 1.0, "sigma": 2.0, "lower": -1.0, "upper": 4.0}, 0.3),
    "HalfNormal": ({"tau": 0.5}, 0.7), "HalfCauchy": ({"beta": 2.0}, 0.7),
    "HalfStudentT": ({"nu": 3.0, "sigma": 2.0}, 0.7), "Exponential": ({"lam": 0.5}, 0.7),
    "Gamma": ({"alpha": 2.0, "beta": 3.0}, 0.7), "InverseGamma": ({"mu": 1.0, "sigma": 0.5}, 0.7),
    "LogNormal": ({"mu": 0.2, "sigma": 0.5}, 0.7), "Weibull": ({"alpha": 2.0, "beta": 3.0}, 0.7),
    "Pareto": ({"alpha": 2.0, "m": 0.5}, 0.7),
}


@pytest.mark.parametrize("family", list(PARAMETER_ROLES))
def test_each_prior_rewrite_is_the_exact_density_of_the_new_units(family):
    """p*(theta*) = k p(theta) at theta* = (theta - shift) / k (the shift only for location families), at two
    points, so a wrong location parameter cannot hide in a constant."""
    params, theta = FAMILY_EXAMPLES[family]
    shift = 0.8 if family in LOCATION_FAMILIES else 0.0
    k = 3e-4
    prior, star = Prior(family, **params), rewritten_prior(Prior(family, **params), shift, k)

    def logp(p, x):
        return float(pm.logp(getattr(pm, p.dist).dist(**p.params), x).eval())

    jacobian = 0.0 if family in ("Flat", "HalfFlat") else np.log(k)  # an improper flat density stays 1
    for x in (theta, theta + 0.1):
        assert logp(star, (x - shift) / k) == pytest.approx(logp(prior, x) + jacobian, abs=1e-9)


def test_every_posterior_variable_maps_back_by_its_rule():
    design = bh.HLM(FORMULA, _data()).design
    units = OutcomeUnits(centre=1e8, scale=2.0, intercept=0)
    draws = xr.Dataset({
        "beta": (("chain", "draw", "fixed"), [[[1.0, 2.0, 3.0]]]), "beta[(Intercept)]": (("chain", "draw"), [[1.0]]),
        "beta[x]": (("chain", "draw"), [[3.0]]), "sigma": (("chain", "draw"), [[1.5]]),
        "sigma2": (("chain", "draw"), [[2.25]]), "tau_g": (("chain", "draw", "c"), [[[1.0, 2.0]]]),
        "tau2_g": (("chain", "draw", "c"), [[[1.0, 4.0]]]), "T_g": (("chain", "draw", "c", "d"), [[np.eye(2)]]),
        "u_g": (("chain", "draw", "g", "c"), [[[[1.0, 1.0]]]]),
        "coef_g": (("chain", "draw", "g", "c"), [[[[1.0, 1.0]]]]),
        "sigma_strata": (("chain", "draw", "stratum"), [[[1.0, 2.0]]]),
        "alpha": (("chain", "draw", "variance_term"), [[[0.5, 0.5]]]), "phi": (("chain", "draw"), [[0.3]]),
        "corr_g": (("chain", "draw", "c", "d"), [[np.eye(2)]]), "z_g": (("chain", "draw", "g", "c"), [[[[0.5, 0.5]]]]),
    })
    out = units.draws(draws, design, {"g": [0, -1]})
    expected = {"beta": [1e8 + 2.0, 4.0, 6.0], "beta[(Intercept)]": 1e8 + 2.0, "beta[x]": 6.0, "sigma": 3.0,
                "sigma2": 9.0, "tau_g": [2.0, 4.0], "tau2_g": [4.0, 16.0], "T_g": 4 * np.eye(2), "u_g": [[2.0, 2.0]],
                "coef_g": [[1e8 + 2.0, 2.0]], "sigma_strata": [2.0, 4.0], "alpha": [0.5 + np.log(4.0), 0.5],
                "phi": 0.3, "corr_g": np.eye(2), "z_g": [[0.5, 0.5]]}
    assert set(expected) == set(out.data_vars)
    for name, value in expected.items():
        np.testing.assert_allclose(out[name].values[0, 0], value, rtol=1e-15, err_msg=name)
    with pytest.raises(NotImplementedError, match="'mystery'"):
        units.draws(draws.assign(mystery=draws["sigma"]), design, {"g": [0, -1]})


def test_priors_without_a_rewrite_rule_keep_the_outcome_in_its_units_and_say_so():
    design = bh.HLM(FORMULA, _data().assign(y=lambda d: 1e3 * d["y"] + 5e3)).design
    _, _, units, notes = sampled_model(design, {"sigma": Prior("ChiSquared", nu=3.0)})
    assert (units.scale, units.centre) == (1.0, pytest.approx(float(np.mean(design.y))))
    assert len(notes) == 1 and "sigma (ChiSquared)" in notes[0] and "not rescaled" in notes[0]
    _, _, units, notes = sampled_model(design, {"(Intercept)": Prior("HalfNormal", sigma=1e4)})
    assert units.centre == 0.0 and units.intercept is None and units.scale > 100
    assert len(notes) == 1 and "'(Intercept)'" in notes[0] and "not centred" in notes[0]
    _, _, units, notes = sampled_model(bh.HLM("y ~ 0 + w + x + (x | g)", _data()).design)
    assert (units.centre, units.intercept, notes) == (0.0, None, [])  # no intercept: scaled only, no note


@pytest.mark.parametrize("shift, noted", [(1e8, True), (3e5, True), (1e4, False), (0.0, False)])
def test_predictors_far_from_zero_are_named_in_a_note(shift, noted):
    """Predictors are not centred for sampling; with a flat prior the log posterior was off by 0.6 at w + 1e6 and
    1,400 at w + 1e8 (1e-5 at w + 1e4): beyond 1e5 SDs from zero the fit says so."""
    frame = _data()
    design = bh.HLM(FORMULA, frame.assign(w=frame["w"] + shift * frame["w"].std(ddof=0))).design
    notes = sampled_model(design)[3]
    assert len(notes) == noted and (not noted or "'w'" in notes[0] and "center=" in notes[0])


def test_a_design_of_dask_sums_standardises_to_the_in_memory_numbers():
    dd = pytest.importorskip("dask.dataframe")
    frame = _data().assign(y=lambda d: d["y"] + 1e8)
    memory = bh.HLM("y ~ w + x + (x | g)", frame).design
    sums = bh.HLM("y ~ w + x + (x | g)", dd.from_pandas(frame, npartitions=3)).design
    assert not sums.rows_available
    units, _ = OutcomeUnits.of(memory, resolve_priors(memory, None))
    units_sums, _ = OutcomeUnits.of(sums, resolve_priors(sums, None))
    assert units_sums.centre == pytest.approx(units.centre, rel=1e-15, abs=0)
    assert units_sums.scale == pytest.approx(units.scale, rel=1e-6)  # Dask's sd(y) near 1e8: 1e-9; any s is exact
    a = units.design(memory).chain_crossproducts(memory.chain)
    b = units.design(sums).chain_crossproducts(sums.chain)
    np.testing.assert_allclose(b.top, a.top, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.stats[0], a.stats[0], rtol=1e-9, atol=1e-9)


@pytest.mark.sampling
@pytest.mark.filterwarnings("ignore::bayeshlm.bayes.SamplingWarning")
@pytest.mark.parametrize("formula", [FORMULA, "y ~ w + x + (1 | g) + (1 | school)"])
def test_marginal_log_likelihood_is_unchanged_by_a_shift_of_y(formula):
    """log N(y_j | X_j gamma, V_j) per group from a fit to y + 1e8 equals the one of y (the stored values minus
    1e8) at the same draws with gamma_0 - 1e8: the group sums are taken of y - mean(y) (before: 51 apart per
    group, from sums of squares near 1e16)."""
    frame = _data().assign(school=lambda d: d["g"].str[1:].astype(int) // 3)
    stored = frame["y"].to_numpy() + 1e8
    fit = bh.HLM(formula, frame.assign(y=stored)).fit("bayes", draws=30, tune=50, chains=1, random_seed=4)
    same = copy.copy(fit)
    same.design = bh.HLM(formula, frame.assign(y=stored - 1e8)).design
    draws = fit.posterior["posterior"].to_dataset()
    same.posterior = xr.DataTree.from_dict({"posterior": draws.assign(beta=draws["beta"] - xr.DataArray(
        [1e8, 0.0, 0.0], dims="fixed"))})
    shifted, base = (f.log_likelihood(kind="marginal")["log_likelihood"]["y"].values for f in (fit, same))
    np.testing.assert_allclose(shifted, base, rtol=0, atol=1e-8)
