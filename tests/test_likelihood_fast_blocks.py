"""The compiled block operations of the REML / ML engine (likelihood/_pls_blocks.c, _crossed_blocks.c) against
the NumPy path they replace, and the crossed solver's fast paths against its general ones: elementwise one-coefficient
blocks, the dense Schur complement of small designs against the pair map, per-group residual sums.

Both paths compute the same formulas in another order, so they agree to rounding: the criterion to 1e-12
relative; the gradient to 1e-12 |criterion| (it is a difference of sums over all groups as large as the
criterion, and the optimiser's own tolerances are relative to |criterion| too); factors, fixed effects,
conditional modes and variances to 1e-12 absolute on the standardised scale, where they are O(1) (R_X, which
grows as sqrt(n), to 1e-12 of its largest entry); at the start,
random theta around it and the optimum. Without the
compiled extension (no C compiler at install) the compiled-path tests are skipped, the NumPy path is still
tested by the rest of the suite.
"""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.likelihood import algebra, crossed
from bayeshlm.likelihood import fit as likelihood_fit
from bayeshlm.likelihood.nested import NestedSolver

compiled = pytest.mark.skipif(algebra._pls_blocks is None, reason="the _pls_blocks extension is not built")
crossed_compiled = pytest.mark.skipif(crossed._crossed_blocks is None, reason="_crossed_blocks is not built")
TOL = 1e-12


def four_level_data(seed=3, n=900):
    """Pupils in classes in schools in districts, with a random slope at the school level."""
    rng = np.random.default_rng(seed)
    district = rng.integers(0, 6, n)
    school = district * 5 + rng.integers(0, 5, n)
    klass = school * 3 + rng.integers(0, 3, n)
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + rng.normal(size=6)[district] + rng.normal(size=30)[school]
         + 0.4 * rng.normal(size=30)[school] * x + rng.normal(size=90)[klass] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "district": district, "school": school, "class": klass})


def crossed_data(seed=2, n=600):
    """Three crossed factors g, h, k, and known variances v (for the weighted sums)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"g": rng.integers(0, 30, n), "h": rng.integers(0, 12, n), "k": rng.integers(0, 5, n),
                          "x": rng.normal(size=n), "v": rng.uniform(0.5, 2.0, n)})
    frame["y"] = (1 + frame.x + rng.normal(size=30)[frame.g] + rng.normal(size=12)[frame.h] * frame.x
                  + rng.normal(size=5)[frame.k] + rng.normal(size=n))
    return frame


NESTED = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("egsingle", "math ~ year + (year | childid) + (year | schoolid)"),
    (four_level_data(), "y ~ x + (1 | district) + (x | school) + (1 | class)"),
]
CROSSED = [
    ("scotssec", "attain ~ verbal + sex + (1 | primary) + (1 | second)", {}),
    (crossed_data(), "y ~ x + (x | g) + (x | h)", {}),
    (crossed_data(), "y ~ x + (1 | g) + (x | h) + (1 | k)", {}),
    (crossed_data(), "y ~ x + (x | g) + (1 | h)", {"known_variance": "v"}),
]
CROSSED_IDS = ["scotssec", "slopes-both", "three-factors", "known-variances"]


_DESIGNS: dict = {}  # (formula, options) -> standardised design, built once per test session


def standard_design(data, formula, options=None):
    key = (formula, tuple(sorted((options or {}).items())))
    if key not in _DESIGNS:
        frame = bh.datasets.load(data) if isinstance(data, str) else data
        _DESIGNS[key] = likelihood_fit.standardised(bh.HLM(formula, frame, **(options or {})).design)[0]
    return _DESIGNS[key]


def thetas(objective, seed=0, count=4):
    """The start, random points around it, and the optimum."""
    rng = np.random.default_rng(seed)
    start = objective.params.start
    out = [start] + [start + 0.4 * rng.normal(size=start.size) for _ in range(count)]
    return out + [likelihood_fit.minimize_criterion(objective, start, 1000).x]


def assert_same_value_and_gradient(objective, reference, theta):
    """The criterion to 1e-12 relative and its gradient to 1e-12 |criterion| (module docstring); returns the
    reference's criterion."""
    value, gradient = objective.value_and_gradient(theta)
    ref_value, ref_gradient = reference.value_and_gradient(theta)
    assert value == pytest.approx(ref_value, rel=TOL)
    np.testing.assert_allclose(gradient, ref_gradient, rtol=0, atol=TOL * abs(ref_value))
    return ref_value


