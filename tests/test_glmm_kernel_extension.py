"""The ahead-of-time compiled HGLM kernel (bayes/_glmm_kernel.c, issues 24 and 27) against the Numba kernel it
stands in for: the same log density, gradient and reported values at random points for every family, both
parameterisations, correlated and crossed factors and every scale prior family; the same refusals; the fallback
to Numba when the extension reads another layout; and the same draws in a fit for the same seed. Likewise the
compiled per-group Newton modes of the likelihood engine (likelihood/_glmm_newton.c) against Numba's.

The Numba versions are compiled once per machine (about 20 s and 4 s with an empty Numba cache, loaded from it
later).
"""

import ctypes
import math
import shutil
import sysconfig
import warnings

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
import bayeshlm.bayes.glmm_kernel as glmm_kernel
import bayeshlm.likelihood.glmm_kernel as newton
from bayeshlm.bayes import LKJ, Prior, glmm_kernel_numba
from bayeshlm.bayes.glmm import build_kernel, resolve_glmm_priors
from bayeshlm.bayes.glmm_kernel import (
    callbacks,
    extension_callbacks,
    log_density_and_gradient,
    numba_callbacks,
    reported,
)

compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
pytestmark = pytest.mark.skipif(shutil.which(compiler) is None,
                                reason=f"no C compiler ({compiler}): the extension is not built, Numba is used")


