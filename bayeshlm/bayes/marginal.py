"""Group effects integrated out: the marginal likelihood of a nested Gaussian model from per-group sufficient
statistics, and exact draws of the group effects given the other parameters.

Model: y = X β + Σ_l Z_l u_l + r over a chain of nested grouping factors l = 0 (innermost, e.g. child) ..
m-1 (outermost, e.g. school), u_lj ~ N(0, T_l), r ~ N(0, R), R = σ² I (or diag(V), known, in V-known models).
Write T_l = L_l L_l', R^{-1} = s W (s = 1/σ², W = I; or s = 1, W = diag(1/V)). Everything the likelihood
needs is the per-group sufficient statistics of :class:`~bayeshlm.design.design.ChainCrossproducts`: for each
group g of level l, Z_l'W [Z_l ... Z_{m-1}, X, y] summed over its rows, plus the whole-sample
e'R^{-1}e = s (y'Wy - 2 β'X'Wy + β'X'WX β). Level by level, innermost first, group g of level l has

    [A, B] = s Z_l'W [Z_l, Z_outer] - K_g,      b = s Z_l'W (y - X β) - k_g

(A over its own q_l columns, B over the outer levels' columns; K_g, k_g the corrections its children left,
zero at level 0). With M_g = I + L_l' A L_l = C_g C_g', G = C_g^{-1} L_l' B and w = C_g^{-1} L_l' b,
integrating u_lg out adds log|M_g| to log|Σ| and subtracts |w|² from the quadratic form (matrix determinant
lemma and Woodbury identity), and adds G'G and G'w (plus g's own outer corrections) to the corrections of
its parent. The log-likelihood is

    -1/2 [N log 2π + log|R| + Σ_levels Σ_g 2 Σ_k log C_g[k,k] + e'R^{-1}e - Σ_levels Σ_g |w_g|²],

log|R| = -N log s (+ Σ log V, a constant, with known V). This is the likelihood REML/ML maximise (R&B 2002,
ch. 3, 8 and 14; Bates et al. 2015, JSS 67(1), sec. 3), in the recursive form of Pinheiro & Bates (2000,
sec. 2.2) and written with L_l rather than T_l^{-1} so that a singular T (a zero variance) stays finite. For
one grouping factor it is the two-level formula of R&B eq. 3.52. It is written three times: as a PyTensor
graph (:mod:`.marginal_graph`), in the compiled kernel (:mod:`.kernel`) and, for REML/ML, in
:mod:`bayeshlm.likelihood.marginal`.

Crossed designs: the effects of factors outside the integrated chain are sampled and enter as extra columns
of X (an indicator column per group and coefficient), so the same formula applies with β extended by them.

Level-1 error structures enter through R^{-1} = Σ_k s_k W_k, a weighted sum of fixed row sets, so every
statistic is kept per component and weighted by s_k: a σ_k² per stratum k of rows (R&B 2002 sec. 5.4 and ch. 6;
s_k = 1/σ_k², log|R| = -Σ_k N_k log s_k), or AR(1) errors within units
(:func:`bayeshlm.level1.ar1_pairs`). A homogeneous model has one component.

Given (β, T, s), the group effects are drawn top-down from their exact conditional posterior (R&B 2002,
eq. 3.52 and 13.17): at level l, given the outer levels' draws u_o, u_lg ~ N(S b̃, S), b̃ = b - B u_o,
S = (T_l^{-1} + A)^{-1} = L_l M^{-1} L_l', drawn as u_lg = L_l (M^{-1} L_l' b̃ + C^{-T} z), z ~ N(0, I).
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from ..design import Design, GroupingFactor
from ..design.design import ChainCrossproducts, chain_parents, group_sums, indicator_matrix
from ..level1 import AR1Pairs

# Crossed designs: refuse to integrate when the innermost-group x sampled-column table would exceed this
MAX_CROSS_CELLS = 20_000_000


@dataclass(frozen=True)
class ChainStatistics:
    """Sufficient statistics for integrating a nested chain of factors out (module docstring), as arrays with
    a leading axis over K weighted components of R^{-1}: the strata of a heterogeneous level-1 variance, the
    three parts of an AR(1) precision, or K = 1.

    Level l: ``Z{l}tZ`` (K, J_l, q_l, Σ_{k>=l} q_k), ``Z{l}tX`` (K, J_l, q_l, P), ``Z{l}ty`` (K, J_l, q_l); whole
    sample: XtX (K, P, P), Xty (K, P), yty (K,), n_obs (N) and either logdetV (known variances) or, without
    AR(1) errors, rows_per_component (K,). P = p fixed effects plus one column per sampled group effect of a
    crossed factor. ``parents[l]`` maps level-l groups to level l + 1.
    """

    sizes: tuple[int, ...]  # q_l per chain level, innermost first
    n_groups: tuple[int, ...]  # J_l per chain level
    arrays: dict[str, np.ndarray]
    parents: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class _Rows:
    """Rows as the statistics see them: each chain level's Z and group codes, and [X, D, y] (D: the indicator
    columns of sampled crossed factors), sparse."""

    Z: list[np.ndarray]
    codes: list[np.ndarray]
    XDy: sp.csr_matrix

    def __len__(self) -> int:
        return self.XDy.shape[0]


def chain_statistics(design: Design, chain: list[GroupingFactor], sampled: list[GroupingFactor],
                     strata: np.ndarray | None = None, ar1: AR1Pairs | None = None) -> ChainStatistics:
    """The :class:`ChainStatistics` of ``chain`` (innermost first), with the effects of the ``sampled``
    factors as indicator columns appended to X; per stratum (``strata``: each row's stratum code) or per
    AR(1) component (``ar1``, see :func:`bayeshlm.level1.ar1_pairs`). Without any of these it reads the
    design's own sufficient statistics, so aggregate designs built out of core work too."""
    if not sampled and strata is None and ar1 is None:
        components, counts = [design.chain_crossproducts(chain)], [design.n_obs]
        parents = components[0].parents
    else:
        parents = chain_parents(chain)
        rows = _design_rows(design, chain, sampled)
        weights = np.ones(design.n_obs) if design.weights is None else design.weights
        if ar1 is not None:
            pairs = _paired_rows(rows, ar1.first, ar1.second)
            cross = _subtract(_crossproducts(pairs, chain, np.ones(len(pairs))),
                              _crossproducts(rows, chain, ar1.in_pairs))
            components = [_crossproducts(rows, chain, weights), cross, _crossproducts(rows, chain, ar1.interior)]
            counts = [design.n_obs, 0, 0]
        else:
            codes = np.zeros(design.n_obs, dtype=np.int64) if strata is None else strata
            counts = np.bincount(codes, minlength=int(codes.max()) + 1)
            components = [_crossproducts(rows, chain, weights * (codes == k)) for k in range(len(counts))]
    sizes = tuple(f.n_coef for f in chain)
    P = components[0].top.shape[0] - 1
    arrays = {}
    for level in range(len(chain)):
        S = np.stack([cp.stats[level] for cp in components])
        width = sum(sizes[level:])
        arrays |= {f"Z{level}tZ": S[..., :width], f"Z{level}tX": S[..., width:width + P], f"Z{level}ty": S[..., -1]}
    top = np.stack([cp.top for cp in components])
    arrays |= {"XtX": top[:, :P, :P], "Xty": top[:, :P, P], "yty": top[:, P, P], "n_obs": np.float64(design.n_obs)}
    # only what the graph reads: nutpie drops unused data, and a refit may only swap data the graph holds
    if design.known_variance is not None:
        arrays["logdetV"] = np.float64(np.sum(np.log(design.known_variance)))
    elif ar1 is None:
        arrays["rows_per_component"] = np.asarray(counts, dtype=float)
    return ChainStatistics(sizes, tuple(f.n_groups for f in chain), arrays, tuple(parents))


def _design_rows(design: Design, chain: list[GroupingFactor], sampled: list[GroupingFactor]) -> _Rows:
    parts = [sp.csr_matrix(design.X), *(indicator_matrix(f.codes, f.Z, f.n_groups) for f in sampled),
             sp.csr_matrix(design.y[:, None])]
    return _Rows([f.Z for f in chain], [f.codes for f in chain], sp.hstack(parts, format="csr"))


def _paired_rows(rows: _Rows, first: np.ndarray, second: np.ndarray) -> _Rows:
    """One row per pair, holding the sum of its two rows (same groups along the chain: the unit is innermost)."""
    return _Rows([Z[first] + Z[second] for Z in rows.Z], [c[first] for c in rows.codes],
                 rows.XDy[first] + rows.XDy[second])


def _crossproducts(rows: _Rows, chain: list[GroupingFactor], w: np.ndarray) -> ChainCrossproducts:
    """:meth:`Design.chain_crossproducts` of ``rows`` with row weights ``w`` (the caller supplies the parent
    maps, which do not depend on the weights)."""
    stats = []
    for level, f in enumerate(chain):
        Zw = rows.Z[level] * w[:, None]
        dense = group_sums(rows.codes[level], Zw, np.hstack(rows.Z[level:]), f.n_groups)
        spread = indicator_matrix(rows.codes[level], Zw, f.n_groups)
        cross = (spread.T @ rows.XDy).toarray().reshape(f.n_groups, f.n_coef, rows.XDy.shape[1])
        stats.append(np.concatenate([dense, cross], axis=2))
    top = (rows.XDy.T @ sp.diags(w) @ rows.XDy).toarray()
    return ChainCrossproducts(stats=stats, top=top, parents=[])


def _subtract(a: ChainCrossproducts, b: ChainCrossproducts) -> ChainCrossproducts:
    return ChainCrossproducts([x - y for x, y in zip(a.stats, b.stats)], a.top - b.top, [])


def sampled_columns(sampled: list[GroupingFactor]) -> int:
    """Number of indicator columns the sampled factors add to X."""
    return sum(f.n_groups * f.n_coef for f in sampled)


# --- exact conditional draws of the group effects, in NumPy --------------------------------------------------
def draw_group_effects(stats: ChainStatistics, beta: np.ndarray, s: np.ndarray, chols: list[np.ndarray],
                       rng: np.random.Generator, chunk: int = 100) -> list[np.ndarray]:
    """Exact draws of every chain level's group effects given (β, T, σ²), per posterior draw (module docstring).

    ``beta`` (S, P) (fixed effects, then the sampled effects of crossed factors), ``s`` (S, K) the weights of
    the components of R^{-1} (e.g. 1/σ_k² per stratum, or ones with known V), ``chols[l]`` (S, q_l, q_l).
    Returns one (S, J_l, q_l) array per chain level. Vectorised over groups and over draws, in chunks of
    ``chunk`` draws to bound memory.
    """
    a, top = stats.arrays, len(stats.sizes) - 1
    n_draws = beta.shape[0]
    out = [np.empty((n_draws, J, q)) for J, q in zip(stats.n_groups, stats.sizes)]
    if top <= 1:  # one or two levels: the compiled loops (same draws, same random stream)
        stats0 = [np.ascontiguousarray(a[key]) for key in ("Z0tZ", "Z0tX", "Z0ty")]
        for start in range(0, n_draws, chunk):
            sl = slice(start, min(start + chunk, n_draws))
            s_, beta_, L0 = (np.ascontiguousarray(v[sl]) for v in (s, beta, chols[0]))
            if top == 0:
                _one_level_draws()(*stats0, s_, beta_, L0, rng.standard_normal(out[0][sl].shape), out[0][sl])
                continue
            noise1 = rng.standard_normal(out[1][sl].shape)  # outer level first, as below
            _draw_two_levels(*stats0, *(np.ascontiguousarray(a[key]) for key in ("Z1tZ", "Z1tX", "Z1ty")),
                             stats.parents[0], s_, beta_, L0, np.ascontiguousarray(chols[1][sl]),
                             rng.standard_normal(out[0][sl].shape), noise1, out[0][sl], out[1][sl])
        return out
    for start in range(0, n_draws, chunk):
        sl = slice(start, min(start + chunk, n_draws))
        ss = s[sl]
        K = k = None  # corrections left by the level below: (S, J_l, width, width) and (S, J_l, width)
        levels = []
        for level, q in enumerate(stats.sizes):
            Q = np.einsum("sk,kjab->sjab", ss, a[f"Z{level}tZ"])  # (S, J, q, width = q + outer columns)
            b = np.einsum("sk,kja->sja", ss, a[f"Z{level}ty"]) - np.einsum(
                "sk,kjap,sp->sja", ss, a[f"Z{level}tX"], beta[sl])
            if K is not None:
                Q, b = Q - K[..., :q, :], b - k[..., :q]
            L = chols[level][sl][:, None]  # (S, 1, q, q)
            Lt = np.swapaxes(L, -1, -2)
            M = np.eye(q) + Lt @ Q[..., :q] @ L
            C = np.linalg.cholesky(M)
            B = Q[..., q:]
            levels.append((L, Lt, M, C, B, b))
            if level == top:
                break
            G = np.linalg.solve(C, Lt @ B)
            w = np.linalg.solve(C, Lt @ b[..., None])
            GG, Gw = np.swapaxes(G, -1, -2) @ G, (np.swapaxes(G, -1, -2) @ w)[..., 0]
            if K is not None:
                GG, Gw = GG + K[..., q:, q:], Gw + k[..., q:]
            n_parents = stats.n_groups[level + 1]
            K = _parent_sums(GG, stats.parents[level], n_parents)
            k = _parent_sums(Gw, stats.parents[level], n_parents)
        outer = None  # (S, J_l, columns of the outer levels): the ancestors' draws, innermost ancestor first
        for level in reversed(range(len(stats.sizes))):
            L, Lt, M, C, B, b = levels[level]
            if outer is not None:
                outer = outer[:, stats.parents[level]]
                b = b - (B @ outer[..., None])[..., 0]
            mean = np.linalg.solve(M, Lt @ b[..., None])[..., 0]
            noise = np.linalg.solve(np.swapaxes(C, -1, -2), rng.standard_normal(b.shape)[..., None])[..., 0]
            u = (L @ (mean + noise)[..., None])[..., 0]
            out[level][sl] = u
            outer = u if outer is None else np.concatenate([u, outer], axis=-1)
    return out


@functools.cache
def _one_level_draws():
    """:func:`_draw_one_level` as compiled ahead of time in the kernel extension (``_two_level_kernel.c``: the same
    loop in the same order of operations, so the same draws, without a Numba compile on a first fit), or the
    Numba function when the extension is not installed."""
    try:
        from ._two_level_kernel import group_draws
    except ImportError:
        return _draw_one_level
    int64, double_ptr = ctypes.c_int64, ctypes.POINTER(ctypes.c_double)
    compiled = ctypes.CFUNCTYPE(int64, *[int64] * 6, *[double_ptr] * 8)(group_draws())

    def draw(ZtZ, ZtX, Zty, s, beta, L, noise, out):
        arrays = [np.ascontiguousarray(a, dtype=float) for a in (ZtZ, ZtX, Zty, s, beta, L, noise)]
        if not (out.flags.c_contiguous and out.dtype == np.float64):
            raise ValueError("the draws' output array must be C-contiguous float64")
        K, J, q, width = ZtZ.shape
        code = compiled(K, J, q, width, ZtX.shape[3], s.shape[0],
                        *(a.ctypes.data_as(double_ptr) for a in arrays), out.ctypes.data_as(double_ptr))
        if code != 0:
            raise MemoryError("no memory for the group-effect draws")

    return draw


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _draw_one_level(ZtZ, ZtX, Zty, s, beta, L, noise, out):  # pragma: no cover - compiled
    """The draws of :func:`draw_group_effects` for a single level, one group at a time:
    u = L C^{-T} (C^{-1} L' b + z) with C C' = M = I + L' A L (module docstring).

    ``ZtZ`` (K, J, q, q), ``Zty`` (K, J, q), ``ZtX`` (K, J, q, P) per component k of R^{-1}; ``s`` (S, K),
    ``beta`` (S, P), ``L`` (S, q, q), ``noise`` (S, J, q) standard normals; writes ``out`` (S, J, q).
    """
    q = ZtZ.shape[2]
    A, M, C, b, t, v = (np.empty((q, q)), np.empty((q, q)), np.zeros((q, q)), np.empty(q), np.empty(q),
                        np.empty(q))
    for d in range(s.shape[0]):
        for j in range(ZtZ.shape[1]):
            _weighted_statistics(ZtZ, ZtX, Zty, j, s[d], beta[d], A, A[:, :0], b)
            _whiten(L[d], A, b, M, C, t, v)
            for a in range(q):
                v[a] += noise[d, j, a]
            _draw_from_whitened(C, L[d], v, t, out[d, j])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _draw_two_levels(Z0tZ, Z0tX, Z0ty, Z1tZ, Z1tX, Z1ty, parent, s, beta, L0, L1, noise0, noise1, out0,
                     out1):  # pragma: no cover - compiled
    """The draws of :func:`draw_group_effects` for a chain of two levels (module docstring): per posterior
    draw, level 0 integrated into its parents, level 1 drawn, then level 0 given its parent's draw:
    u_1 = L_1 C_1^{-T} (w_1 + z_1), u_0 = L_0 C_0^{-T} (w_0 - G L_1 C_1^{-T} (w_1 + z_1) + z_0).

    Statistics as in :class:`ChainStatistics` (``Z0tZ`` (K, J_0, q_0, q_0 + q_1)); ``noise0`` (S, J_0, q_0)
    and ``noise1`` (S, J_1, q_1) standard normals; writes ``out0``, ``out1``.
    """
    J0, q0, J1, q1 = Z0tZ.shape[1], Z0tZ.shape[2], Z1tZ.shape[1], Z1tZ.shape[2]
    C0, w0, G = np.zeros((J0, q0, q0)), np.empty((J0, q0)), np.empty((J0, q0, q1))
    K, k = np.empty((J1, q1, q1)), np.empty((J1, q1))
    z1 = np.empty((J1, q1))
    A, B, b, M, F = np.empty((q0, q0)), np.empty((q0, q1)), np.empty(q0), np.empty((q0, q0)), np.empty((q0, q1))
    A1, b1, M1, C1 = np.empty((q1, q1)), np.empty(q1), np.empty((q1, q1)), np.zeros((q1, q1))
    t, v, t1, v1 = np.empty(q0), np.empty(q0), np.empty(q1), np.empty(q1)
    for d in range(s.shape[0]):
        K[:] = 0.0
        k[:] = 0.0
        for j in range(J0):
            _weighted_statistics(Z0tZ, Z0tX, Z0ty, j, s[d], beta[d], A, B, b)
            _whiten(L0[d], A, b, M, C0[j], t, w0[j])
            for c in range(q1):  # G = C^{-1} L_0'B, then K += G'G, k += G'w
                for a in range(q0):
                    acc = 0.0
                    for e in range(a, q0):
                        acc += L0[d, e, a] * B[e, c]
                    F[a, c] = acc
                for a in range(q0):
                    acc = F[a, c]
                    for e in range(a):
                        acc -= C0[j, a, e] * G[j, e, c]
                    G[j, a, c] = acc / C0[j, a, a]
            g = int(parent[j])
            for a in range(q1):
                for c in range(q1):
                    acc = 0.0
                    for e in range(q0):
                        acc += G[j, e, a] * G[j, e, c]
                    K[g, a, c] += acc
                acc = 0.0
                for e in range(q0):
                    acc += G[j, e, a] * w0[j, e]
                k[g, a] += acc
        for g in range(J1):
            _weighted_statistics(Z1tZ, Z1tX, Z1ty, g, s[d], beta[d], A1, A1[:, :0], b1)
            for a in range(q1):
                b1[a] -= k[g, a]
                for c in range(q1):
                    A1[a, c] -= K[g, a, c]
            _whiten(L1[d], A1, b1, M1, C1, t1, v1)
            for a in range(q1):
                v1[a] += noise1[d, g, a]
            _draw_from_whitened(C1, L1[d], v1, z1[g], out1[d, g])
        for j in range(J0):
            g = int(parent[j])
            for a in range(q0):  # w - G L_1 z_1 + noise
                acc = w0[j, a] + noise0[d, j, a]
                for c in range(q1):
                    for e in range(c, q1):
                        acc -= G[j, a, e] * L1[d, e, c] * z1[g, c]
                v[a] = acc
            _draw_from_whitened(C0[j], L0[d], v, t, out0[d, j])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _weighted_statistics(ZtZ, ZtX, Zty, j, weights, beta, A, B, b):  # pragma: no cover - compiled
    """Group j's A = Σ_k s_k Z'Z (own columns), B (outer columns) and b = Σ_k s_k (Z'y - Z'X β)."""
    q, width = A.shape[0], ZtZ.shape[3]
    A[:] = 0.0
    B[:] = 0.0
    b[:] = 0.0
    for kk in range(ZtZ.shape[0]):
        weight = weights[kk]
        for r in range(q):
            residual = Zty[kk, j, r]
            for c in range(ZtX.shape[3]):
                residual -= ZtX[kk, j, r, c] * beta[c]
            b[r] += weight * residual
            for c in range(q):
                A[r, c] += weight * ZtZ[kk, j, r, c]
            for c in range(q, width):
                B[r, c - q] += weight * ZtZ[kk, j, r, c]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _whiten(L, A, b, M, C, t, w):  # pragma: no cover - compiled
    """C C' = M = I + L'A L and w = C^{-1} L'b (L lower triangular; ``t`` scratch)."""
    q = A.shape[0]
    for r in range(q):
        for c in range(q):
            total = 1.0 if r == c else 0.0
            for e in range(r, q):
                for f in range(c, q):
                    total += L[e, r] * A[e, f] * L[f, c]
            M[r, c] = total
        total = 0.0
        for e in range(r, q):
            total += L[e, r] * b[e]
        t[r] = total
    for c in range(q):
        diagonal = M[c, c]
        for e in range(c):
            diagonal -= C[c, e] * C[c, e]
        C[c, c] = math.sqrt(diagonal)
        for r in range(c + 1, q):
            total = M[r, c]
            for e in range(c):
                total -= C[r, e] * C[c, e]
            C[r, c] = total / C[c, c]
    for r in range(q):
        total = t[r]
        for e in range(r):
            total -= C[r, e] * w[e]
        w[r] = total / C[r, r]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _draw_from_whitened(C, L, v, z, u):  # pragma: no cover - compiled
    """z = C^{-T} v and u = L z."""
    q = len(v)
    for r in range(q - 1, -1, -1):
        total = v[r]
        for e in range(r + 1, q):
            total -= C[e, r] * z[e]
        z[r] = total / C[r, r]
    for r in range(q):
        total = 0.0
        for e in range(r + 1):
            total += L[r, e] * z[e]
        u[r] = total


def _parent_sums(values: np.ndarray, parent: np.ndarray, n_parents: int) -> np.ndarray:
    """Sum (S, J, ...) over the groups J of each parent, giving (S, J_parent, ...)."""
    onehot = sp.csr_matrix((np.ones(len(parent)), (parent, np.arange(len(parent)))), shape=(n_parents, len(parent)))
    moved = np.moveaxis(values, 1, 0).reshape(len(parent), -1)
    summed = (onehot @ moved).reshape(n_parents, values.shape[0], *values.shape[2:])
    return np.moveaxis(summed, 0, 1)
