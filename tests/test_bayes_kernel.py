"""The compiled kernel (bayes/kernel.py) against the PyMC graph it replaces for two- and three-level models and
crossed designs: the same log density at random points (PyMC's own logp, its normalising constants included), a
gradient that matches finite differences, the same reported values, and the models it leaves to the graph."""

import math

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.bayes import LKJ, Prior
from bayeshlm.bayes.build import build_model
from bayeshlm.bayes.kernel import constrained, log_density_and_gradient, output_layout
from bayeshlm.bayes.kernel_numba import _correlation_factor
from bayeshlm.bayes.priors import resolve_priors


def _toy(formula="y ~ x + (x | g)", known_variance=False, seed=0, J=6, n=5, **options):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x, x2 = rng.normal(size=J * n), rng.normal(size=J * n)
    school = g // 2  # three schools of two classes each
    y = 1 + 0.5 * x + rng.normal(size=J)[g] + rng.normal(size=J // 2)[school] + rng.normal(scale=0.7, size=J * n)
    h = np.tile(np.arange(n), J) % 3  # three groups crossed with g: every g has rows at each h
    y = y + 0.8 * rng.normal(size=n)[h]
    df = pd.DataFrame({"y": y, "x": x, "x2": x2, "g": g.astype(str), "school": school, "h": h,
                       "v": rng.uniform(0.2, 1.0, J * n), "t": np.tile(np.arange(n), J),
                       "sector": (g % 2).astype(float)})
    return bh.HLM(formula, df, known_variance="v" if known_variance else None, **options)


def _log_jacobian(kernel, x, priors):
    """log |d(constrained)/dx| of the kernel's transforms: log scales (twice over for a prior on the
    variance, which PyMC puts on σ² itself) and the tanh canonical partial correlations; sampled effects are
    coordinates of x as they are of PyMC's point."""
    factors = kernel.levels + kernel.sampled
    at = kernel.data["rows_XtX"].shape[0]  # the fixed and the sampled effects come first
    scale_priors = [priors.sigma] * kernel.names["level1"]["n_sigma"] + [
        priors.tau[factor["factor"]] for factor in factors for _ in factor["coef"]]
    total = 0.0
    for prior in scale_priors:
        total += x[at] if prior.on == "sd" else math.log(2.0) + 2.0 * x[at]
        at += 1
    for factor in factors:
        q = len(factor["coef"])
        if factor["correlated"]:
            _, z, rest = _correlation_factor(np.ascontiguousarray(x[at:at + q * (q - 1) // 2]), q)
            at += q * (q - 1) // 2
            for i in range(1, q):
                for k in range(i):
                    total += math.log(1.0 - z[i, k] ** 2) + 0.5 * math.log(rest[i, k])
    if kernel.names["level1"]["kind"] == "ar1":  # φ = tanh(x/2), PyMC's interval transform of Uniform(-1, 1)
        total += math.log(0.5 * (1.0 - math.tanh(0.5 * x[-1]) ** 2))
    return total


def _pymc_point(model, values):
    point = {}
    for rv in model.free_RVs:
        transform = model.rvs_to_transforms[rv]
        value = values[rv.name]
        point[model.rvs_to_values[rv].name] = (value if transform is None else
                                               transform.forward(value, *rv.owner.inputs).eval())
    return point


CASES = {
    "intercept and slope, default priors": ("y ~ x + (x | g)", False, None),
    "three correlated coefficients": ("y ~ x + (x + x2 | g)", False, None),
    "independent coefficients": ("y ~ x + (x || g)", False, None),
    "random intercept only": ("y ~ x + (1 | g)", False, None),
    "flat priors (chapter 13)": ("y ~ x + (x | g)", False, "flat"),
    "known variances": ("y ~ x + (x | g)", True, None),
    "other prior families": ("y ~ x + (x | g)", False,
                             {"sigma": Prior("HalfNormal", sigma=2.0), "tau_g": Prior("HalfCauchy", beta=1.5),
                              "corr_g": LKJ(3.0), "x": Prior("Normal", mu=0.2, sigma=3.0)}),
    "exponential on the variance": ("y ~ x + (x | g)", False,
                                    {"sigma": Prior("Exponential", lam=0.5, on="variance"),
                                     "tau_g": Prior("HalfStudentT", nu=4.0, sigma=[1.0, 0.5])}),
    "three-level, slopes at both levels": ("y ~ x + (x | g) + (x | school)", False, None),
    "three-level, intercepts above": ("y ~ x + (x + x2 | g) + (1 | school)", False, None),
    "three-level, flat priors": ("y ~ x + (1 | g) + (x | school)", False, "flat"),
    "three-level, known variances": ("y ~ x + (x || g) + (x | school)", True,
                                     {"tau_school": Prior("HalfNormal", sigma=2.0, on="variance")}),
    # crossed: g (6 groups) is integrated out, h (3 groups) sampled, in the form the last entry names
    "crossed intercepts, centred": ("y ~ x + (1 | g) + (1 | h)", False, None, "centred"),
    "crossed intercepts, non-centred": ("y ~ x + (1 | g) + (1 | h)", False, None, "non-centred"),
    "crossed slopes, correlated, centred": ("y ~ x + (x | g) + (x + x2 | h)", False, None, "centred"),
    "crossed slopes, correlated, non-centred": ("y ~ x + (x | g) + (x + x2 | h)", False,
                                                {"corr_h": LKJ(1.5)}, "non-centred"),
    "crossed, independent slopes, flat priors": ("y ~ x + (x | g) + (x || h)", False, "flat", "centred"),
    "crossed, known variances": ("y ~ x + (x | g) + (1 | h)", True,
                                 {"tau_h": Prior("HalfCauchy", beta=1.0, on="variance")}, "non-centred"),
    "crossed with a three-level chain": ("y ~ x + (x | g) + (1 | school) + (x | h)", False, None, "centred"),
}


# level-1 error structures (two-level models): options of HLM
LEVEL1_CASES = {
    "a variance per stratum": ("y ~ x + (x | g)", {"level1_variance": "h"}, None),
    "per stratum, prior on the variance": ("y ~ x + (1 | g)", {"level1_variance": "h"},
                                           {"sigma": Prior("HalfStudentT", nu=4.0, sigma=2.0, on="variance")}),
    "log-linear variance": ("y ~ x + (x | g)", {"level1_variance": "~ sector"}, "flat"),
    "AR(1) errors": ("y ~ x + (x | g)", {"correlation": "ar1", "time": "t"}, None),
    "AR(1) errors, flat priors": ("y ~ x + (1 | g)", {"correlation": "ar1", "time": "t"}, "flat"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_log_density_equals_the_pymc_graph(case):
    formula, known_variance, prior_spec, *form = CASES[case]
    _check_against_graph(_toy(formula, known_variance).design, prior_spec, form[0] if form else None)


@pytest.mark.parametrize("case", list(LEVEL1_CASES))
def test_kernel_with_structured_level1_errors_equals_the_pymc_graph(case):
    """A σ² per stratum (log-linear models included) and AR(1) errors run on the compiled kernel too: the
    statistics weighted by w(θ), the level-1 gradient by Fisher's identity per component."""
    formula, options, prior_spec = LEVEL1_CASES[case]
    design = _toy(formula, **options).design
    kernel = _check_against_graph(design, prior_spec, None)
    assert kernel.variant[2] == ("ar1" if "correlation" in options else "strata")


def _check_against_graph(design, prior_spec, form):
    priors = resolve_priors(design, prior_spec)
    model, info = build_model(design, priors, parameterization={"h": form} if form else None)
    kernel = info.kernel
    assert kernel is not None
    assert [f["factor"] for f in kernel.sampled] == (["h"] if form else [])
    graph_logp = model.compile_logp(jacobian=False, mode="FAST_COMPILE")
    evaluate = log_density_and_gradient(kernel)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = kernel.unconstrained_start(int(rng.integers(100))) + rng.normal(0, 0.4, kernel.n_dim)
        value, grad = evaluate(x)
        reported = constrained(kernel, x)
        # the kernel's density is on x; PyMC's without Jacobian is on the constrained values
        assert value - _log_jacobian(kernel, x, priors) == pytest.approx(
            float(graph_logp(_pymc_point(model, reported))), abs=1e-7)
        step = 1e-6
        numeric = np.array([(evaluate(x + step * e)[0] - evaluate(x - step * e)[0]) / (2 * step)
                            for e in np.eye(kernel.n_dim)])
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)
    return kernel


def test_reported_values_are_named_and_shaped_as_in_the_graph():
    design = _toy("y ~ x + (x + x2 | g)").design
    kernel = build_model(design, resolve_priors(design, "flat"))[1].kernel
    x = np.arange(kernel.n_dim) / 10.0
    values = constrained(kernel, x)
    names, shapes, dims, coords = output_layout(kernel)
    assert names == ["beta", "sigma", "sigma2", "tau_g", "tau2_g", "corr_g"]
    assert [values[k].shape for k in names] == shapes == [(2,), (), (), (3,), (3,), (3, 3)]
    assert values["sigma2"] == pytest.approx(values["sigma"] ** 2)
    L = values["corr_g"]
    np.testing.assert_allclose(np.sum(L**2, axis=1), 1.0)  # unit rows: a correlation matrix L L'
    assert np.all(np.triu(L, 1) == 0) and np.all(np.diag(L) > 0)
    assert dims["beta"] == ("fixed",) and coords["g__coef"] == ["(Intercept)", "x", "x2"]


def test_sampled_factors_are_reported_as_in_the_graph():
    design = _toy("y ~ x + (x | g) + (x + x2 | h)").design
    kernel = build_model(design, resolve_priors(design, None), parameterization={"h": "non-centred"})[1].kernel
    x = np.random.default_rng(2).normal(size=kernel.n_dim)
    values = constrained(kernel, x)
    names, shapes, dims, coords = output_layout(kernel)
    assert names == ["beta", "sigma", "tau_g", "corr_g", "tau_h", "corr_h", "u_h", "z_h"]
    assert values["u_h"].shape == values["z_h"].shape == (3, 3) and dims["u_h"] == ("h", "h__coef")
    assert coords["h"] == ["0", "1", "2"]
    L = values["tau_h"][:, None] * values["corr_h"]
    np.testing.assert_allclose(values["u_h"], values["z_h"] @ L.T)  # u_j = L z_j, as the graph's Deterministic


def test_point_outside_the_support_is_not_finite():
    design = _toy().design
    kernel = build_model(design, resolve_priors(design, None))[1].kernel
    x = kernel.unconstrained_start(0)
    x[len(design.fixed_names)] = 800.0  # σ = e^800 overflows
    assert not np.isfinite(log_density_and_gradient(kernel)(x)[0])


@pytest.mark.parametrize("formula, options", [
    ("y ~ x + (1 | g) + (1 | school) + (1 | district)", {}),  # four-level chain
    ("y ~ x + (x | g) + (1 | school)", {"level1_variance": "h"}),  # a σ² per category, three levels
])
def test_models_beyond_the_kernel_use_the_graph(formula, options):
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 4)
    df = pd.DataFrame({"y": rng.normal(size=32), "x": rng.normal(size=32), "g": g,
                       "h": np.tile(np.arange(4), 8), "school": g // 2,
                       "district": g // 4})
    design = bh.HLM(formula, df, **options).design
    assert build_model(design, resolve_priors(design, None))[1].kernel is None


def test_unsupported_prior_family_uses_the_graph():
    design = _toy().design
    priors = resolve_priors(design, {"sigma": Prior("InverseGamma", alpha=2.0, beta=1.0)})
    assert build_model(design, priors)[1].kernel is None


@pytest.mark.parametrize("form", ["centred", "non-centred"])
def test_named_draws_of_a_trace_equal_the_values_point_by_point(form):
    """nutpie stores the unconstrained draws x; naming them afterwards (sampling.named_draws, vectorised over
    chains and draws) gives at every draw the values of that draw alone, with the graph's dims and labels."""
    import xarray as xr

    from bayeshlm.bayes.sampling import UNCONSTRAINED, named_draws

    design = _toy("y ~ x + (x | g) + (x + x2 | h)").design
    kernel = build_model(design, resolve_priors(design, None), parameterization={"h": form})[1].kernel
    x = np.random.default_rng(3).normal(size=(2, 3, kernel.n_dim))
    trace = xr.Dataset({UNCONSTRAINED: (("chain", "draw", f"{UNCONSTRAINED}_dim"), x)},
                       coords={"chain": [0, 1], "draw": [0, 1, 2]})
    named = named_draws(kernel, trace)
    names, shapes, dims, coords = output_layout(kernel)
    assert list(named.data_vars) == names and list(named["corr_h"].dims[2:]) == list(dims["corr_h"])
    for chain in range(2):
        for draw in range(3):
            point = constrained(kernel, x[chain, draw])
            for name in names:
                np.testing.assert_allclose(named[name].values[chain, draw], point[name], rtol=1e-13, atol=1e-13)
            L = point["tau_h"][:, None] * point["corr_h"]
            gamma = np.r_[point["beta"], 0.0][[0, 1, -1]]  # (Intercept) and x centred on their fixed effects, x2 on 0
            sampled = point["z_h"] @ L.T if form == "non-centred" else point["coef_h"] - gamma
            np.testing.assert_allclose(point["u_h"], sampled, rtol=1e-12)