def assert_same_factor(fac, ref):
    """Two factorisations of one design at one theta agree to rounding in every quantity the fit reads."""
    assert fac.logdet_z == pytest.approx(ref.logdet_z, rel=TOL, abs=TOL)
    assert fac.r2 == pytest.approx(ref.r2, rel=TOL)
    assert fac.logdet_x == pytest.approx(ref.logdet_x, rel=TOL, abs=TOL)
    np.testing.assert_allclose(fac.beta, ref.beta, rtol=0, atol=TOL)
    np.testing.assert_allclose(fac.RX, ref.RX, rtol=0, atol=TOL * np.abs(ref.RX).max())  # R_X grows as sqrt(n)
    np.testing.assert_allclose(fac.fixed_cov_relative(), ref.fixed_cov_relative(), rtol=0, atol=TOL)
    for a, b in zip(fac.modes(), ref.modes()):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
    for a, b in zip(fac.conditional_variances(), ref.conditional_variances()):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


@compiled
@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("data, formula", NESTED, ids=["sleepstudy", "egsingle", "four-level"])
def test_compiled_nested_blocks_equal_numpy(data, formula, method):
    design = standard_design(data, formula)
    objective = likelihood_fit.ProfiledDeviance(design, method)
    assert isinstance(objective.solver, NestedSolver) and objective.solver.compiled
    reference = likelihood_fit.ProfiledDeviance(design, method)
    reference.solver = NestedSolver(design, design.chain, compiled=False)
    for theta in thetas(objective):
        assert_same_value_and_gradient(objective, reference, theta)
        fac, ref = objective.factorize(theta), reference.factorize(theta)
        for a, b in zip(fac.L + fac.R, ref.L + ref.R):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
        assert_same_factor(fac, ref)


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("data, formula, options", CROSSED, ids=CROSSED_IDS)
def test_crossed_dense_schur_complement_equals_pair_map(data, formula, options, method, monkeypatch):
    """Small designs build C and A from per-group sums and use C densely (N = B'B, Y_g = C_g Phi C_g'); the
    sparse products and the pair map give the same numbers."""
    design = standard_design(data, formula, options)
    objective = likelihood_fit.ProfiledDeviance(design, method)
    assert objective.solver.C_dense is not None
    monkeypatch.setattr(crossed, "DENSE_SCHUR_WORK", 0)
    reference = likelihood_fit.ProfiledDeviance(design, method)
    assert reference.solver.C_dense is None
    for theta in thetas(objective):
        assert_same_value_and_gradient(objective, reference, theta)
        assert_same_factor(objective.factorize(theta), reference.factorize(theta))


COMPILED_CROSSED = CROSSED + [(crossed_data(), "y ~ x + (1 | g) + (1 | h) + (1 | k)", {}),
                               (crossed_data(), "y ~ x + (1 | g) + (1 | h)", {"known_variance": "v"}),
                               (crossed_data(), "y ~ x + (x || g) + (x | h)", {})]
COMPILED_CROSSED_IDS = CROSSED_IDS + ["intercepts-three-factors", "intercepts-known-variances", "uncorrelated-slopes"]


@crossed_compiled
@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("data, formula, options", COMPILED_CROSSED, ids=COMPILED_CROSSED_IDS)
def test_compiled_crossed_equals_numpy(data, formula, options, method):
    """Small crossed designs are evaluated by _crossed_blocks (q x q blocks, compiled apart for q = 1 as every block
    a number); the NumPy path gives the same criterion, gradient and factor."""
    design = standard_design(data, formula, options)
    objective = likelihood_fit.ProfiledDeviance(design, method)
    assert objective.solver.compiled
    reference = likelihood_fit.ProfiledDeviance(design, method)
    reference.solver = crossed.CrossedSolver(design, objective.solver_factors, compiled=False)
    for theta in thetas(objective):
        ref_value = assert_same_value_and_gradient(objective, reference, theta)
        fac, ref = objective.factorize(theta), reference.factorize(theta)
        for a, b in [(fac.L, ref.L), (fac.W, ref.W), (fac.T, ref.T), (fac.Lz, ref.Lz), (fac.Rz, ref.Rz)]:
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL * max(np.abs(b).max(), 1.0))
        assert_same_factor(fac, ref)
        for a, b in zip(*[f.gradient_parts(method == "reml") for f in (fac, ref)]):
            for x, y in zip(a, b):
                np.testing.assert_allclose(x, y, rtol=0, atol=TOL * abs(ref_value))


