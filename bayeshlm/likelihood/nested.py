"""Penalised least squares for one grouping factor or a chain of nested factors, by batched dense algebra.

The system of Bates et al. (2015, eq. 13-18) in unknowns (u, beta), with weights W (1/V for known variances),

    [ Lambda'Z'WZ Lambda + I   Lambda'Z'WX ] [u]   [Lambda'Z'Wy]
    [ X'WZ Lambda              X'WX        ] [b] = [X'Wy       ],

is Cholesky-factored with the unknowns ordered innermost level first. For a nested chain (pupils in classes
in schools) the factor has no fill outside a group's ancestors: the block of group g is factored on its own,
L_g L_g' = D_g, its off-diagonal row R_g = L_g^{-1} O_g reaches only its ancestors, X and y, and the Schur
complement R_g'R_g is added to its parent's block. Everything is computed from per-group sufficient
statistics (one pass over the rows), so an evaluation costs O(sum_l J_l q_l^3) whatever the number of rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..design import Design, GroupingFactor
from .algebra import Factorization, cholesky_solve, group_sums


class NestedSolver:
    """Factor the PLS system for ``chain`` (grouping factors from innermost to outermost, each nested in the next)."""

    def __init__(self, design: Design, chain: list[GroupingFactor]):
        self.design = design
        self.chain = chain
        self.q = [f.n_coef for f in chain]
        self.J = [f.n_groups for f in chain]
        self.p = design.n_fixed
        w = design.weights
        XY = np.column_stack([design.X, design.y])
        WXY = XY if w is None else XY * w[:, None]
        # level l: sums over the rows of each group of Z_l' W [Z_l, Z_l+1, ..., Z_top, X, y]
        self.stats = []
        for level, f in enumerate(chain):
            right = np.column_stack([g.Z for g in chain[level:]] + [XY])
            left = f.Z if w is None else f.Z * w[:, None]
            self.stats.append(group_sums(f.codes, left, right, f.n_groups))
        self.top = XY.T @ WXY  # [X y]' W [X y]
        # parent of each group and the summing matrix (parent groups x groups)
        self.parent = []
        self.summing = []
        for inner, outer in zip(chain[:-1], chain[1:]):
            parent = np.zeros(inner.n_groups, dtype=np.int64)
            parent[inner.codes] = outer.codes
            self.parent.append(parent)
            self.summing.append(sp.csr_matrix((np.ones(inner.n_groups), (parent, np.arange(inner.n_groups))),
                                              shape=(outer.n_groups, inner.n_groups)))

    def _right_factor(self, lambdas: list[np.ndarray], level: int) -> np.ndarray:
        """blockdiag(Lambda_level, ..., Lambda_top, I_{p+1}): scales the columns [Z_level ... Z_top X y]."""
        width = sum(self.q[level:]) + self.p + 1
        out = np.eye(width)
        at = 0
        for lam in lambdas[level:]:
            q = len(lam)
            out[at:at + q, at:at + q] = lam
            at += q
        return out

    def factorize(self, lambdas: list[np.ndarray]) -> NestedFactorization:
        """Factor the system at relative covariance factors ``lambdas`` (one per chain level)."""
        L_levels, R_levels = [], []
        logdet_z = 0.0
        update = None  # Schur-complement contributions from the level below, per group of this level
        for level, S in enumerate(self.stats):
            J, q, width = S.shape
            # M_j = Lambda' S_j blockdiag(Lambda, ancestors' Lambdas, I) as two matrix products over all groups
            left = (lambdas[level].T @ S.transpose(1, 0, 2).reshape(q, J * width)).reshape(q * J, width)
            M = (left @ self._right_factor(lambdas, level)).reshape(q, J, width).transpose(1, 0, 2)
            M[:, np.arange(q), np.arange(q)] += 1.0
            if update is not None:
                M -= update[:, :q, :]
            L, R = cholesky_solve(M[:, :, :q], M[:, :, q:])  # R: (J, q, t)
            logdet_z += 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum()
            t = width - q
            if level + 1 < len(self.stats):
                C = np.einsum("jat,jas->jts", R, R)
                if update is not None:
                    C += update[:, q:, q:]
                update = (self.summing[level] @ C.reshape(J, t * t)).reshape(-1, t, t)
            else:
                flat = R.reshape(J * q, t)
                update = flat.T @ flat + (update[:, q:, q:].sum(axis=0) if update is not None else 0.0)
            L_levels.append(L)
            R_levels.append(R)
        return NestedFactorization(self, L_levels, R_levels, logdet_z, self.top - update)


class NestedFactorization(Factorization):
    """The Cholesky factor of one evaluation of :class:`NestedSolver`, with back-substitution."""

    def __init__(self, solver: NestedSolver, L: list[np.ndarray], R: list[np.ndarray], logdet_z: float,
                 top: np.ndarray):
        self.solver = solver
        self.L = L
        self.R = R
        self.logdet_z = logdet_z
        self._set_fixed_part(top, solver.p)

    def modes(self) -> list[np.ndarray]:
        """Conditional modes u per chain level, (J_l, q_l), by back-substitution from the top level down."""
        s = self.solver
        tail = np.broadcast_to(self.beta, (s.J[-1], s.p))  # known unknowns above each group of the level
        out: list[np.ndarray] = [None] * len(s.chain)
        for level in reversed(range(len(s.chain))):
            L, R = self.L[level], self.R[level]
            rhs = R[:, :, -1] - np.einsum("jat,jt->ja", R[:, :, :-1], tail)
            u = np.linalg.solve(L.transpose(0, 2, 1), rhs[:, :, None])[:, :, 0]
            out[level] = u
            if level > 0:
                parent = s.parent[level - 1]
                tail = np.concatenate([u[parent], tail[parent]], axis=1)
        return out

    def conditional_variances(self) -> list[np.ndarray]:
        """Diagonal blocks of (Lambda'Z'WZ Lambda + I)^{-1} per chain level, (J_l, q_l, q_l).

        Top down (Takahashi's selected inversion): with Sigma_a the joint block of a group's ancestors,
        Sigma_ga = -L_g'^{-1} R_g Sigma_a and Sigma_gg = L_g'^{-1} (I + R_g Sigma_a R_g') L_g^{-1}.
        """
        s = self.solver
        out: list[np.ndarray] = [None] * len(s.chain)
        joint = None
        for level in reversed(range(len(s.chain))):
            q = s.q[level]
            Linv = np.linalg.inv(self.L[level])
            if joint is None:
                own = np.matmul(Linv.transpose(0, 2, 1), Linv)
                joint = own
            else:
                anc = joint[s.parent[level]]
                qa = anc.shape[1]
                Ra = self.R[level][:, :, :qa]
                RaS = np.matmul(Ra, anc)  # (J, q, qa)
                inner = np.eye(q) + np.matmul(RaS, Ra.transpose(0, 2, 1))
                own = np.matmul(np.matmul(Linv.transpose(0, 2, 1), inner), Linv)
                cross = -np.matmul(Linv.transpose(0, 2, 1), RaS)  # (J, q, qa)
                joint = np.block([[own, cross], [cross.transpose(0, 2, 1), anc]])
            out[level] = own
        return out
