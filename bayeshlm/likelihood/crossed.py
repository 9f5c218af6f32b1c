"""Penalised least squares for crossed (or otherwise non-chain) grouping factors.

As in MixedModels.jl, the factor with the most random effects comes first: its block of
Lambda'Z'WZ Lambda + I is block-diagonal (one q x q block A_g = Lambda_1'D_g Lambda_1 + I per group, D_g = Z_g'WZ_g),
so it is factored by batched dense Cholesky and eliminated exactly. With C = Z_1'W[Z_r, X, y] (row block C_g
per group) and Lambda~ = blockdiag(Lambda_r, I), its Schur complement onto the remaining factors' effects, X and y is

    S = Lambda~' T Lambda~ + [I 0; 0 0],   T = [Z_r X y]'W[Z_r X y] - N,   N = sum_g C_g' W_g C_g,
    W_g = Lambda_1 A_g^{-1} Lambda_1'.

N has a fixed sparsity pattern, so it is one sparse matrix-vector product per evaluation: the pair map
P[(i, j), (g, a, b)] = C[ga, i] C[gb, j] is built once and vec(N) = P vec(W); by symmetry only the pairs
i <= j and the blocks a <= b are kept (half the entries). S is factored densely; it has as many rows as the
other factors have random effects (1,128 for 1,100 x 28 crossed levels).

When C is small (J_1 q_1 t^2 <= DENSE_SCHUR_WORK, t = C's column count), N is instead one dense product,
N = B'B with B_g = L_g^{-1} Lambda_1' C_g (so B_g'B_g = C_g'W_g C_g), and C's products are dense: for a design
like ScotsSec (148 x 19 groups) the sparse calls' overhead exceeds their work. Then an evaluation (the factor and
the gradient's pieces) runs in the compiled ``_crossed_blocks.c`` when it was built (the same formulas group by
group, for any number of coefficients per factor; equal to rounding), else as the NumPy calls below.
"""

from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..design import Design, GroupingFactor
from ..design.design import group_sums, indicator_matrix
from ..errors import DataError
from .algebra import Factorization, square_blocks

try:  # built by ``pip install`` / ``setup.py build_ext`` (optional, like every extension; see setup.py)
    from . import _crossed_blocks
except ImportError:  # pragma: no cover - installs without a C compiler
    _crossed_blocks = None
# the argument layout the kernel was built for (_crossed_blocks.c)
KERNEL_LAYOUT = "dims=J,K,p,n_rest,q1,offsets,q_rest;C=J*q1*t;D=J*q1*q1;A=t*t;lam=q*q per factor;v3"
if _crossed_blocks is not None and getattr(_crossed_blocks, "LAYOUT", None) != KERNEL_LAYOUT:
    _crossed_blocks = None  # a stale build: NumPy does the work

MAX_DENSE = 20_000  # random effects outside the first factor that the dense Schur complement may hold
MAX_PAIRS = 60_000_000  # entries of the pair map P (12 bytes each)
DENSE_SCHUR_WORK = 4_000_000  # J_1 q_1 t^2 (multiply-adds of the dense N = B'B) up to which C is used densely


