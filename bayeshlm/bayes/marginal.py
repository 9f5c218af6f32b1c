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
For one or two levels the draws are loops over groups, compiled: by Numba in :mod:`.marginal_numba`, and the
one-level loop also ahead of time in the kernel extension (:func:`_one_level_draws`), so a two-level fit on the
extension does not import Numba (0.15-0.2 CPU s).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

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
        if top == 1:  # Numba's loop (the extension compiles the one-level loop only)
            from .marginal_numba import _draw_two_levels
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
    """:func:`.marginal_numba._draw_one_level` as compiled ahead of time in the kernel extension
    (``_two_level_kernel.c``: the same loop in the same order of operations, so the same draws, without a Numba
    compile or import on a first fit), or the Numba function when the extension is not installed."""
    try:
        from ._two_level_kernel import group_draws
    except ImportError:
        from .marginal_numba import _draw_one_level

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


def _parent_sums(values: np.ndarray, parent: np.ndarray, n_parents: int) -> np.ndarray:
    """Sum (S, J, ...) over the groups J of each parent, giving (S, J_parent, ...)."""
    onehot = sp.csr_matrix((np.ones(len(parent)), (parent, np.arange(len(parent)))), shape=(n_parents, len(parent)))
    moved = np.moveaxis(values, 1, 0).reshape(len(parent), -1)
    summed = (onehot @ moved).reshape(n_parents, values.shape[0], *values.shape[2:])
    return np.moveaxis(summed, 0, 1)