def frame(seed=0, J=8, n=12):
    """Binary, binomial (of 1-6 trials) and count outcomes with a random intercept and slope per g, a crossed
    factor h, an exposure and a predictor w constant within g."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    h = np.tile(np.arange(4), J * n // 4)
    x, years = rng.normal(size=J * n), rng.uniform(0.5, 2.0, J * n)
    eta = 0.3 + 0.4 * x + rng.normal(scale=0.5, size=J)[g] + rng.normal(scale=0.3, size=J)[g] * x \
        + rng.normal(scale=0.3, size=4)[h]
    trials = rng.integers(1, 7, J * n)
    success = rng.binomial(trials, 1.0 / (1.0 + np.exp(-eta)))
    out = pd.DataFrame({"y": rng.poisson(years * np.exp(eta)), "binary": rng.binomial(1, 1.0 / (1.0 + np.exp(-eta))),
                        "success": success, "trials": trials, "x": x, "g": g.astype(str), "h": h.astype(str),
                        "years": years})
    out["w"] = rng.normal(size=J)[g]  # a predictor of g's groups (drawn last: the other columns as before)
    out["trials40"] = rng.integers(1, 41, J * n)  # up to 40 trials: above the kernels' _LOG_BLOCK, logged directly
    out["success40"] = rng.binomial(out["trials40"], 1.0 / (1.0 + np.exp(-eta)))
    return out


CASES = {
    # family, formula, model options, priors: every family, q = 2 correlated, two crossed factors, every scale
    # prior family (HalfStudentT is the default; HalfFlat with priors="flat", on the variance)
    "bernoulli, default priors": ("bernoulli", "binary ~ x + (1 | g)", {}, None),
    # non-centred, the fixed effects shifted by both factors' intercepts (for g's onto (Intercept) and w)
    "bernoulli, crossed, a predictor of g's groups": ("bernoulli", "binary ~ x + w + (1 | g) + (1 | h)", {}, None),
    "binomial with trials, correlated q = 2, HalfNormal, LKJ(1.5)": (
        "binomial", "cbind(success, trials - success) ~ x + (x | g)", {},
        {"tau_g": Prior("HalfNormal", sigma=[1.5, 0.5]), "corr_g": LKJ(1.5)}),
    "binomial with 1-40 trials (products of (1 + t)^n and direct logs)": (
        "binomial", "cbind(success40, trials40 - success40) ~ x + (1 | g)", {}, None),
    "poisson with exposure, crossed, HalfCauchy and Exponential": (
        "poisson", "y ~ x + (1 | g) + (1 | h)", {"exposure": "years"},
        {"tau_g": Prior("HalfCauchy", beta=1.5), "tau_h": Prior("Exponential", lam=2.0)}),
    "poisson, correlated q = 2 and crossed, HalfStudentT on the variance": (
        "poisson", "y ~ x + (x | g) + (1 | h)", {"exposure": "years"},
        {"tau_g": Prior("HalfStudentT", nu=4.0, sigma=[1.0, 0.5], on="variance"), "corr_g": LKJ(2.5)}),
    "negative binomial, Gamma scale, correlated q = 2": (
        "negative_binomial", "y ~ x + (x | g)", {}, {"tau_g": Prior("Gamma", alpha=2.0, beta=3.0),
                                                      "shape": Prior("Exponential", lam=0.2)}),
    "negative binomial, a predictor of g's groups, correlated q = 2": (
        "negative_binomial", "y ~ x + w + (x | g)", {}, {"shape": Prior("Exponential", lam=0.2)}),
    "negative binomial, flat (HalfFlat on the variances), crossed": (
        "negative_binomial", "y ~ x + (1 | g) + (1 | h)", {}, "flat"),
}


def kernels(case):
    """The case's kernel with every factor centred, with every factor non-centred (also with lambda = 2 and
    w = 0.4 for the shifted ones, and with the one-coefficient factors conditionally centred) and, with crossed
    factors, the last one centred and the others non-centred (then shifted, where they have group-level
    predictors: the centred one is sampled around the unshifted beta')."""
    family, formula, options, priors = CASES[case]
    model = bh.HLM(formula, frame(), family=family, **options)
    prior_set, shape = resolve_glmm_priors(model.design, model.outcome, priors)
    names = model.design.factor_names
    choices = {how: dict.fromkeys(names, how) for how in ("centred", "non-centred")}
    if len(names) > 1:
        choices["mixed"] = {**dict.fromkeys(names, "non-centred"), names[-1]: "centred"}
    out = {how: build_kernel(model.design, model.outcome, prior_set, shape, choice, None)
           for how, choice in choices.items()}
    # shifted factors' z scaled along their group-level columns (lambda = 2) and partially centred (w = 0.4)
    out["non-centred, latent scale 2, w 0.4"] = build_kernel(model.design, model.outcome, prior_set, shape,
                                                            choices["non-centred"], None, dict.fromkeys(names, 2.0),
                                                            dict.fromkeys(names, 0.4))
    # one-coefficient factors conditionally centred (random (c_j, h_j), h_j >= 0)
    rng = np.random.default_rng(6)
    tables = {f.name: np.column_stack([rng.normal(0.0, 2.0, f.n_groups), rng.exponential(3.0, f.n_groups)])
              for f in model.design.factors if f.n_coef == 1}
    if tables:
        out["non-centred, conditionally centred"] = build_kernel(model.design, model.outcome, prior_set, shape,
                                                                 choices["non-centred"], None, {}, {}, tables)
    return out


def test_the_extension_is_built_and_reads_this_layout():
    """pip install builds it (setup.py); None here means it is missing or packs another buffer layout."""
    assert extension_callbacks() is not None
    assert callbacks() is extension_callbacks()


@pytest.mark.parametrize("case", list(CASES))
def test_extension_equals_the_numba_kernel(case):
    """Log density, gradient and reported values at points near and far (coordinate SD 0.3 and 1.5) from the
    start: those of the Numba kernel to 1e-12 relative / 1e-10 absolute."""
    rng = np.random.default_rng(3)
    for how, kernel in kernels(case).items():
        compiled = log_density_and_gradient(kernel, extension_callbacks())
        jitted = log_density_and_gradient(kernel, numba_callbacks())
        for scale in (0.3, 1.5):
            x = kernel.unconstrained_start(int(rng.integers(100))) + rng.normal(0, scale, kernel.n_dim)
            value, grad = compiled(x)
            expected, expected_grad = jitted(x)
            assert np.isfinite(value) and np.all(np.isfinite(grad)), how
            assert value == pytest.approx(expected, rel=1e-12, abs=1e-10), how
            np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-10, err_msg=how)
            ours, theirs = reported(kernel, x, extension_callbacks()), reported(kernel, x, numba_callbacks())
            assert list(ours) == list(theirs) == [name for name, _, _ in kernel.layout]
            for name in ours:
                np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-12, atol=1e-10, err_msg=name)


def test_binomial_rows_logged_in_products_are_the_direct_sum():
    """The binomial rows' terms, whose logs both kernels take of running products of (1 + t_i)^n_i
    (glmm_kernel_numba._binomial_rows), against y_i eta_i - n_i log(1 + e^eta_i) row by row (np.logaddexp, summed
    exactly by math.fsum): within 1e-14 of the sum of |terms| -- the products round as the row-by-row sum does,
    about 1.1e-16 per trial -- for 1-40 trials (products up to 32, direct logs above, a half trial), eta up to
    +-800 (t underflows to 0); r_i = y_i - n_i / (1 + e^-eta_i); a NaN eta gives a NaN sum."""
    rng = np.random.default_rng(11)
    size = np.r_[rng.integers(1, 41, 3000), 2.5].astype(float)
    eta = np.r_[rng.normal(0.0, 3.0, 2990), [-800.0, 800.0, -40.0, 40.0, 0.0, -1e-300, 30.0, -30.0, 700.0, -700.0],
                0.7]
    y = rng.binomial(size.astype(int), 0.5).astype(float)
    r = np.empty_like(eta)
    lp = glmm_kernel_numba._binomial_rows(y, size, eta, r)
    terms = y * eta - size * np.logaddexp(0.0, eta)
    assert abs(lp - math.fsum(terms)) <= 1e-14 * math.fsum(np.abs(terms))
    np.testing.assert_allclose(r, y - size / (1.0 + np.exp(-eta)), rtol=1e-14, atol=1e-14)
    eta[100] = np.nan
    assert np.isnan(glmm_kernel_numba._binomial_rows(y, size, eta, r))


