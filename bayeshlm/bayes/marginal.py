"""Group effects integrated out: the marginal likelihood of a two-level Gaussian model from per-group
sufficient statistics, and exact draws of the group effects given the other parameters.

Model, for group j (n_j rows): y_j = X_j β + Z_j u_j + r_j, u_j ~ N(0, T), r_j ~ N(0, R_j) with
R_j = σ² I (or diag(V_j), known, in V-known models). Write T = L L' (L lower-triangular), R_j^{-1} = s W_j
(s = 1/σ², W = I; or s = 1, W = diag(1/V)), and, from the sufficient statistics of
:meth:`bayeshlm.design.Design.crossproducts`,

    A_j = s Z_j'W_j Z_j,   b_j = s (Z_j'W_j y_j - Z_j'W_j X_j β),   e'R^{-1}e = s (y'Wy - 2 β'X'Wy + β'X'WX β).

Then Σ_j = R_j + Z_j T Z_j' satisfies, with the q x q matrix M_j = I + L' A_j L = C_j C_j',

    log|Σ_j| = log|R_j| + log|M_j|                          (matrix determinant lemma)
    e_j'Σ_j^{-1}e_j = e_j'R_j^{-1}e_j - |C_j^{-1} L' b_j|²   (Woodbury identity)

so the log-likelihood, summed over groups, is
-½ [N log 2π + Σ log|R_j| + Σ_j 2 Σ_k log C_j[k,k] + e'R^{-1}e - Σ_j |C_j^{-1} L' b_j|²],
with log|R_j| = -n_j log s (+ Σ log V, a constant, for V-known models). Only q x q algebra per group:
this is the likelihood REML/ML maximise (R&B 2002, ch. 3 and 14; Bates et al. 2015, JSS 67(1), sec. 3),
written with L rather than T^{-1} so that a singular T (a zero variance) stays finite. The q x q Cholesky
factor and triangular solve are unrolled into elementwise operations over the J groups, which compile
quickly and vectorise.

Given (β, T, s), the group effects are independent Gaussians (R&B 2002, eq. 3.52 and 13.17):
u_j | y, β, T, σ² ~ N(m_j, S_j), S_j = (T^{-1} + A_j)^{-1} = L M_j^{-1} L', m_j = S_j b_j;
:func:`draw_group_effects` draws u_j = L (M_j^{-1} L' b_j + C_j^{-T} z), z ~ N(0, I), for every posterior draw.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt


def marginal_loglik(beta, s, L, stats: dict, q: int, has_sigma: bool):
    """Marginal log-likelihood (PyTensor) of β, s = 1/σ² and the Cholesky factor L of T (see module docstring).

    ``stats`` holds tensors ZtZ (J,q,q), ZtX (J,q,p), Zty (J,q), XtX (p,p), Xty (p,), yty and n_obs
    (scalars) and, for V-known models, logdetV = Σ log V.
    """
    ZtZ, ZtX, Zty = stats["ZtZ"], stats["ZtX"], stats["Zty"]
    A = [[s * ZtZ[:, a, b] for b in range(q)] for a in range(q)]
    b = [s * (Zty[:, a] - pt.dot(ZtX[:, a, :], beta)) for a in range(q)]
    # AL = A L, then M = I + L' (A L); L is lower-triangular, so L[d, k] = 0 for d < k.
    AL = [[sum(A[c][d] * L[d, k] for d in range(k, q)) for k in range(q)] for c in range(q)]
    M = [[sum(L[c, a] * AL[c][k] for c in range(a, q)) + (1.0 if a == k else 0.0) for k in range(q)]
         for a in range(q)]
    C = _cholesky_unrolled(M, q)
    Ltb = [sum(L[d, a] * b[d] for d in range(a, q)) for a in range(q)]
    w = _forward_solve_unrolled(C, Ltb, q)
    logdet_M = 2.0 * sum(pt.sum(pt.log(C[k][k])) for k in range(q))
    quad_reduction = sum(pt.sum(w_k**2) for w_k in w)
    ee = s * (stats["yty"] - 2.0 * pt.dot(stats["Xty"], beta) + pt.dot(beta, pt.dot(stats["XtX"], beta)))
    n_obs = stats["n_obs"]
    logdet_R = -n_obs * pt.log(s) if has_sigma else stats["logdetV"]
    return -0.5 * (n_obs * np.log(2 * np.pi) + logdet_R + logdet_M + ee - quad_reduction)


def _cholesky_unrolled(M, q):
    """Lower Cholesky factor of a batch of q x q SPD matrices given as nested lists of (J,) tensors."""
    C = [[None] * q for _ in range(q)]
    for j in range(q):
        C[j][j] = pt.sqrt(M[j][j] - sum(C[j][k] ** 2 for k in range(j)))
        for i in range(j + 1, q):
            C[i][j] = (M[i][j] - sum(C[i][k] * C[j][k] for k in range(j))) / C[j][j]
    return C


def _forward_solve_unrolled(C, rhs, q):
    """Solve C w = rhs for lower-triangular C, batched like :func:`_cholesky_unrolled`."""
    w = []
    for i in range(q):
        w.append((rhs[i] - sum(C[i][k] * w[k] for k in range(i))) / C[i][i])
    return w


def draw_group_effects(stats: dict, beta: np.ndarray, s: np.ndarray, L: np.ndarray,
                       rng: np.random.Generator, chunk: int = 250) -> np.ndarray:
    """Exact draws of u_j | y, β, T, σ² for every posterior draw (module docstring), shape (S, J, q).

    ``beta`` (S, p), ``s`` (S,) (1/σ², or ones for V-known), ``L`` (S, q, q): flattened posterior draws.
    Vectorised over draws (in chunks of ``chunk`` to bound memory) and groups.
    """
    ZtZ, ZtX, Zty = stats["ZtZ"], stats["ZtX"], stats["Zty"]
    n_draws, (J, q) = beta.shape[0], Zty.shape
    out = np.empty((n_draws, J, q))
    eye = np.eye(q)
    for start in range(0, n_draws, chunk):
        sl = slice(start, min(start + chunk, n_draws))
        Ls, ss = L[sl], s[sl][:, None, None]
        Lt = np.swapaxes(Ls, -1, -2)[:, None]  # (S, 1, q, q)
        A = ss[:, :, :, None] * ZtZ[None]  # (S, J, q, q)
        M = eye + Lt @ A @ Ls[:, None]
        C = np.linalg.cholesky(M)
        b = ss * (Zty[None] - np.einsum("jqp,sp->sjq", ZtX, beta[sl]))  # (S, J, q)
        Ltb = (Lt @ b[..., None])[..., 0]
        mean_part = np.linalg.solve(M, Ltb[..., None])[..., 0]
        z = rng.standard_normal(Ltb.shape)
        noise = np.linalg.solve(np.swapaxes(C, -1, -2), z[..., None])[..., 0]
        out[sl] = (Ls[:, None] @ (mean_part + noise)[..., None])[..., 0]
    return out
