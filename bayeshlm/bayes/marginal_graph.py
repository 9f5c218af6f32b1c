"""The marginal log-likelihood of a nested Gaussian model (:mod:`.marginal`'s module docstring) as a PyTensor
graph, for the PyMC model of :mod:`.build`. The q x q algebra is unrolled into elementwise operations over the
groups of each level, which compile quickly and vectorise."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt


def marginal_loglik(beta, weights, logdet_R, chols: list, stats: dict, sizes: tuple[int, ...], parents: list,
                    n_groups: tuple[int, ...]):
    """Marginal log-likelihood (PyTensor) of β and the Cholesky factors L_l of T_l (module docstring), given
    R^{-1} = Σ_k weights[k] W_k over the components of :class:`~.marginal.ChainStatistics` and log|R|.

    ``stats`` holds the tensors of :class:`~.marginal.ChainStatistics`; ``parents[l]`` (int tensors) maps level-l groups
    to level l + 1, which has ``n_groups[l + 1]`` groups.
    """
    def weigh(per_component):  # Σ_k weights_k x_k over the leading component axis
        return pt.tensordot(weights, per_component, axes=[[0], [0]])

    logdet, reduction = 0.0, 0.0
    K, k = {}, {}  # corrections left by the level below, keyed by column of the chain (0 .. Σ q_l - 1)
    offset = 0
    for level, (q, L) in enumerate(zip(sizes, chols)):
        ZtZ, ZtX, Zty = (stats[f"Z{level}t{v}"] for v in "ZXy")
        residual = weigh(Zty - pt.dot(ZtX, beta))  # (J, q): s Z'W (y - X β)
        own, outer = range(offset, offset + q), range(offset + q, sum(sizes))
        Q = {(a, c): weigh(ZtZ[:, :, a - offset, c - offset]) - K.get((a, c), 0.0)
             for a in own for c in range(a, sum(sizes))}
        b = [residual[:, a - offset] - k.get(a, 0.0) for a in own]
        level_logdet, level_reduction, GG, Gw = _integrate_level(Q, b, L, own, outer)
        logdet, reduction = logdet + level_logdet, reduction + level_reduction
        if outer:
            K = {key: K.get(key, 0.0) + value for key, value in GG.items()}
            k = {c: k.get(c, 0.0) + value for c, value in Gw.items()}
            K, k = _sum_into_parents(K, k, parents[level], n_groups[level + 1])
        offset += q
    ee = weigh(stats["yty"] - 2.0 * pt.dot(stats["Xty"], beta) + pt.dot(pt.dot(stats["XtX"], beta), beta))
    return -0.5 * (stats["n_obs"] * np.log(2 * np.pi) + logdet_R + logdet + ee - reduction)


def _integrate_level(Q: dict, b: list, L, own: range, outer: range):
    """Integrate one level's effects out of every group (module docstring). ``Q[(a, c)]`` holds [A, B] for a
    in ``own``, c >= a; ``b`` the own rows of the residual cross-product. Returns the level's Σ_g log|M_g|
    and Σ_g |w_g|², and per group G'G (keys (c, d), c <= d in ``outer``) and G'w (keys c in ``outer``)."""
    q = len(own)
    A = [[Q[(a, c)] if a <= c else Q[(c, a)] for c in own] for a in own]
    C = cholesky_unrolled(_inner_product_plus_identity(L, A, q), q)

    def whiten(column):  # C^{-1} L' column, for a column given as q (J,) tensors
        return forward_solve_unrolled(C, [sum(L[d, a] * column[d] for d in range(a, q)) for a in range(q)], q)

    G = {c: whiten([Q[(a, c)] for a in own]) for c in outer}
    w = whiten(b)
    logdet = 2.0 * sum(pt.sum(pt.log(C[i][i])) for i in range(q))
    reduction = sum(pt.sum(w_i**2) for w_i in w)
    GG = {(c, d): sum(G[c][i] * G[d][i] for i in range(q)) for c in outer for d in outer if c <= d}
    Gw = {c: sum(G[c][i] * w[i] for i in range(q)) for c in outer}
    return logdet, reduction, GG, Gw


def _inner_product_plus_identity(L, A, q):
    """I + L' A L for lower-triangular L (L[d, k] = 0 for d < k), A a q x q nested list of (J,) tensors."""
    AL = [[sum(A[c][d] * L[d, k] for d in range(k, q)) for k in range(q)] for c in range(q)]
    return [[sum(L[c, a] * AL[c][k] for c in range(a, q)) + (1.0 if a == k else 0.0) for k in range(q)]
            for a in range(q)]


def _sum_into_parents(Q: dict, E: dict, parent, n_parents):
    """Sum each per-group entry of Q and E over the groups of each parent (one scatter-add for all entries)."""
    keys_Q, keys_E = list(Q), list(E)
    stacked = pt.stack([Q[k] for k in keys_Q] + [E[k] for k in keys_E], axis=1)
    summed = pt.inc_subtensor(pt.zeros((n_parents, stacked.shape[1]))[parent], stacked)
    columns = iter(range(len(keys_Q) + len(keys_E)))
    return ({k: summed[:, next(columns)] for k in keys_Q}, {k: summed[:, next(columns)] for k in keys_E})


def cholesky_unrolled(M, q):
    """Lower Cholesky factor of a batch of q x q SPD matrices given as nested lists of (J,) tensors."""
    C = [[None] * q for _ in range(q)]
    for j in range(q):
        C[j][j] = pt.sqrt(M[j][j] - sum(C[j][k] ** 2 for k in range(j)))
        for i in range(j + 1, q):
            C[i][j] = (M[i][j] - sum(C[i][k] * C[j][k] for k in range(j))) / C[j][j]
    return C


def forward_solve_unrolled(C, rhs, q):
    """Solve C w = rhs for lower-triangular C, batched like :func:`cholesky_unrolled`."""
    w = []
    for i in range(q):
        w.append((rhs[i] - sum(C[i][k] * w[k] for k in range(i))) / C[i][i])
    return w
