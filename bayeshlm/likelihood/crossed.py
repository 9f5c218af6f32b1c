"""Penalised least squares for crossed (or otherwise non-chain) grouping factors.

As in MixedModels.jl, the factor with the most random effects comes first: its block of
Lambda'Z'WZ Lambda + I is block-diagonal (one q x q block per group), so it is factored by batched dense
Cholesky and eliminated exactly; its Schur complement onto the remaining factors' effects, X and y

    S = Lambda_r'A_rr Lambda_r + [I 0; 0 0] - R'R,   R = blockdiag(L_g^{-1} Lambda_1') Z_1'W[Z_r Lambda_r, X, y],

is formed with sparse products (its pattern is fixed, computed once) and factored densely. The dense part
has as many rows as the other factors have random effects (e.g. 1,128 for 1,100 x 28 crossed levels).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..design import Design, GroupingFactor
from ..errors import DataError
from .algebra import Factorization, group_sums

MAX_DENSE = 20_000  # random effects outside the first factor that the dense Schur complement may hold


def indicator_matrix(f: GroupingFactor) -> sp.csr_matrix:
    """The sparse n x (J q) random-effects model matrix of one factor (columns group-major)."""
    n, q = f.Z.shape
    rows = np.repeat(np.arange(n), q)
    cols = (f.codes[:, None] * q + np.arange(q)).ravel()
    return sp.csr_matrix((f.Z.ravel(), (rows, cols)), shape=(n, f.n_groups * q))


class CrossedSolver:
    """Factor the PLS system for factors in any arrangement; ``order`` puts the largest factor first."""

    def __init__(self, design: Design, order: list[GroupingFactor]):
        self.design = design
        self.factors = order
        first, rest = order[0], order[1:]
        self.p = design.n_fixed
        self.K = sum(f.n_groups * f.n_coef for f in rest)
        if self.K > MAX_DENSE:
            raise DataError(
                f"The grouping factors {', '.join(f.name for f in rest)} have {self.K} random effects together "
                f"besides {first.name!r}; this engine factors them densely and handles at most {MAX_DENSE}. "
                "Fit a subset of the factors, or aggregate the data.")
        w = design.weights
        XY = np.column_stack([design.X, design.y])
        right = sp.hstack([indicator_matrix(f) for f in rest] + [sp.csr_matrix(XY)], format="csr")
        weighted = right if w is None else sp.diags(w) @ right
        ZF = indicator_matrix(first)
        self.D = group_sums(first.codes, first.Z if w is None else first.Z * w[:, None], first.Z, first.n_groups)
        self.C = (ZF.T @ weighted).tocsr()  # (J_1 q_1) x (K + p + 1)
        self.A = (right.T @ weighted).toarray()  # [Z_r X y]' W [Z_r X y]
        self.offsets = np.cumsum([0] + [f.n_groups * f.n_coef for f in rest])

    def _lambda_rest(self, lambdas: list[np.ndarray]) -> sp.csr_matrix:
        blocks = [sp.kron(sp.identity(f.n_groups), lam) for f, lam in zip(self.factors[1:], lambdas[1:])]
        return sp.block_diag(blocks + [sp.identity(self.p + 1)], format="csr")

    def factorize(self, lambdas: list[np.ndarray]) -> CrossedFactorization:
        """Factor the system at relative covariance factors ``lambdas`` (in solver order)."""
        first = self.factors[0]
        J, q = first.n_groups, first.n_coef
        lam = lambdas[0]
        L = np.linalg.cholesky(np.matmul(lam.T @ self.D, lam) + np.eye(q))
        Linv = np.linalg.inv(L)
        B = sp.bsr_matrix((np.matmul(Linv, lam.T), np.arange(J), np.arange(J + 1)), shape=(J * q, J * q))
        lam_rest = self._lambda_rest(lambdas)
        R = (B @ self.C @ lam_rest).tocsr()
        S = lam_rest.T @ np.asarray(lam_rest.T @ self.A).T
        K = self.K
        S[np.arange(K), np.arange(K)] += 1.0
        S -= (R.T @ R).toarray()
        Lz = np.linalg.cholesky(S[:K, :K])
        Rz = scipy.linalg.solve_triangular(Lz, S[:K, K:], lower=True)
        logdet_z = 2.0 * (np.log(np.diagonal(L, axis1=1, axis2=2)).sum() + np.log(np.diag(Lz)).sum())
        return CrossedFactorization(self, L, Linv, R, Lz, Rz, logdet_z, S[K:, K:] - Rz.T @ Rz)


class CrossedFactorization(Factorization):
    """The factor of one evaluation of :class:`CrossedSolver`, with back-substitution."""

    def __init__(self, solver: CrossedSolver, L, Linv, R, Lz, Rz, logdet_z: float, top: np.ndarray):
        self.solver = solver
        self.L, self.Linv, self.R, self.Lz, self.Rz = L, Linv, R, Lz, Rz
        self.logdet_z = logdet_z
        self._set_fixed_part(top, solver.p)

    def _split_rest(self, values: np.ndarray) -> list[np.ndarray]:
        s = self.solver
        return [values[a:b].reshape(f.n_groups, f.n_coef, *values.shape[1:])
                for f, a, b in zip(s.factors[1:], s.offsets[:-1], s.offsets[1:])]

    def modes(self) -> list[np.ndarray]:
        s = self.solver
        u_rest = scipy.linalg.solve_triangular(self.Lz.T, self.Rz[:, -1] - self.Rz[:, :-1] @ self.beta, lower=False)
        x = np.concatenate([u_rest, self.beta])
        first = s.factors[0]
        rhs = (self.R[:, -1].toarray()[:, 0] - self.R[:, :-1] @ x).reshape(first.n_groups, first.n_coef)
        u_first = np.linalg.solve(self.L.transpose(0, 2, 1), rhs[:, :, None])[:, :, 0]
        return [u_first] + self._split_rest(u_rest)

    def conditional_variances(self) -> list[np.ndarray]:
        """Diagonal blocks of the inverse: Sigma_rest = (Lz Lz')^{-1}; for a group g of the first factor
        Sigma_gg = L_g'^{-1} (I + R_g Sigma_rest R_g') L_g^{-1} (selected inversion)."""
        s = self.solver
        K = s.K
        Lz_inv = scipy.linalg.solve_triangular(self.Lz, np.eye(K), lower=True)
        sigma_rest = Lz_inv.T @ Lz_inv
        rest = []
        for f, a in zip(s.factors[1:], s.offsets[:-1]):
            idx = a + np.arange(f.n_groups)[:, None] * f.n_coef + np.arange(f.n_coef)
            rest.append(sigma_rest[idx[:, :, None], idx[:, None, :]])
        first = s.factors[0]
        J, q = first.n_groups, first.n_coef
        Rz = self.R[:, :K].toarray().reshape(J, q, K)
        inner = np.eye(q) + np.einsum("jak,kl,jbl->jab", Rz, sigma_rest, Rz, optimize=True)
        own = np.matmul(np.matmul(self.Linv.transpose(0, 2, 1), inner), self.Linv)
        return [own] + rest
