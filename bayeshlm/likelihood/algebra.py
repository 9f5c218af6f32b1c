"""Pieces shared by the nested and crossed solvers: batched Cholesky and the fixed-effect part of the factor.

``_pls_blocks`` is the compiled kernel of the nested solver (``_pls_blocks.c``), None when it was not built.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

import numpy as np
import scipy.linalg

try:
    from . import _pls_blocks
except ImportError:  # built by ``pip install`` / ``setup.py build_ext``; without a compiler NumPy does the work
    _pls_blocks = None


def _public_cholesky_lower(a: np.ndarray, signature: str) -> np.ndarray:
    return np.linalg.cholesky(a)


def _public_solve_vector(a: np.ndarray, b: np.ndarray, signature: str) -> np.ndarray:
    return np.linalg.solve(a, b)


try:  # the gufuncs numpy.linalg.cholesky and solve call (see _set_fixed_part); private to NumPy, so if a release
    # moves them the public functions give the same numbers, with their argument checks
    from numpy.linalg._umath_linalg import cholesky_lo as _cholesky_lower
    from numpy.linalg._umath_linalg import solve1 as _solve_vector
except ImportError:  # pragma: no cover - exercised by tests/test_likelihood_fixed_part.py through monkeypatch
    _cholesky_lower, _solve_vector = _public_cholesky_lower, _public_solve_vector


@functools.lru_cache(maxsize=64)
def identity(p: int) -> np.ndarray:
    """The p x p identity, made once per size and read-only (a right-hand side LAPACK copies)."""
    out = np.eye(p)
    out.flags.writeable = False
    return out


def square_blocks(flat: np.ndarray, starts, sizes) -> list[np.ndarray]:
    """The q x q blocks of ``flat`` starting at ``starts``, one per factor of ``sizes`` q (views): the per-factor
    matrices of the compiled kernels' flat outputs."""
    return [flat[a:a + q * q].reshape(q, q) for a, q in zip(starts, sizes, strict=False)]


def cholesky_solve(D: np.ndarray, O: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched L L' = D (J, q, q) and R = L^{-1} O (J, q, t), looping over the q columns only.

    For the small q of random-coefficient blocks this is several times faster than the stacked LAPACK
    calls of numpy.linalg, whose per-matrix overhead dominates at q = 1..4.
    """
    J, q, _ = D.shape
    L = np.zeros_like(D)
    R = np.empty_like(O)
    L[:, 0, 0] = np.sqrt(D[:, 0, 0])  # the first column has no earlier columns to subtract
    L[:, 1:, 0] = D[:, 1:, 0] / L[:, :1, 0]
    R[:, 0] = O[:, 0] / L[:, 0, 0, None]
    for k in range(1, q):
        L[:, k, k] = np.sqrt(D[:, k, k] - np.einsum("jm,jm->j", L[:, k, :k], L[:, k, :k]))
        for i in range(k + 1, q):
            L[:, i, k] = (D[:, i, k] - np.einsum("jm,jm->j", L[:, i, :k], L[:, k, :k])) / L[:, k, k]
        R[:, k] = (O[:, k] - np.einsum("jm,jmt->jt", L[:, k, :k], R[:, :k])) / L[:, k, k, None]
    return L, R


class Factorization(ABC):
    """One evaluation of the penalised least-squares factor (Bates et al. 2015, section 3.5).

    Subclasses fill ``logdet_z`` = log|L_theta|^2 and call :meth:`_set_fixed_part` with the Schur complement
    of the random-effect block in [X y]' W [X y]; from it come R_X (lower, R_X R_X' = X'V^{-1}X sigma^2),
    the fixed effects and the penalised residual sum of squares r^2.
    """

    logdet_z: float

    def _set_fixed_part(self, top: np.ndarray, p: int) -> None:
        """From the (p+1) x (p+1) Schur complement S of [X y]: R_X = chol(S_XX), c = R_X^{-1} S_Xy,
        r^2 = S_yy - c'c, beta = R_X'^{-1} c (Bates et al. 2015, eq. 17-18).

        The numbers of ``numpy.linalg.cholesky`` and ``numpy.linalg.solve`` (LAPACK's LU solve, kept for its
        accuracy at condition numbers ~1e10, see benchmarks/results/likelihood.md) from the gufuncs those functions
        call, without their argument checks (~10 us of an evaluation's ~30 on small designs). As numpy.linalg
        does, floating-point errors are silenced and a factor that failed (left NaN) raises LinAlgError."""
        with np.errstate(all="ignore"):
            RX = _cholesky_lower(top[:p, :p], signature="d->d")
            if np.isnan(RX[0, 0]):
                raise np.linalg.LinAlgError("Matrix is not positive definite")
            self.cbeta = _solve_vector(RX, top[:p, p], signature="dd->d")
            self.beta = _solve_vector(RX.T, self.cbeta, signature="dd->d")
        self.RX = RX
        self.r2 = float(top[p, p] - self.cbeta @ self.cbeta)
        self.logdet_x = 2.0 * float(np.log(RX.diagonal()).sum())

    def fixed_cov_relative(self) -> np.ndarray:
        """(R_X R_X')^{-1}: the fixed-effect covariance divided by sigma^2."""
        inverse, info = scipy.linalg.lapack.dpotrs(self.RX, identity(len(self.RX)), lower=1)  # cho_solve's routine
        if info:
            raise np.linalg.LinAlgError(f"dpotrs failed (info {info})")
        return inverse

    @abstractmethod
    def modes(self) -> list[np.ndarray]:
        """Spherical conditional modes u, one (J, q) array per solver factor."""

    def gradient_sums(self, reml: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`gradient_parts` flat: each factor's Q (and G) raveled, concatenated in solver order."""
        Q, G = self.gradient_parts(reml)
        return np.concatenate([x.ravel() for x in Q]), np.concatenate([x.ravel() for x in G])

    @abstractmethod
    def gradient_parts(self, reml: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The pieces of the criterion's gradient, one q x q matrix pair (Q_l, G_l) per solver factor.

        With Lambda~ = blockdiag(Lambda, I_p), M = [Z X]'W[Z X] and Omega = Lambda~'M Lambda~ + blockdiag(I, 0)
        (REML; for ML its random-effect block Lambda'Z'WZ Lambda + I), an entry theta_k at (r, c) of factor
        l's Lambda_l has dOmega/dtheta_k = E'M Lambda~ + Lambda~'M E with E = I_J (x) e_r e_c', so

            d log|Omega| / d theta_k = 2 tr(Omega^{-1} Lambda~'M E) = 2 Q_l[c, r],
            Q_l = sum over the groups g of l of the diagonal block [Omega^{-1} Lambda~'M]_gg,

        which needs Omega^{-1} only where M is not zero (selected inversion). The penalised residual sum of
        squares r^2 = min_{u, beta} |W^{1/2}(y - X beta - Z Lambda u)|^2 + |u|^2 has, by the envelope theorem,

            d r^2 / d theta_k = -2 u'E'Z'W e = -2 G_l[r, c],   G_l = sum_g (Z_g'W e) u_g',

        e = y - X beta - Z Lambda u at the conditional modes (Bates et al. 2015, eq. 11-18).
        log|Omega| = log|L_theta|^2 + log|R_X|^2 (REML) or log|L_theta|^2 (ML).
        """

    @abstractmethod
    def conditional_variances(self) -> list[np.ndarray]:
        """Diagonal (J, q, q) blocks of (Lambda'Z'WZ Lambda + I)^{-1}, one array per solver factor."""
