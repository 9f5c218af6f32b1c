"""The ahead-of-time compiled two-level kernel (bayes/_two_level_kernel.c, issue 27) against the Numba kernel it
stands in for: the same log density and gradient at random points for every prior family and covariance form
the two-level route uses, the same refusals, and the fit's use of it."""

import ctypes
import shutil
import sysconfig

import numpy as np
import pytest
from test_bayes_kernel import _toy

import bayeshlm as bh
import bayeshlm.bayes.kernel as kernel_module
from bayeshlm.bayes import LKJ, Prior
from bayeshlm.bayes.build import build_model
from bayeshlm.bayes.kernel import c_callbacks, extension_callbacks, log_density_and_gradient, numba_callbacks
from bayeshlm.bayes.priors import resolve_priors

compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
pytestmark = pytest.mark.skipif(shutil.which(compiler) is None,
                                reason=f"no C compiler ({compiler}): the extension is not built, Numba is used")

CASES = {
    "intercept and slope, default priors": ("y ~ x + (x | g)", False, None),
    "three correlated coefficients, LKJ(2.5)": ("y ~ x + (x + x2 | g)", False, {"corr_g": LKJ(2.5)}),
    "independent coefficients": ("y ~ x + (x || g)", False, None),
    "random intercept only": ("y ~ x + (1 | g)", False, None),
    "flat priors (chapter 13)": ("y ~ x + (x | g)", False, "flat"),
    "known variances": ("y ~ x + (x | g)", True, None),
    "known variances, flat": ("y ~ x + (1 | g)", True, "flat"),
    "HalfNormal, HalfCauchy, Normal": ("y ~ x + (x | g)", False,
                                       {"sigma": Prior("HalfNormal", sigma=2.0), "tau_g": Prior("HalfCauchy", beta=1.5),
                                        "x": Prior("Normal", mu=0.2, sigma=3.0)}),
    "Exponential and HalfStudentT on the variance": (
        "y ~ x + (x | g)", False, {"sigma": Prior("Exponential", lam=0.5, on="variance"),
                                   "tau_g": Prior("HalfStudentT", nu=4.0, sigma=[1.0, 0.5], on="variance")}),
    "HalfFlat scales": ("y ~ x + (x | g)", False, {"sigma": Prior("HalfFlat"), "tau_g": Prior("HalfFlat")}),
}


def _both(design, prior_spec):
    kernel = build_model(design, resolve_priors(design, prior_spec))[1].kernel
    assert kernel is not None and kernel.variant == (1, False)
    return kernel, log_density_and_gradient(kernel, extension_callbacks()), log_density_and_gradient(
        kernel, numba_callbacks(*kernel.variant))


def test_the_extension_is_built_and_reads_this_layout():
    """pip install builds it (setup.py); None here means it is missing or packs another buffer layout."""
    assert extension_callbacks() is not None
    assert c_callbacks(1, False) is extension_callbacks()


@pytest.mark.parametrize("case", list(CASES))
def test_extension_equals_the_numba_kernel(case):
    formula, known_variance, prior_spec = CASES[case]
    kernel, compiled, jitted = _both(_toy(formula, known_variance, J=10).design, prior_spec)
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = kernel.unconstrained_start(int(rng.integers(100))) + rng.normal(0, 0.8, kernel.n_dim)
        value, grad = compiled(x)
        expected, expected_grad = jitted(x)
        assert np.isfinite(value)
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-10)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-10)


def test_extension_equals_the_numba_kernel_on_hsb():
    """The benchmark's model (160 schools, intercepts and slopes), far from and near the start."""
    hsb = bh.datasets.load("hsb")
    design = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb).design
    kernel, compiled, jitted = _both(design, None)
    rng = np.random.default_rng(4)
    for scale in (0.05, 0.5, 2.0):
        x = kernel.unconstrained_start(1) + rng.normal(0, scale, kernel.n_dim)
        value, grad = compiled(x)
        expected, expected_grad = jitted(x)
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-10)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-10)


