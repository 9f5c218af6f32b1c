"""Penalised least squares for one grouping factor or a chain of nested factors, by batched dense algebra.

The system of Bates et al. (2015, eq. 13-18) in unknowns (u, beta), with weights W (1/V for known variances),

    [ Lambda'Z'WZ Lambda + I   Lambda'Z'WX ] [u]   [Lambda'Z'Wy]
    [ X'WZ Lambda              X'WX        ] [b] = [X'Wy       ],

is Cholesky-factored with the unknowns ordered innermost level first. For a nested chain (pupils in classes
in schools) the factor has no fill outside a group's ancestors: the block of group g is factored on its own,
L_g L_g' = D_g, its off-diagonal row R_g = L_g^{-1} O_g reaches only its ancestors, X and y, and the Schur
complement R_g'R_g is added to its parent's block. Everything is computed from per-group sufficient
statistics (one pass over the rows), so an evaluation costs O(sum_l J_l q_l^3) whatever the number of rows.

The per-group operations of an evaluation (the factor and the gradient's pieces) run in the compiled
``_pls_blocks.c`` when it was built (the same formulas group by group; equal to rounding), else as batched
NumPy over all groups of a level: on small designs NumPy's per-call overhead is most of an evaluation.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

from ..design import Design, GroupingFactor
from .algebra import Factorization, _pls_blocks, cholesky_solve, square_blocks

MAX_COMPILED_LEVELS = 16  # nesting depth the compiled kernel handles (MAX_LEVELS in _pls_blocks.c)


class NestedSolver:
    """Factor the PLS system for ``chain`` (grouping factors from innermost to outermost, each nested in the next)."""

    def __init__(self, design: Design, chain: list[GroupingFactor], compiled: bool | None = None):
        """``compiled``: use ``_pls_blocks`` (None: when it was built; False: batched NumPy)."""
        self.design = design
        self.chain = chain
        self.q = [f.n_coef for f in chain]
        self.J = [f.n_groups for f in chain]
        self.p = design.n_fixed
        cp = design.chain_crossproducts(chain)
        # level l: sums over the rows of each group of Z_l' W [Z_l, Z_l+1, ..., Z_top, X, y]
        self.stats = cp.stats
        # the same numbers laid out (q, J * width) for the left product of each evaluation
        self.stats_by_coef = [S.transpose(1, 0, 2).reshape(S.shape[1], -1) for S in cp.stats]
        self.top = cp.top  # [X y]' W [X y]
        self.offsets = np.cumsum([0] + self.q)  # column of each level's block within the top-level ordering
        # parent of each group and the summing matrix (parent groups x groups)
        self.parent = cp.parents
        self.summing = [sp.csr_matrix((np.ones(len(parent)), (parent, np.arange(len(parent)))),
                                      shape=(outer.n_groups, len(parent)))
                        for parent, outer in zip(cp.parents, chain[1:])]
        # ancestors[m][k]: the group of level m + k that contains each group of level m
        self.ancestors = []
        for m, f in enumerate(chain):
            maps = [np.arange(f.n_groups)]
            for parent in self.parent[m:]:
                maps.append(parent[maps[-1]])
            self.ancestors.append(maps)
        if compiled is None:
            compiled = _pls_blocks is not None and len(chain) <= MAX_COMPILED_LEVELS
        if compiled and (_pls_blocks is None or len(chain) > MAX_COMPILED_LEVELS):
            raise ValueError("the compiled kernel _pls_blocks is not built, or the chain is deeper than it handles")
        self.compiled = compiled
        if compiled:  # flat C-ordered copies in the kernel's layout (see _pls_blocks.c)
            self.kernel_dims = np.array([len(chain), self.p, *self.q, *self.J], dtype=np.int64)
            self.kernel_stats = np.concatenate([S.ravel() for S in self.stats])
            self.kernel_parents = np.concatenate([np.asarray(a, dtype=np.int64) for a in self.parent]
                                                 or [np.zeros(0, dtype=np.int64)])
            self.kernel_top = np.ascontiguousarray(self.top, dtype=float)
            widths = [sum(self.q[level:]) + self.p + 1 for level in range(len(chain))]
            # where each level's blocks start in the flat arrays, as Python ints (slicing by them each evaluation)
            self.kernel_L = list(itertools.accumulate([J * q * q for J, q in zip(self.J, self.q)], initial=0))
            self.kernel_R = list(itertools.accumulate([J * q * (w - q) for J, q, w in zip(self.J, self.q, widths)],
                                                      initial=0))
            self.kernel_lam = list(itertools.accumulate([q * q for q in self.q], initial=0))

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
        if self.compiled:
            return self._factorize_compiled(lambdas)
        L_levels, R_levels = [], []
        logdet_z = 0.0
        update = None  # Schur-complement contributions from the level below, per group of this level
        right = [self._right_factor(lambdas, level) for level in range(len(self.stats))]
        for level, S in enumerate(self.stats):
            J, q, width = S.shape
            # M_j = Lambda' S_j blockdiag(Lambda, ancestors' Lambdas, I) as two matrix products over all groups
            left = (lambdas[level].T @ self.stats_by_coef[level]).reshape(q * J, width)
            M = (left @ right[level]).reshape(q, J, width).transpose(1, 0, 2)
            diagonal = range(q)
            M[:, diagonal, diagonal] += 1.0
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
        return NestedFactorization(self, lambdas, L_levels, R_levels, logdet_z, self.top - update, right)

    def _factorize_compiled(self, lambdas: list[np.ndarray]) -> NestedFactorization:
        """:meth:`factorize` by ``_pls_blocks.nested_factorize`` (the same steps group by group)."""
        lam = np.concatenate([x.ravel() for x in lambdas]).astype(float, copy=False)
        L_flat, R_flat = np.empty(self.kernel_L[-1]), np.empty(self.kernel_R[-1])
        top = np.empty_like(self.kernel_top)
        logdet_z = _pls_blocks.nested_factorize(self.kernel_dims, self.kernel_stats, self.kernel_parents,
                                                   self.kernel_top, lam, L_flat, R_flat, top)
        fac = NestedFactorization(self, lambdas, None, None, logdet_z, top, None)
        fac.kernel_arrays = (lam, L_flat, R_flat)
        return fac

    def kernel_blocks(self, L_flat: np.ndarray, R_flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The kernel's flat L and R as one (J, q, q) and one (J, q, t) array per level (views)."""
        L = [L_flat[a:b].reshape(J, q, q) for a, b, J, q in zip(self.kernel_L, self.kernel_L[1:], self.J, self.q)]
        R = [R_flat[a:b].reshape(J, q, -1) for a, b, J, q in zip(self.kernel_R, self.kernel_R[1:], self.J, self.q)]
        return L, R


