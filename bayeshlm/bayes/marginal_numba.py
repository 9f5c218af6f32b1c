"""The Numba loops of :mod:`.marginal`: exact draws of the group effects of one level, or of a chain of two
nested levels, given (β, T, σ²), one group at a time (the formulas are in :mod:`.marginal`'s docstring). The
one-level loop is also compiled ahead of time in the kernel extension (``_two_level_kernel.c``'s
``group_draws``, the same operations in the same order: :func:`.marginal._one_level_draws`), so a two-level fit
on the extension does not import this module, nor Numba (0.15-0.2 CPU s); a fit without the extension, or a
three-level fit, imports it on first use."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _draw_one_level(ZtZ, ZtX, Zty, s, beta, L, noise, out):  # pragma: no cover - compiled
    """The draws of :func:`.marginal.draw_group_effects` for a single level, one group at a time:
    u = L C^{-T} (C^{-1} L' b + z) with C C' = M = I + L' A L (:mod:`.marginal`).

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
    """The draws of :func:`.marginal.draw_group_effects` for a chain of two levels (:mod:`.marginal`): per posterior
    draw, level 0 integrated into its parents, level 1 drawn, then level 0 given its parent's draw:
    u_1 = L_1 C_1^{-T} (w_1 + z_1), u_0 = L_0 C_0^{-T} (w_0 - G L_1 C_1^{-T} (w_1 + z_1) + z_0).

    Statistics as in :class:`.marginal.ChainStatistics` (``Z0tZ`` (K, J_0, q_0, q_0 + q_1)); ``noise0`` (S, J_0, q_0)
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
