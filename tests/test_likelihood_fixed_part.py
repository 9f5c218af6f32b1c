"""The fixed-effect part of the PLS factor (Factorization._set_fixed_part) from numpy.linalg's gufuncs gives the
numbers of numpy.linalg.cholesky and numpy.linalg.solve to the last bit, also at condition numbers ~1e10 (the
uncentred meta-regression of test_fault_catalogue), and refuses a Schur complement that is not positive definite
with LinAlgError, as numpy.linalg.cholesky does."""

from types import SimpleNamespace

import numpy as np
import pytest

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