def pair_map(C: sp.csr_matrix, q: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """P and the group order ``order`` (one row per block a <= b) with the upper triangle (i <= j) of
    N = sum_g C_g' W_g C_g in P w, for W stacked (J, q, q), w = [W[order[k], a, b] for blocks k = (a, b), a <= b]
    concatenated and C_g the rows g q .. g q + q - 1.

    Since W_g and N are symmetric, N_ij = sum_a W_aa C_ai C_aj + sum_{a<b} W_ab (C_ai C_bj + C_bi C_aj): block
    (a, a) keeps the pairs of C's entries in rows g q + a with i <= j; block (a, b), a < b, keeps every pair
    (x in row a, y in row b) at (min, max), doubled when x = y. Row i t + j of P (t = C's column count) holds
    the pair (i, j); P is stored by rows, so P w gathers from the short w and P'v reads v in order. The groups
    are taken in order of their entry counts, so the pairs of all groups of one count come from one template.
    """
    J, t = C.shape[0] // q, C.shape[1]
    index = np.int64 if t * t >= 2**31 else np.int32
    counts = np.diff(C.indptr)
    blocks, orders = [], []
    for a in range(q):
        for b in range(a, q):
            first_a, first_b = C.indptr[np.arange(J) * q + a], C.indptr[np.arange(J) * q + b]
            na, nb = counts[np.arange(J) * q + a], counts[np.arange(J) * q + b]
            key = na.astype(np.int64) * (nb.max() + 1) + nb
            order = np.argsort(key, kind="stable")
            bounds = np.flatnonzero(np.diff(key[order])) + 1
            rows, values, sizes = [], [], np.empty(J, dtype=np.int64)
            for groups in np.split(order, bounds):
                ca, cb = na[groups[0]], nb[groups[0]]
                r, c = np.triu_indices(ca) if a == b else np.indices((ca, cb)).reshape(2, -1)
                ii = (first_a[groups][:, None] + r).ravel()
                jj = (first_b[groups][:, None] + c).ravel()
                x, y = C.indices[ii].astype(index), C.indices[jj].astype(index)
                value = C.data[ii] * C.data[jj]
                if a != b:
                    value[x == y] *= 2.0
                    x, y = np.minimum(x, y), np.maximum(x, y)
                rows.append(x * index(t) + y)
                values.append(value)
            sizes[:] = (na * (na + 1) // 2 if a == b else na * nb)[order]
            indptr = np.concatenate([[0], np.cumsum(sizes)])
            blocks.append(sp.csc_matrix((np.concatenate(values), np.concatenate(rows), indptr), shape=(t * t, J)))
            orders.append(order)
    P = blocks[0] if q == 1 else sp.hstack(blocks, format="csc")
    return P.tocsr(), np.array(orders)


def block_product(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A @ B for stacks of q x q blocks; elementwise when q = 1 (the same products, without matmul's per-call
    cost on J one-by-one matrices)."""
    return A * B if A.shape[-1] == 1 and B.shape[-2] == 1 and A.shape[-2] == 1 else A @ B


class CrossedSolver:
    """Factor the PLS system for factors in any arrangement; ``order`` puts the largest factor first."""

    def __init__(self, design: Design, order: list[GroupingFactor], compiled: bool | None = None):
        """``compiled``: evaluate by ``_crossed_blocks`` (None: when it was built and C is dense; False:
        NumPy)."""
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
        self.J, self.q = first.n_groups, first.n_coef
        self.offsets = np.cumsum([0] + [f.n_groups * f.n_coef for f in rest])
        self.D = group_sums(first.codes, first.Z if w is None else first.Z * w[:, None], first.Z, first.n_groups)
        t = self.K + self.p + 1
        self.blocks = np.triu_indices(first.n_coef)  # the column order of the pair map
        self.diagonal = np.arange(t)  # the diagonal of T and S
        self.compiled = False
        if self.J * self.q * t * t <= DENSE_SCHUR_WORK:  # C as a dense (J, q, t) array (module docstring)
            self.C_dense, self.A = self._dense_products(first, rest)
            self._prepare_kernel(compiled)
            return
        if compiled:
            raise ValueError("the compiled crossed kernel needs the dense C (a small design)")
        self.C_dense = None
        XY = np.column_stack([design.X, design.y])
        right = sp.hstack([indicator_matrix(f.codes, f.Z, f.n_groups) for f in rest] + [sp.csr_matrix(XY)],
                          format="csr")
        weighted = right if w is None else sp.diags(w) @ right
        ZF = indicator_matrix(first.codes, first.Z, first.n_groups)
        self.C = (ZF.T @ weighted).tocsr()  # (J_1 q_1) x (K + p + 1)
        self.C.sort_indices()
        self.A = (right.T @ weighted).toarray()  # [Z_r X y]' W [Z_r X y]
        counts = np.diff(self.C.indptr).reshape(first.n_groups, first.n_coef).sum(axis=1)
        if int((counts.astype(np.int64) ** 2).sum()) > MAX_PAIRS:
            raise DataError(
                f"The groups of {first.name!r} share too many levels of the other grouping factors "
                f"({int((counts.astype(np.int64) ** 2).sum())} pairs, at most {MAX_PAIRS}) for this engine's "
                "precomputed Schur complement. Fit a subset of the factors, or aggregate the data.")
        self.P, self.pair_order = pair_map(self.C, first.n_coef)
        self.P_T = self.P.T  # a CSC view of the same arrays (no copy), made once instead of per evaluation

    def _dense_products(self, first: GroupingFactor, rest: list[GroupingFactor]) -> tuple[np.ndarray, np.ndarray]:
        """C = Z_1'W [Z_r X y] as (J_1, q_1, t) and A = [Z_r X y]'W [Z_r X y] (t x t) by per-group sums: the
        entry of groups (g, h) of two factors sums the rows in both, one bincount over the pair codes
        g J_h + h per pair of columns."""
        d, w = self.design, self.design.weights
        XY = np.column_stack([d.X, d.y])
        XYw = XY if w is None else XY * w[:, None]
        factors = [first] + list(rest)
        starts = [None] + list(self.offsets[:-1])  # column of each factor's block in [Z_r X y]; None: the first
        K, t = self.K, self.K + self.p + 1
        C = np.empty((self.J, self.q, t))
        A = np.empty((t, t))
        for i, (f, at) in enumerate(zip(factors, starts)):
            left = f.Z if w is None else f.Z * w[:, None]
            for h, other in zip(factors[i + 1:] if at is None else factors[i:], starts[i + 1:] if at is None
                                else starts[i:]):
                block = self._pair_sums(f, left, h)  # (J_f, q_f, J_h, q_h)
                if at is None:
                    C[:, :, other:other + h.n_groups * h.n_coef] = block.reshape(self.J, self.q, -1)
                else:
                    flat = block.reshape(f.n_groups * f.n_coef, h.n_groups * h.n_coef)
                    A[at:at + len(flat), other:other + flat.shape[1]] = flat
                    A[other:other + flat.shape[1], at:at + len(flat)] = flat.T
            sums = group_sums(f.codes, left, XY, f.n_groups)
            if at is None:
                C[:, :, K:] = sums
            else:
                A[at:at + f.n_groups * f.n_coef, K:] = sums.reshape(-1, t - K)
                A[K:, at:at + f.n_groups * f.n_coef] = sums.reshape(-1, t - K).T
        A[K:, K:] = XYw.T @ XY
        return C, A

    def _prepare_kernel(self, compiled: bool | None) -> None:
        """Set ``compiled`` and, when set, the kernel's arrays (layout in ``_crossed_blocks.c``)."""
        if compiled and _crossed_blocks is None:
            raise ValueError("the compiled crossed kernel _crossed_blocks is not built")
        self.compiled = _crossed_blocks is not None if compiled is None else compiled
        if not self.compiled:
            return
        rest = self.factors[1:]
        self.kernel_dims = np.array([self.J, self.K, self.p, len(rest), self.q, *self.offsets]
                                    + [f.n_coef for f in rest], dtype=np.int64)
        self.kernel_C = np.ascontiguousarray(self.C_dense)
        self.kernel_D = np.ascontiguousarray(self.D)
        self.kernel_A = np.ascontiguousarray(self.A)
        # where each factor's q x q Lambda (and Q, G) starts in the flat arrays, as Python ints
        self.kernel_lam_at = list(itertools.accumulate([f.n_coef ** 2 for f in self.factors], initial=0))

    @staticmethod
    def _pair_sums(f: GroupingFactor, left: np.ndarray, g: GroupingFactor) -> np.ndarray:
        """sum over the rows in group a of f and group b of g of left[:, c] g.Z[:, e], as (J_f, q_f, J_g, q_g)."""
        if f is g:  # one factor: block diagonal
            out = np.zeros((f.n_groups, f.n_coef, f.n_groups, f.n_coef))
            out[np.arange(f.n_groups), :, np.arange(f.n_groups), :] = group_sums(f.codes, left, f.Z, f.n_groups)
            return out
        pairs = f.codes * g.n_groups + g.codes
        out = np.empty((f.n_groups, f.n_coef, g.n_groups, g.n_coef))
        for c in range(f.n_coef):
            for e in range(g.n_coef):
                out[:, c, :, e] = np.bincount(pairs, weights=left[:, c] * g.Z[:, e],
                                              minlength=f.n_groups * g.n_groups).reshape(f.n_groups, g.n_groups)
        return out

    @cached_property
    def C(self) -> sp.csr_matrix:
        """C = Z_1'W [Z_r X y], (J_1 q_1) x t, sparse (made from the dense C on first use when that is kept)."""
        return sp.csr_matrix(self.C_dense.reshape(self.J * self.q, -1))

    def first_products(self, x: np.ndarray) -> np.ndarray:
        """C x as (J_1, q_1)."""
        flat = self.C_dense.reshape(self.J * self.q, -1) @ x if self.C_dense is not None else self.C @ x
        return flat.reshape(self.J, self.q)

    def rest_products(self, b: np.ndarray) -> np.ndarray:
        """Z_r'W Z_1 b = C[:, :K]' b for b (J_1 q_1,)."""
        if self.C_dense is not None:
            return self.C_dense.reshape(self.J * self.q, -1)[:, :self.K].T @ b
        return self.C[:, :self.K].T @ b

    def scale(self, M: np.ndarray, lambdas: list[np.ndarray], side: str, transpose: bool = False) -> np.ndarray:
        """M Lambda~ (side 'right') or Lambda~' M (side 'left'), with Lambda~ = blockdiag(I_J (x) Lambda_f, ..., I)
        over the remaining factors; ``transpose`` uses Lambda~' in place of Lambda~ (M Lambda~', Lambda~ M)."""
        if all(len(lam) == 1 for lam in lambdas[1:]):  # Lambda~ is diagonal: scale columns or rows
            scale = np.ones(M.shape[1] if side == "right" else M.shape[0])
            for lam, a, b in zip(lambdas[1:], self.offsets[:-1], self.offsets[1:]):
                scale[a:b] = lam[0, 0]
            return M * scale if side == "right" else M * scale[:, None]
        out = M.copy() if side == "right" else M.T.copy()
        for f, lam, a, b in zip(self.factors[1:], lambdas[1:], self.offsets[:-1], self.offsets[1:]):
            block = out[:, a:b].reshape(len(out), f.n_groups, f.n_coef)
            out[:, a:b] = (block @ (lam.T if transpose else lam)).reshape(len(out), b - a)
        return out if side == "right" else out.T

    def sandwich(self, M: np.ndarray, lambdas: list[np.ndarray]) -> np.ndarray:
        """Lambda~' M Lambda~; one elementwise product with the outer product of the diagonal when every
        remaining factor has a single coefficient."""
        if all(len(lam) == 1 for lam in lambdas[1:]):
            scale = np.ones(len(M))
            for lam, a, b in zip(lambdas[1:], self.offsets[:-1], self.offsets[1:]):
                scale[a:b] = lam[0, 0]
            return M * np.outer(scale, scale)
        return self.scale(self.scale(M, lambdas, "right"), lambdas, "left")

    def _first_blocks(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """L_g (L_g L_g' = A_g = Lambda_1'D_g Lambda_1 + I), L_g^{-1} and W_g = Lambda_1 A_g^{-1} Lambda_1', each
        (J, q, q); for one coefficient elementwise: L_g = sqrt(a_g), a_g = lambda^2 D_g + 1, W_g = lambda^2 / a_g."""
        if len(lam) == 1:
            square = lam[0, 0] ** 2
            a = square * self.D + 1.0
            L = np.sqrt(a)
            return L, 1.0 / L, square / a
        L = np.linalg.cholesky(np.matmul(lam.T @ self.D, lam) + np.eye(len(lam)))
        Linv = np.linalg.inv(L)
        LamLinvT = lam @ Linv.transpose(0, 2, 1)  # Lambda_1 L_g'^{-1}
        return L, Linv, LamLinvT @ LamLinvT.transpose(0, 2, 1)

    def _first_schur(self, lam: np.ndarray, Linv: np.ndarray, W: np.ndarray) -> np.ndarray:
        """N = sum_g C_g'W_g C_g: B'B from dense C (B_g = L_g^{-1} Lambda_1' C_g), else by the pair map (whose
        product gives the upper triangle U: N = U + U' - diag(U))."""
        if self.C_dense is not None:
            B = Linv * lam[0, 0] * self.C_dense if self.q == 1 else Linv @ (lam.T @ self.C_dense)
            flat = B.reshape(-1, B.shape[2])
            return flat.T @ flat
        t = self.A.shape[0]
        a, b = self.blocks
        U = (self.P @ W[self.pair_order, a[:, None], b[:, None]].ravel()).reshape(t, t)
        N = U + U.T
        N[self.diagonal, self.diagonal] -= np.diagonal(U)
        return N

    def first_quadratic(self, phi: np.ndarray) -> np.ndarray:
        """Y_g = C_g Phi C_g' for every group g of the first factor (J, q, q), Phi symmetric t x t: dense, or
        gathered through the pair map (off-diagonal pairs i < j stand for both (i, j) and (j, i), and blocks
        a < b hold each pair from both orders)."""
        J, q = self.J, self.q
        if self.C_dense is not None:
            C_phi = (self.C_dense.reshape(J * q, -1) @ phi).reshape(J, q, -1)
            return C_phi @ self.C_dense.transpose(0, 2, 1)
        v = 2.0 * phi
        v[self.diagonal, self.diagonal] = np.diagonal(phi)
        a, b = self.blocks
        half = (self.P_T @ v.ravel()).reshape(len(a), J)
        half[a != b] *= 0.5
        Y = np.empty((J, q, q))
        Y[self.pair_order, a[:, None], b[:, None]] = half
        Y[self.pair_order, b[:, None], a[:, None]] = half
        return Y

    def factorize(self, lambdas: list[np.ndarray]) -> CrossedFactorization:
        """Factor the system at relative covariance factors ``lambdas`` (in solver order)."""
        if self.compiled:
            return self._factorize_compiled(lambdas)
        L, Linv, W = self._first_blocks(lambdas[0])
        T = self.A - self._first_schur(lambdas[0], Linv, W)
        S = self.sandwich(T, lambdas)
        K = self.K
        S[self.diagonal[:K], self.diagonal[:K]] += 1.0
        Lz = scipy.linalg.cholesky(S[:K, :K], lower=True, check_finite=False)
        Rz = scipy.linalg.solve_triangular(Lz, S[:K, K:], lower=True, check_finite=False)
        logdet_z = 2.0 * (np.log(np.diagonal(L, axis1=1, axis2=2)).sum() + np.log(np.diag(Lz)).sum())
        return CrossedFactorization(self, lambdas, L, Linv, W, T, Lz, Rz, logdet_z, S[K:, K:] - Rz.T @ Rz)

    def _factorize_compiled(self, lambdas: list[np.ndarray]) -> CrossedFactorization:
        """:meth:`factorize` by ``_crossed_blocks.crossed_factorize``."""
        J, K, q, t = self.J, self.K, self.q, self.K + self.p + 1
        lam = np.concatenate([x.ravel() for x in lambdas]).astype(float, copy=False)
        first = np.empty((3, J, q, q))  # L_g, L_g^{-1}, W_g
        T, Lz, Rz, top = np.empty((t, t)), np.empty((K, K)), np.empty((K, t - K)), np.empty((t - K, t - K))
        logdet_z = _crossed_blocks.crossed_factorize(self.kernel_dims, self.kernel_C, self.kernel_D, self.kernel_A, lam,
                                                     first[0], first[1], first[2], T, Lz, Rz, top)
        if np.isnan(logdet_z):
            raise np.linalg.LinAlgError("the Schur complement of the crossed factors is not positive definite")
        fac = CrossedFactorization(self, lambdas, first[0], first[1], first[2], T, Lz, Rz, logdet_z, top)
        fac.kernel_lam = lam
        return fac


class CrossedFactorization(Factorization):
    """The factor of one evaluation of :class:`CrossedSolver`, with back-substitution."""

    def __init__(self, solver: CrossedSolver, lambdas, L, Linv, W, T, Lz, Rz, logdet_z: float, top: np.ndarray):
        self.solver = solver
        self.lambdas = lambdas
        self.L, self.Linv, self.W, self.T, self.Lz, self.Rz = L, Linv, W, T, Lz, Rz
        self.logdet_z = logdet_z
        self.kernel_lam = None  # the lambdas flat, when the compiled kernel made this factor
        self._set_fixed_part(top, solver.p)

    def _split_rest(self, values: np.ndarray) -> list[np.ndarray]:
        s = self.solver
        return [values[a:b].reshape(f.n_groups, f.n_coef, *values.shape[1:])
                for f, a, b in zip(s.factors[1:], s.offsets[:-1], s.offsets[1:])]

    def modes(self) -> list[np.ndarray]:
        """u_rest from the dense factor; u_g = A_g^{-1} Lambda_1' C_g [-b_rest, -beta, 1] for the first factor."""
        return self._modes_and_residual_sums()[0]

    def _modes_and_residual_sums(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """The modes u (first factor, then the rest), b_rest = Lambda~ u_rest and C [-b_rest, -beta, 1], which is
        Z_1'W(y - X beta - Z_r b_rest) per group of the first factor."""
        s = self.solver
        u_rest = scipy.linalg.solve_triangular(self.Lz.T, self.Rz[:, -1] - self.Rz[:, :-1] @ self.beta, lower=False,
                                               check_finite=False)
        b_rest = s.scale(u_rest[None, :], self.lambdas, "right", transpose=True)[0]  # (Lambda_r u_rest)'
        Cx = s.first_products(np.concatenate([-b_rest, -self.beta, [1.0]]))
        u_first = block_product(self.first_inverse, (Cx @ self.lambdas[0])[:, :, None])[:, :, 0]
        return [u_first] + self._split_rest(u_rest), b_rest, Cx

    @cached_property
    def first_inverse(self) -> np.ndarray:
        """A_g^{-1} = L_g'^{-1} L_g^{-1} for every group of the first factor, (J, q, q)."""
        return block_product(self.Linv.transpose(0, 2, 1), self.Linv)

    def _rest_inverse(self, with_fixed: bool) -> np.ndarray:
        """(K + p + 1)-square Sigma: the inverse of S's [Z_r X] block (REML) or of its Z_r block (ML), zero
        elsewhere (from the factor [Lz 0; Rz' R_X] by LAPACK dpotri)."""
        s = self.solver
        K, p = s.K, s.p
        m = K + p if with_fixed else K
        factor = np.zeros((m, m))
        factor[:K, :K] = self.Lz
        if with_fixed:
            factor[K:, :K] = self.Rz[:, :p].T
            factor[K:, K:] = self.RX
        lower, _ = scipy.linalg.lapack.dpotri(factor, lower=1, overwrite_c=1)  # upper triangle stays 0
        out = np.zeros((K + p + 1, K + p + 1))
        out[:m, :m] = lower
        out[:m, :m] += lower.T
        out[np.arange(m), np.arange(m)] *= 0.5
        return out

    def gradient_parts(self, reml: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Q and G of :meth:`Factorization.gradient_parts` for the first and the remaining factors.

        log|Omega| = sum_g log|A_g| + log|S| with Sigma = S^{-1} (the [Z_r X] block for REML, Z_r for ML).
        A remaining factor l enters only through S = Lambda~'T Lambda~ + I:
        Q_l = sum_{a in l} [Sigma Lambda~' T]_aa. The first factor enters through A_g and W_g; with
        Phi = Lambda~ Sigma Lambda~' and Y_g = C_g Phi C_g' (:meth:`CrossedSolver.first_quadratic`),
        d log|S| = -sum_g tr(Y_g dW_g), which gives
        Q_1 = sum_g A_g^{-1} Lambda_1' [D_g - Y_g (I - Lambda_1 A_g^{-1} Lambda_1' D_g)].
        G_l = sum_g (Z_g'W e) u_g', with Z'W e from the per-group sums (below).
        """
        s = self.solver
        if self.kernel_lam is not None:
            Q, G = self._gradient_sums_compiled(reml)
            sizes = [f.n_coef for f in s.factors]
            return square_blocks(Q, s.kernel_lam_at, sizes), square_blocks(G, s.kernel_lam_at, sizes)
        q = s.q
        lam = self.lambdas[0]
        sigma = self._rest_inverse(reml)
        sigma_lam = s.scale(sigma, self.lambdas, "right", transpose=True)  # Sigma Lambda~'
        phi = s.scale(sigma_lam, self.lambdas, "left", transpose=True)  # Lambda~ Sigma Lambda~'
        Q = []
        Y = s.first_quadratic(phi)
        AinvLamT = self.first_inverse @ lam.T
        D = s.D
        Q.append(block_product(AinvLamT, D - block_product(Y, np.eye(q) - block_product(self.W, D))).sum(axis=0))
        for f, a, b in zip(s.factors[1:], s.offsets[:-1], s.offsets[1:]):
            rows = sigma_lam[a:b].reshape(f.n_groups, f.n_coef, -1)  # [Sigma Lambda~']_{a, :}
            T_rows = self.T[a:b].reshape(f.n_groups, f.n_coef, -1)
            Q.append(np.tensordot(rows, T_rows, axes=([0, 2], [0, 2])))
        # Z'W e per group from the sums: Z_1'W e = C [-b_rest, -beta, 1] - D b_1 and
        # Z_r'W e = A_r [-b_rest, -beta, 1] - Z_r'W Z_1 b_1, with A_r the Z_r rows of [Z_r X y]'W[Z_r X y]
        u, b_rest, Cx = self._modes_and_residual_sums()
        b_first = u[0] @ lam.T
        zwe_first = Cx - (D @ b_first[:, :, None])[:, :, 0]
        zwe_rest = s.A[:s.K] @ np.concatenate([-b_rest, -self.beta, [1.0]]) - s.rest_products(b_first.ravel())
        G = [zwe_first.T @ u[0]] + [z.T @ uf for z, uf in zip(self._split_rest(zwe_rest), u[1:])]
        return Q, G

    def gradient_sums(self, reml: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`gradient_parts` flat (:meth:`Factorization.gradient_sums`), as the compiled kernel returns them."""
        if self.kernel_lam is not None:
            return self._gradient_sums_compiled(reml)
        return super().gradient_sums(reml)

    def _gradient_sums_compiled(self, reml: bool) -> tuple[np.ndarray, np.ndarray]:
        """Q and G by ``_crossed_blocks.crossed_gradient``."""
        s = self.solver
        Q, G = np.empty(s.kernel_lam_at[-1]), np.empty(s.kernel_lam_at[-1])
        _crossed_blocks.crossed_gradient(s.kernel_dims, s.kernel_C, s.kernel_D, s.kernel_A, self.kernel_lam, self.Linv,
                                         self.W, self.T, self.Lz, self.Rz, np.ascontiguousarray(self.RX),
                                         np.ascontiguousarray(self.beta), reml, Q, G)  # R_X: REML only
        return Q, G

    def conditional_variances(self) -> list[np.ndarray]:
        """Diagonal blocks of the inverse: Sigma_rest = (Lz Lz')^{-1}; for a group g of the first factor
        Sigma_gg = L_g'^{-1} (I + R_g Sigma_rest R_g') L_g^{-1} (selected inversion), with
        R_g = L_g^{-1} Lambda_1' C_g Lambda~ restricted to the Z_r columns."""
        s = self.solver
        K = s.K
        sigma_rest = self._rest_inverse(with_fixed=False)[:K, :K]
        rest = []
        for f, a in zip(s.factors[1:], s.offsets[:-1]):
            idx = a + np.arange(f.n_groups)[:, None] * f.n_coef + np.arange(f.n_coef)
            rest.append(sigma_rest[idx[:, :, None], idx[:, None, :]])
        first = s.factors[0]
        J, q = first.n_groups, first.n_coef
        B = sp.bsr_matrix((np.matmul(self.Linv, self.lambdas[0].T), np.arange(J), np.arange(J + 1)),
                          shape=(J * q, J * q))
        Rz = s.scale((B @ s.C[:, :K]).toarray(), self.lambdas, "right").reshape(J, q, K)
        inner = np.eye(q) + np.einsum("jak,kl,jbl->jab", Rz, sigma_rest, Rz, optimize=True)
        own = np.matmul(np.matmul(self.Linv.transpose(0, 2, 1), inner), self.Linv)
        return [own] + rest