def test_reported_values_are_the_model_quantities():
    """The extension's reported values, checked against their definitions (not only against Numba): beta = A x
    shifted by the group intercepts (onto (Intercept) and the group-level w: beta_K -= P u_.0 with
    P = (G'G)^{-1} G', G the rows (1, w_j)), tau = exp(log tau), L_Omega with unit rows, u = diag(tau) L_Omega z
    for non-centred effects, k = exp(log k)."""
    kernel = kernels("negative binomial, a predictor of g's groups, correlated q = 2")["non-centred"]
    x = kernel.unconstrained_start(5)
    out = reported(kernel, x, extension_callbacks())
    p, J = len(out["beta"]), out["z_g"].shape[0]
    A = kernel.buffer[int(kernel.buffer[glmm_kernel._AT_A]):][:p * p].reshape(p, p)
    G = np.column_stack([np.ones(J), frame().groupby("g", sort=True)["w"].first().to_numpy()])
    beta = A @ x[:p]
    beta[[0, 2]] -= np.linalg.solve(G.T @ G, G.T @ out["u_g"][:, 0])  # (Intercept), x, w
    np.testing.assert_allclose(out["beta"], beta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["tau_g"], np.exp(x[p + 2 * J:p + 2 * J + 2]), rtol=1e-14)
    np.testing.assert_allclose(np.sum(out["corr_g"] ** 2, axis=1), 1.0, rtol=1e-14)
    L = np.diag(out["tau_g"]) @ out["corr_g"]
    np.testing.assert_allclose(out["u_g"], out["z_g"] @ L.T, rtol=1e-13, atol=1e-15)
    assert float(out["shape"]) == pytest.approx(np.exp(x[-1]), rel=1e-14)


def test_extension_refuses_as_the_numba_kernel_does():
    """Outside the support (log k = 800: k infinite): a log density that is not finite and nutpie's code 4; a
    wrong dimension: code -1 and nothing written, for the log density and for the reported values."""
    kernel = kernels("negative binomial, Gamma scale, correlated q = 2")["centred"]
    x = kernel.unconstrained_start(0)
    x[-1] = 800.0
    assert not np.isfinite(log_density_and_gradient(kernel, extension_callbacks())(x)[0])
    double_ptr = ctypes.POINTER(ctypes.c_double)
    buffer = kernel.buffer.ctypes.data_as(ctypes.c_void_p)
    for logp, expand in (extension_callbacks(), numba_callbacks()):
        grad, value = np.full(kernel.n_dim + 1, 7.0), np.full(1, 7.0)
        args = (grad.ctypes.data_as(double_ptr), value.ctypes.data_as(double_ptr), buffer)
        assert logp.ctypes(kernel.n_dim, x.ctypes.data_as(double_ptr), *args) == 4
        x_long = np.zeros(kernel.n_dim + 1)
        grad[:], value[:] = 7.0, 7.0
        assert logp.ctypes(kernel.n_dim + 1, x_long.ctypes.data_as(double_ptr), *args) == -1
        assert np.all(grad == 7.0) and value[0] == 7.0
        out = np.full(kernel.n_expanded, 7.0)
        assert expand.ctypes(kernel.n_dim, kernel.n_expanded + 1, x.ctypes.data_as(double_ptr),
                             out.ctypes.data_as(double_ptr), buffer) == -1
        assert np.all(out == 7.0)


@pytest.mark.parametrize("where", ["extension header", "python scale families"])
def test_a_layout_mismatch_falls_back_to_numba(monkeypatch, where):
    """An extension built from another version of the layout (a renamed header field; a scale family the
    extension does not know) is not used: the callbacks are Numba's."""
    from bayeshlm.bayes import _glmm_kernel

    header, factor, families, scales = _glmm_kernel.LAYOUT
    if where == "extension header":
        monkeypatch.setattr(_glmm_kernel, "LAYOUT", (("n_dims", *header[1:]), factor, families, scales))
    else:
        monkeypatch.setattr(glmm_kernel, "SCALE_FAMILIES", {**glmm_kernel.SCALE_FAMILIES, "InverseGamma": ("a", "b")})
    extension_callbacks.cache_clear()
    callbacks.cache_clear()
    try:
        assert extension_callbacks() is None
        assert callbacks() is numba_callbacks()
    finally:
        extension_callbacks.cache_clear()
        callbacks.cache_clear()
    monkeypatch.undo()
    assert callbacks() is extension_callbacks() is not None