class NestedFactorization(Factorization):
    """The Cholesky factor of one evaluation of :class:`NestedSolver`, with back-substitution."""

    def __init__(self, solver: NestedSolver, lambdas: list[np.ndarray], L: list[np.ndarray] | None,
                 R: list[np.ndarray] | None, logdet_z: float, top: np.ndarray, right: list[np.ndarray]):
        """``L``, ``R``: per level, the blocks L_g and R_g; None when the compiled kernel made them (read from
        ``kernel_arrays`` on first use: an evaluation's criterion and gradient need only the flat arrays)."""
        self.solver = solver
        self.lambdas = lambdas
        self._right = right  # per level, NestedSolver._right_factor at these lambdas (None: made when needed)
        self.kernel_arrays = None  # (Lambdas, L, R) flat, when the compiled kernel made this factor
        self._L, self._R = L, R
        self.logdet_z = logdet_z
        self._set_fixed_part(top, solver.p)

    @property
    def L(self) -> list[np.ndarray]:
        """Per chain level, the Cholesky blocks L_g (J, q, q)."""
        if self._L is None:
            self._L, self._R = self.solver.kernel_blocks(*self.kernel_arrays[1:])
        return self._L

    @property
    def R(self) -> list[np.ndarray]:
        """Per chain level, the off-diagonal rows R_g = L_g^{-1} O_g (J, q, t)."""
        if self._R is None:
            self._L, self._R = self.solver.kernel_blocks(*self.kernel_arrays[1:])
        return self._R

    @property
    def right(self) -> list[np.ndarray]:
        """Per chain level, blockdiag(Lambda_level, ..., Lambda_top, I) (:meth:`NestedSolver._right_factor`)."""
        if self._right is None:
            self._right = [self.solver._right_factor(self.lambdas, level) for level in range(len(self.L))]
        return self._right

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

    def _selected_inverse(self, with_fixed: bool):
        """Per chain level from the top down, the rows of the inverse that the factor's pattern reaches:
        (own, cross) with own = Sigma_gg (J, q, q) and cross = Sigma_ga (J, q, t_a) against the group's
        ancestors' effects (outermost last) and, if ``with_fixed``, beta (the last p columns).

        Takahashi's selected inversion: with Sigma_a the joint block of the ancestors (and beta),
        Sigma_ga = -L_g'^{-1} R_g Sigma_a and Sigma_gg = L_g'^{-1} (I + R_g Sigma_a R_g') L_g^{-1}.
        Without beta this is (Lambda'Z'WZ Lambda + I)^{-1}; with it, the inverse of the whole PLS matrix
        (whose beta block is (R_X R_X')^{-1}).
        """
        s = self.solver
        joint = np.broadcast_to(self.fixed_cov_relative(), (s.J[-1], s.p, s.p)) if with_fixed else None
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(s.chain)
        for level in reversed(range(len(s.chain))):
            q = s.q[level]
            LinvT = np.linalg.inv(self.L[level]).transpose(0, 2, 1)
            if joint is None:
                own = LinvT @ LinvT.transpose(0, 2, 1)
                cross = np.zeros((len(own), q, 0))
                anc = np.zeros((len(own), 0, 0))
            else:
                anc = joint if level == len(s.chain) - 1 else joint[s.parent[level]]
                Ra = self.R[level][:, :, :anc.shape[1]]
                cross = -LinvT @ (Ra @ anc)  # (J, q, t_a)
                own = (LinvT - cross @ Ra.transpose(0, 2, 1)) @ LinvT.transpose(0, 2, 1)
            out[level] = (own, cross)
            if level > 0:
                t = anc.shape[1]
                joint = np.empty((len(own), q + t, q + t))
                joint[:, :q, :q] = own
                joint[:, :q, q:] = cross
                joint[:, q:, :q] = cross.transpose(0, 2, 1)
                joint[:, q:, q:] = anc
        return out

    def conditional_variances(self) -> list[np.ndarray]:
        """Diagonal blocks of (Lambda'Z'WZ Lambda + I)^{-1} per chain level, (J_l, q_l, q_l)."""
        return [own for own, _ in self._selected_inverse(with_fixed=False)]

    def gradient_parts(self, reml: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per chain level, the q x q matrices Q and G of :meth:`Factorization.gradient_parts`.

        With Omega the PLS matrix (REML) or Lambda'Z'WZ Lambda + I (ML), M = [Z X]'W[Z X] and S_g the
        group's sufficient statistics Z_g'W[Z_g, Z_ancestors, X] (a row block of M):
        Q_l = sum_g [Omega^{-1} Lambda~' M]_gg over the groups g of level l, which collects
        Sigma_gg Lambda_l' M_gg + sum_a Sigma_ga Lambda_a' M_ag (ancestors a, and beta) from g's own row and
        Sigma_ag Lambda_m' M_ga from each descendant g at a lower level m.
        G_l = sum_g (Z_g'W e) u_g', with Z_g'W e = S_g [-b_g, -b_ancestors, -beta, y]' minus the
        descendants' S_d[:, cols of l]' b_d (e = y - X beta - Z b, b = Lambda u).
        """
        s = self.solver
        if self.kernel_arrays is not None:
            return self._gradient_parts_compiled(reml)
        n_levels = len(s.chain)
        u = self.modes()
        b = [ul @ lam.T for ul, lam in zip(u, self.lambdas)]
        offsets = s.offsets
        Q = [np.zeros((q, q)) for q in s.q]
        Zwe = [np.zeros((J, q)) for J, q in zip(s.J, s.q)]
        rows = self._selected_inverse(with_fixed=reml)
        for m in range(n_levels):
            ancestor = s.ancestors[m]
            S = s.stats[m]
            width = S.shape[2] - (0 if reml else s.p) - 1  # columns Z_m ... Z_top (, X)
            V = S[:, :, :width] @ self.right[m][:width, :width]  # S_g Lambda~
            own, cross = rows[m]
            Q[m] += np.tensordot(np.concatenate([own, cross], axis=2), V, axes=([0, 2], [0, 2]))
            # residual cross-product of the group's own rows: S_g [-b_g, -b_ancestors, -beta, 1]
            coefs = [b[l][ancestor[l - m]] for l in range(m, n_levels)]
            full = np.concatenate(coefs + [np.broadcast_to(self.beta, (len(S), s.p))], axis=1)
            Zwe[m] += S[:, :, -1] - (S[:, :, :-1] @ full[:, :, None])[:, :, 0]
            lam_m = self.lambdas[m]
            for l in range(m + 1, n_levels):
                cols = slice(offsets[l] - offsets[m], offsets[l + 1] - offsets[m])
                S_l = S[:, :, cols]  # Z_m'W Z_l over the rows of each group of level m
                lam_cross = lam_m @ cross[:, :, cols.start - s.q[m]:cols.stop - s.q[m]]  # Lambda_m Sigma_ga
                Q[l] += np.tensordot(lam_cross, S_l, axes=([0, 1], [0, 1]))
                contrib = (b[m][:, None, :] @ S_l)[:, 0, :]
                for c in range(s.q[l]):
                    Zwe[l][:, c] -= np.bincount(ancestor[l - m], weights=contrib[:, c], minlength=s.J[l])
        G = [np.einsum("ja,jb->ab", z, ul) for z, ul in zip(Zwe, u)]
        return Q, G

    def gradient_sums(self, reml: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`gradient_parts` flat (:meth:`Factorization.gradient_sums`), as the compiled kernel returns them."""
        if self.kernel_arrays is not None:
            return self._gradient_sums_compiled(reml)
        return super().gradient_sums(reml)

    def _gradient_parts_compiled(self, reml: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:meth:`gradient_parts` by ``_pls_blocks.nested_gradient`` (the same sums group by group)."""
        s = self.solver
        Q_flat, G_flat = self._gradient_sums_compiled(reml)
        return square_blocks(Q_flat, s.kernel_lam, s.q), square_blocks(G_flat, s.kernel_lam, s.q)

    def _gradient_sums_compiled(self, reml: bool) -> tuple[np.ndarray, np.ndarray]:
        s = self.solver
        lam, L_flat, R_flat = self.kernel_arrays
        fixed_cov = self.fixed_cov_relative() if reml else np.zeros(0)
        Q_flat, G_flat = np.empty(s.kernel_lam[-1]), np.empty(s.kernel_lam[-1])
        _pls_blocks.nested_gradient(s.kernel_dims, s.kernel_stats, s.kernel_parents, lam, L_flat, R_flat,
                                       np.ascontiguousarray(self.beta), np.ascontiguousarray(fixed_cov), reml,
                                       Q_flat, G_flat)
        return Q_flat, G_flat
