"""The fixed-effect part of the PLS factor (Factorization._set_fixed_part) from numpy.linalg's gufuncs gives the
numbers of numpy.linalg.cholesky and numpy.linalg.solve to the last bit, also at condition numbers ~1e10 (the
uncentred meta-regression of test_fault_catalogue), and refuses a Schur complement that is not positive definite
with LinAlgError, as numpy.linalg.cholesky does."""

from types import SimpleNamespace

import numpy as np
import pytest

from bayeshlm.design import identify
from bayeshlm.likelihood import algebra
from bayeshlm.likelihood.algebra import Factorization


def schur_complement(p, condition, seed):
    """A (p+1)-square symmetric positive definite [X y]'[X y]-like matrix whose X block has the given condition."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(p + 1, p + 1)))[0]
    values = np.concatenate([np.geomspace(1.0, 1.0 / condition, p), [0.5]])
    return (Q * values) @ Q.T + 1e-3 * np.eye(p + 1)


@pytest.mark.parametrize("p", [1, 2, 4, 7])
@pytest.mark.parametrize("condition", [10.0, 1e10])
def test_fixed_part_equals_numpy_linalg(p, condition):
    top = schur_complement(p, condition, seed=p)
    fac = SimpleNamespace()
    Factorization._set_fixed_part(fac, top, p)
    RX = np.linalg.cholesky(top[:p, :p])
    cbeta = np.linalg.solve(RX, top[:p, p])
    np.testing.assert_array_equal(fac.RX, RX)
    np.testing.assert_array_equal(fac.cbeta, cbeta)
    np.testing.assert_array_equal(fac.beta, np.linalg.solve(RX.T, cbeta))
    assert fac.r2 == float(top[p, p] - cbeta @ cbeta)
    assert fac.logdet_x == 2.0 * float(np.log(np.diag(RX)).sum())


def test_fixed_part_refuses_a_matrix_that_is_not_positive_definite():
    top = schur_complement(3, 10.0, seed=0)
    top[1, 1] = -1.0
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        Factorization._set_fixed_part(SimpleNamespace(), top, 3)


@pytest.mark.parametrize("p", [1, 4])
def test_public_numpy_functions_give_the_same_fixed_part(monkeypatch, p):
    """The fallback for a NumPy without the private gufuncs (numpy.linalg.cholesky and solve) gives the same
    numbers, and the same refusal."""
    top = schur_complement(p, 1e10, seed=p)
    fast = SimpleNamespace()
    Factorization._set_fixed_part(fast, top, p)
    monkeypatch.setattr(algebra, "_cholesky_lower", algebra._public_cholesky_lower)
    monkeypatch.setattr(algebra, "_solve_vector", algebra._public_solve_vector)
    public = SimpleNamespace()
    Factorization._set_fixed_part(public, top, p)
    for name in ("RX", "cbeta", "beta", "r2", "logdet_x"):
        np.testing.assert_array_equal(getattr(public, name), getattr(fast, name))
    top[0, 0] = -1.0
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        Factorization._set_fixed_part(SimpleNamespace(), top, p)


def test_r_factor_equals_numpy_qr_with_or_without_the_private_gufunc(monkeypatch):
    """identify.r_factor (blocks stacked under the running R) has the singular values of X, through the private
    gufunc and through numpy.linalg.qr alike (the fallback)."""
    X = np.random.default_rng(3).normal(size=(1000, 5))
    fast = identify.r_factor(X, chunk=300)
    monkeypatch.setattr(identify, "_upper_factor", identify._public_upper_factor)
    public = identify.r_factor(X, chunk=300)
    np.testing.assert_array_equal(public, fast)
    np.testing.assert_allclose(np.linalg.svd(fast, compute_uv=False), np.linalg.svd(X, compute_uv=False),
                               rtol=1e-12)