@pytest.mark.filterwarnings("ignore::bayeshlm.bayes.SamplingWarning")  # a short run: only equality matters here
def test_fit_samples_through_the_extension_with_numbas_draws(monkeypatch):
    """cbpp, 2 chains x 200 draws: the fit uses the extension's callbacks, and its draws are those of the same
    seed on the Numba callbacks, number for number (same log density and gradient, same order of operations)."""
    model = bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", bh.datasets.load("cbpp"),
                   family="binomial")
    options = {"method": "bayes", "draws": 200, "tune": 200, "chains": 2, "random_seed": 3}
    callbacks.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(**options)
        assert callbacks() is extension_callbacks()
        monkeypatch.setattr(glmm_kernel, "extension_callbacks", lambda: None)  # Numba's callbacks instead
        callbacks.cache_clear()
        again = model.fit(**options)
        assert callbacks() is numba_callbacks()
    monkeypatch.undo()
    callbacks.cache_clear()
    assert fit.sampler["log_density"] == "compiled HGLM kernel (C extension)"
    assert again.sampler["log_density"] == "compiled HGLM kernel (Numba)"
    for name in ("beta", "tau_herd", "u_herd"):
        np.testing.assert_array_equal(fit.posterior["posterior"][name].values,
                                      again.posterior["posterior"][name].values)


def newton_data(code, seed=0, J=40, n=2000):
    """Rows of J groups (binomial of 1-5 trials or Poisson counts) with an offset eta0 and a scale zl per row."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, J, n)
    eta0, zl = rng.normal(-0.2, 0.8, n), rng.uniform(0.3, 1.5, n)
    mean = eta0 + zl * rng.normal(0.0, 1.0, J)[codes]
    if code == newton.LOGIT_BINOMIAL:
        size = rng.integers(1, 6, n).astype(float)
        y = rng.binomial(size.astype(int), 1.0 / (1.0 + np.exp(-mean))).astype(float)
    else:
        size = np.ones(n)
        y = rng.poisson(np.exp(mean)).astype(float)
    return y, size, eta0, zl, codes


@pytest.mark.parametrize("code", [newton.LOGIT_BINOMIAL, newton.LOG_POISSON])
@pytest.mark.parametrize("start, max_iterations", [(0.0, 100), (3.0, 100), (-3.0, 100), (-3.0, 2)])
def test_newton_modes_equal_numbas(code, start, max_iterations):
    """From 0, 3 and -3 (from -3 steps overshoot and are halved: 53 binomial and 105 Poisson halvings in all) and
    stopped after 2 iterations: the compiled modes are Numba's to 1e-12, and at convergence the per-group score
    g_j = sum_i zl_i s_i - u_j is 0."""
    y, size, eta0, zl, codes = newton_data(code)
    u0 = np.full(40, start)
    assert newton.extension_modes() is not None
    compiled = newton.scalar_modes(code, y, size, eta0, zl, codes, u0, 1e-10, max_iterations)
    jitted = newton.numba_scalar_modes(code, y, size, eta0, zl, codes, u0, 1e-10, max_iterations)
    assert np.all(u0 == start)  # the start is not written over
    np.testing.assert_allclose(compiled, jitted, rtol=1e-12, atol=1e-12)
    if max_iterations == 100:
        score = newton._group_pass(code, y, size, eta0, zl, codes, compiled)[1]
        np.testing.assert_allclose(score, 0.0, atol=1e-8)
    else:
        assert np.max(np.abs(compiled - newton.scalar_modes(code, y, size, eta0, zl, codes, u0, 1e-10, 100))) > 1e-6


def test_newton_modes_refuse_rows_of_unknown_groups_and_fall_back_on_another_layout(monkeypatch):
    y, size, eta0, zl, codes = newton_data(newton.LOGIT_BINOMIAL, n=50)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 40\)"):
        newton.scalar_modes(0, y, size, eta0, zl, codes + 1 + (40 - codes.max() - 1), np.zeros(40), 1e-10, 100)
    with pytest.raises(ValueError, match="one entry per row"):
        newton.scalar_modes(0, y, size[:-1], eta0, zl, codes, np.zeros(40), 1e-10, 100)
    monkeypatch.setattr(newton, "LAYOUT", newton.LAYOUT[:2] + (newton.LAYOUT[2][:-1],))
    newton.extension_modes.cache_clear()
    try:
        assert newton.extension_modes() is None  # then scalar_modes runs Numba's
        np.testing.assert_array_equal(newton.scalar_modes(0, y, size, eta0, zl, codes, np.zeros(40), 1e-10, 100),
                                      newton.numba_scalar_modes(0, y, size, eta0, zl, codes, np.zeros(40), 1e-10, 100))
    finally:
        monkeypatch.undo()
        newton.extension_modes.cache_clear()
    assert newton.extension_modes() is not None