@crossed_compiled
def test_compiled_crossed_kernel_needs_the_dense_products(monkeypatch):
    """Large designs keep C sparse (the pair map): asking for the kernel there is refused."""
    design = standard_design(*CROSSED[0])
    objective = likelihood_fit.ProfiledDeviance(design, "reml")
    monkeypatch.setattr(crossed, "DENSE_SCHUR_WORK", 0)
    with pytest.raises(ValueError, match="needs the dense C"):
        crossed.CrossedSolver(design, objective.solver_factors, compiled=True)


@crossed_compiled
def test_compiled_crossed_kernel_refuses_what_numpy_refuses():
    """A Schur complement that is not positive definite (here from a NaN lambda) raises LinAlgError on both paths."""
    design = standard_design(*CROSSED[0])
    objective = likelihood_fit.ProfiledDeviance(design, "reml")
    lambdas = [np.array([[np.nan]]), np.array([[1.0]])]
    for compiled in (True, False):
        with pytest.raises(np.linalg.LinAlgError):
            crossed.CrossedSolver(design, objective.solver_factors, compiled=compiled).factorize(lambdas)


@pytest.mark.parametrize("data, formula, options", CROSSED, ids=CROSSED_IDS)
def test_crossed_gradient_from_sums_equals_finite_differences(data, formula, options):
    """G from the per-group sums (Z'W e = C x - D b, no pass over the rows) gives the criterion's slope:
    central differences with step 1e-5 agree to 1e-6 relative to the largest slope."""
    design = standard_design(data, formula, options)
    objective = likelihood_fit.ProfiledDeviance(design, "reml")
    theta = thetas(objective, count=1)[1]
    gradient = objective.value_and_gradient(theta)[1]
    h = 1e-5
    numeric = [(objective(theta + h * e) - objective(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
    np.testing.assert_allclose(gradient, numeric, rtol=0, atol=1e-6 * np.abs(numeric).max())


def test_crossed_one_coefficient_blocks_equal_cholesky():
    """L_g, L_g^{-1} and W_g of a one-coefficient first factor (elementwise) equal the batched Cholesky path."""
    design = standard_design(*CROSSED[0])
    solver = likelihood_fit.ProfiledDeviance(design, "reml").solver
    lam = np.array([[0.7]])
    L, Linv, W = solver._first_blocks(lam)
    ref_L = np.linalg.cholesky(lam.T @ solver.D @ lam + 1.0)
    ref_Linv = np.linalg.inv(ref_L)
    np.testing.assert_allclose(L, ref_L, rtol=1e-15, atol=0)
    np.testing.assert_allclose(Linv, ref_Linv, rtol=1e-15, atol=0)
    np.testing.assert_allclose(W, lam @ ref_Linv.transpose(0, 2, 1) @ ref_Linv @ lam.T, rtol=1e-14, atol=0)


def test_line_search_lost_in_rounding_is_cut_short_and_judged_by_newton():
    """Six trials in a row that change the criterion by less than rounding (1e-13 relative), and are predicted to,
    end the optimiser at the best point; that end is converged only once Newton polishing has brought the slope
    under POLISH_GRADIENT |criterion|. A trial that improves by more than rounding starts the count again."""
    from bayeshlm.likelihood import optimize

    x0, g = np.zeros(2), np.array([1e-4, -1e-4])
    watch = optimize._StallWatch(x0, 1e4, g)
    watch.see(x0 + 1e-12, 1e4 + 1e-10, g)  # within rounding (1e-9 here)
    watch.see(x0 - 1.0, 1e4 - 1.0, g)  # a real decrease: the count starts again
    assert watch.count == 0 and watch.value == 1e4 - 1.0
    for k in range(optimize.STALL_EVALUATIONS - 1):
        watch.see(watch.x + 1e-12 * (k + 1), watch.value + 1e-10, g)
    with pytest.raises(optimize._Stalled):
        watch.see(watch.x + 1e-12, watch.value - 1e-10, g)
    result = watch.result(evaluations=9)
    assert result.message == optimize.STALLED and result.status == 2 and not result.success
    assert not optimize.converged(result)  # slope 1e-4 > 1e-9 x 1e4: still to be polished
    result.jac = np.array([1e-6, 0.0])
    assert optimize.converged(result)