def test_extension_refuses_as_the_numba_kernel_does():
    """Outside the support (σ = e^800): a log density that is not finite and nutpie's code 4; a wrong
    dimension: code -1 and nothing written."""
    kernel, compiled, jitted = _both(_toy().design, None)
    x = kernel.unconstrained_start(0)
    x[2] = 800.0  # log σ
    assert not np.isfinite(compiled(x)[0]) and compiled(x)[0] == jitted(x)[0]
    double_ptr = ctypes.POINTER(ctypes.c_double)
    buffer = kernel.buffer.ctypes.data_as(ctypes.c_void_p)
    for callbacks in (extension_callbacks(), numba_callbacks(1, False)):
        grad, value = np.full(kernel.n_dim + 1, 7.0), np.full(1, 7.0)
        args = (grad.ctypes.data_as(double_ptr), value.ctypes.data_as(double_ptr), buffer)
        assert callbacks[0].ctypes(kernel.n_dim, x.ctypes.data_as(double_ptr), *args) == 4
        x_long = np.zeros(kernel.n_dim + 1)
        assert callbacks[0].ctypes(kernel.n_dim + 1, x_long.ctypes.data_as(double_ptr), *args) == -1
        grad[:], value[:] = 7.0, 7.0
        callbacks[0].ctypes(kernel.n_dim + 1, x_long.ctypes.data_as(double_ptr), *args)
        assert np.all(grad == 7.0) and value[0] == 7.0


@pytest.mark.filterwarnings("ignore::bayeshlm.bayes.SamplingWarning")  # a short run: only equality matters here
def test_two_level_fit_samples_through_the_extension(monkeypatch):
    """A two-level fit gets the extension's callbacks, and its draws are those of the same seed on the Numba
    kernel (the same log density and gradient, in the same order of floating-point operations)."""
    model = _toy("y ~ x + (x | g)", J=10)
    c_callbacks.cache_clear()
    fit = model.fit("bayes", draws=150, tune=150, chains=2, random_seed=5)
    assert fit.sampler["log_density"] == "compiled kernel"
    assert c_callbacks(1, False) is extension_callbacks()
    c_callbacks.cache_clear()
    monkeypatch.setattr(kernel_module, "extension_callbacks", lambda: None)  # the Numba callbacks instead
    again = model.fit("bayes", draws=150, tune=150, chains=2, random_seed=5)
    assert c_callbacks(1, False) is numba_callbacks(1, False, "homogeneous")
    c_callbacks.cache_clear()
    np.testing.assert_array_equal(fit.posterior["posterior"]["beta"].values,
                                  again.posterior["posterior"]["beta"].values)


@pytest.mark.parametrize("components, q, width", [(1, 2, 2), (3, 3, 3), (1, 1, 1)])
def test_group_effect_draws_equal_the_numba_loop(components, q, width):
    """The extension's one-level draws (marginal._one_level_draws) are the Numba loop's
    (marginal_numba._draw_one_level), number for number, for one σ² and for a σ² per stratum (three components)."""
    from bayeshlm.bayes import marginal, marginal_numba

    rng = np.random.default_rng(6)
    J, P, S = 7, 4, 5
    ZtZ = rng.normal(size=(components, J, q, q))
    ZtZ = np.ascontiguousarray(ZtZ @ np.swapaxes(ZtZ, -1, -2) + q * np.eye(q))  # positive definite blocks
    ZtX, Zty = rng.normal(size=(components, J, q, P)), rng.normal(size=(components, J, q))
    s, beta = rng.uniform(0.5, 2.0, size=(S, components)), rng.normal(size=(S, P))
    L = np.tril(rng.normal(size=(S, q, q)), -1) + np.eye(q) * rng.uniform(0.5, 1.5, size=(S, q, 1))
    noise = rng.standard_normal((S, J, q))
    compiled, jitted = np.empty((S, J, q)), np.empty((S, J, q))
    assert marginal._one_level_draws() is not marginal_numba._draw_one_level  # the extension's
    marginal._one_level_draws()(ZtZ, ZtX, Zty, s, beta, L, noise, compiled)
    marginal_numba._draw_one_level(ZtZ, ZtX, Zty, s, beta, L, noise, jitted)
    assert np.all(np.isfinite(compiled))
    np.testing.assert_array_equal(compiled, jitted)
