"""The Numba twin of the Gaussian kernel of :mod:`.kernel`: the log density and gradient of two- and three-level
models with their group effects integrated out (crossed factors sampled; a σ² per stratum or AR(1) errors in
two-level models), and the reported-values callback, compiled by Numba with an on-disk cache (``cache=True``). The
model, the formulas and the packed buffer layout are documented in :mod:`.kernel`; the draws are named there
(:func:`.kernel.constrained_draws`). The two-level model with one σ² or known variances is also compiled ahead of
time (``_two_level_kernel.c``, the same operations in the same order as ``logp_two_level`` here): a fit of it on
that extension does not need this module, which is kept apart so that such a fit does not import Numba (0.15-0.2
CPU s); :func:`.kernel.numba_callbacks` imports it on first call."""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from .kernel import (
    _AR1,
    _ARRAYS_AT,
    _BETA_MU,
    _BETA_SD,
    _CENTRE,
    _HAS_SIGMA,
    _HEADER,
    _L_CORRELATED,
    _L_ETA,
    _L_J,
    _L_Q,
    _LENGTH,
    _LEVEL_FIELDS,
    _LEVELS_AT,
    _LOGDET_V,
    _N_COMPONENTS,
    _N_DIM,
    _N_LEVEL1,
    _N_OBS,
    _N_PAIRS,
    _N_SAMPLED,
    _P,
    _P_EXT,
    _PARENT,
    _ROWS,
    _S_CENTRED,
    _S_CORRELATED,
    _S_ETA,
    _S_J,
    _S_Q,
    _SAMPLED,
    _SAMPLED_AT,
    _SCALE_A,
    _SCALE_B,
    _SCALE_CODE_AT,
    _SCALE_ON_VARIANCE,
    _XTX,
    _XTY,
    _YTY,
    _Z0TZ1,
    _ZTZ0,
)

# --- buffer accessors -----------------------------------------------------------------------------------------
_LOG_2PI = math.log(2.0 * math.pi)
# How the functions below are compiled (measured with empty caches, 2 cores: the two-level callback took 15 s of
# CPU to compile before these choices, 9.4 s after). Numba compiles each function on its own and then again,
# linked, into every caller, so a deep call tree compiles its leaves many times over: the orchestrating functions
# and the accessors are inlined into their callers (``_inlined``; compiled on their own, the accessors would also
# be compiled once per constant argument), the block operations are compiled once each (``_compiled``). Only the
# C callbacks are cached on disk: a cached callback holds all the code it calls and loads without it.
_compiled = numba.njit(nogil=True, error_model="numpy")
_inlined = numba.njit(nogil=True, error_model="numpy", inline="always")


@_inlined
def _level_field(buf, level, field):
    """Field ``field`` (one of _LEVEL_FIELDS) of integrated level ``level``."""
    return buf[_LEVELS_AT + level * len(_LEVEL_FIELDS) + field]


@_inlined
def _array(buf, k):
    """Array ``k`` of _ARRAYS, flat."""
    return buf[int(buf[_ARRAYS_AT + k]):int(buf[_ARRAYS_AT + k + 1])]


@_inlined
def _level_stats(buf, level, k):
    """Z'Z (q, q, J), Z'X (q, p_ext, J) and Z'y (q, J) of integrated level ``level``, component ``k``."""
    q, J, p_ext = int(_level_field(buf, level, _L_Q)), int(_level_field(buf, level, _L_J)), int(buf[_P_EXT])
    first = _ZTZ0 + 3 * level
    return (_component(_array(buf, first), k, q * q * J).reshape((q, q, J)),
            _component(_array(buf, first + 1), k, q * p_ext * J).reshape((q, p_ext, J)),
            _component(_array(buf, first + 2), k, q * J).reshape((q, J)))


@_inlined
def _weighted_level_stats(buf, level, w):
    """Σ_k w_k (Z'Z, Z'X, Z'y)_k of integrated level ``level`` (see :func:`_level_stats`)."""
    q, J, p_ext = int(_level_field(buf, level, _L_Q)), int(_level_field(buf, level, _L_J)), int(buf[_P_EXT])
    first = _ZTZ0 + 3 * level
    return (_weighted_sum(_array(buf, first), w).reshape((q, q, J)),
            _weighted_sum(_array(buf, first + 1), w).reshape((q, p_ext, J)),
            _weighted_sum(_array(buf, first + 2), w).reshape((q, J)))


@_inlined
def _whole_sample(buf, k):
    """X'X, X'y and y'y of component ``k``."""
    p_ext = int(buf[_P_EXT])
    return (_component(_array(buf, _XTX), k, p_ext * p_ext).reshape((p_ext, p_ext)),
            _component(_array(buf, _XTY), k, p_ext), _array(buf, _YTY)[k])


@_inlined
def _weighted_whole_sample(buf, w):
    """Σ_k w_k (X'X, X'y, y'y)_k."""
    p_ext = int(buf[_P_EXT])
    return (_weighted_sum(_array(buf, _XTX), w).reshape((p_ext, p_ext)), _weighted_sum(_array(buf, _XTY), w),
            _weighted_sum(_array(buf, _YTY), w)[0])


@_inlined
def _component(values, k, size):
    return values[k * size:(k + 1) * size]


@_compiled
def _weighted_sum(values, w):
    """Σ_k w_k values_k over equal consecutive parts of ``values``, one per component."""
    size = len(values) // len(w)
    out = np.zeros(size)
    for k in range(len(w)):
        for i in range(size):
            out[i] += w[k] * values[k * size + i]
    return out


@_compiled
def _scale_log_prior(code, a, b, on_variance, theta):
    """Log prior (with its normalising constant) and Jacobian of a scale x = exp(θ), as a function of θ, and
    its derivative. With ``on_variance`` the density is that of x² (a prior on the variance)."""
    x = math.exp(theta)
    if on_variance:
        t, dt, logjac, dlogjac = x * x, 2.0 * x * x, math.log(2.0) + 2.0 * theta, 2.0
    else:
        t, dt, logjac, dlogjac = x, x, theta, 1.0
    if code == 0:  # HalfFlat
        lp, dlp = 0.0, 0.0
    elif code == 1:  # HalfNormal(sigma=a)
        lp = 0.5 * math.log(2.0 / math.pi) - math.log(a) - 0.5 * (t / a) ** 2
        dlp = -t / (a * a)
    elif code == 2:  # HalfStudentT(nu=a, sigma=b)
        r = t * t / (a * b * b)
        lp = (math.log(2.0) + math.lgamma((a + 1.0) / 2.0) - math.lgamma(a / 2.0)
              - 0.5 * math.log(a * math.pi * b * b) - (a + 1.0) / 2.0 * math.log1p(r))
        dlp = -(a + 1.0) * t / (a * b * b * (1.0 + r))
    elif code == 3:  # HalfCauchy(beta=a)
        lp = math.log(2.0 / (math.pi * a)) - math.log1p((t / a) ** 2)
        dlp = -2.0 * t / (a * a + t * t)
    else:  # Exponential(lam=a)
        lp = math.log(a) - a * t
        dlp = -a
    return lp + logjac, dlp * dt + dlogjac


@_compiled
def _lkj_log_normaliser(eta, q):
    out = (q - 1) * math.lgamma(eta + 0.5 * (q - 1))
    for k in range(1, q):
        out -= 0.5 * k * math.log(math.pi) + math.lgamma(eta + 0.5 * (q - 1 - k))
    return out


@_compiled
def _correlation_factor(y, q):
    """L_Ω (q x q) and the intermediate values the reverse pass needs: z = tanh(y) and the remaining squared
    row norm 1 - Σ_{l<k} L_Ω[i,l]² before each entry."""
    L = np.zeros((q, q))
    z = np.zeros((q, q))
    rest = np.ones((q, q))
    L[0, 0] = 1.0
    pos = 0
    for i in range(1, q):
        acc = 0.0
        for k in range(i):
            z[i, k] = math.tanh(y[pos])
            pos += 1
            rest[i, k] = 1.0 - acc
            L[i, k] = z[i, k] * math.sqrt(rest[i, k])
            acc += L[i, k] ** 2
        rest[i, i] = 1.0 - acc
        L[i, i] = math.sqrt(rest[i, i])
    return L, z, rest


@_compiled
def _correlation_terms(y, q, eta, gL, grad_y):
    """LKJ(η) log density of L_Ω plus the log-Jacobian of y -> L_Ω; adds to ``grad_y`` the gradient of that
    plus Σ gL * L_Ω (``gL``: the gradient of the rest of the density with respect to L_Ω)."""
    L, z, rest = _correlation_factor(y, q)
    lp = _lkj_log_normaliser(eta, q)
    pos = q * (q - 1) // 2
    for i in range(q - 1, 0, -1):
        c = 2.0 * eta - 2.0 + q - (i + 1)
        lp += c * math.log(L[i, i])
        for k in range(i):
            lp += math.log(1.0 - z[i, k] ** 2) + 0.5 * math.log(rest[i, k])
        # reverse pass along row i: rest_{k+1} = rest_k - L[i,k]², L[i,k] = z sqrt(rest_k), L[i,i] = sqrt(rest_i)
        bar_rest = (gL[i, i] + c / L[i, i]) * (0.5 / L[i, i])
        pos -= i
        for k in range(i - 1, -1, -1):
            root = math.sqrt(rest[i, k])
            bar_L = gL[i, k] - 2.0 * L[i, k] * bar_rest
            bar_z = bar_L * root - 2.0 * z[i, k] / (1.0 - z[i, k] ** 2)
            bar_rest = bar_rest + bar_L * z[i, k] * 0.5 / root + 0.5 / rest[i, k]
            grad_y[pos + k] += bar_z * (1.0 - z[i, k] ** 2)
    return lp


@_compiled
def _sum_of_logs(values):
    """Σ log values[j] with one logarithm per run of factors whose product stays in range; NaN if any value is
    not positive."""
    total = 0.0
    product = 1.0
    for x in values:
        if not x > 0.0:
            return np.nan
        product *= x
        if product > 1e200 or product < 1e-200:
            total += math.log(product)
            product = 1.0
    return total + math.log(product)


@_compiled
def _cholesky_batch(M, C, inv, pivots):
    """C C' = M for a batch of q x q matrices stored groups last (q, q, J); inv = 1 / diag(C) (q, J);
    multiplies ``pivots`` (J) by each |M|."""
    q, J = M.shape[0], M.shape[2]
    for c in range(q):
        for j in range(J):
            acc = M[c, c, j]
            for k in range(c):
                acc -= C[c, k, j] ** 2
            pivots[j] *= acc
            C[c, c, j] = math.sqrt(acc)
            inv[c, j] = 1.0 / C[c, c, j]
        for r in range(c + 1, q):
            for j in range(J):
                acc = M[r, c, j]
                for k in range(c):
                    acc -= C[r, k, j] * C[c, k, j]
                C[r, c, j] = acc * inv[c, j]


@_compiled
def _forward_batch(C, inv, rhs, out):
    """out = C^{-1} rhs per group (rhs, out: (q, J))."""
    q, J = rhs.shape
    for a in range(q):
        for j in range(J):
            acc = rhs[a, j]
            for k in range(a):
                acc -= C[a, k, j] * out[k, j]
            out[a, j] = acc * inv[a, j]


@_compiled
def _backward_batch(C, inv, rhs, out):
    """out = C^{-T} rhs per group (rhs, out: (q, J))."""
    q, J = rhs.shape
    for a in range(q - 1, -1, -1):
        for j in range(J):
            acc = rhs[a, j]
            for k in range(a + 1, q):
                acc -= C[k, a, j] * out[k, j]
            out[a, j] = acc * inv[a, j]


@_compiled
def _inverse_batch(C, inv, out):
    """out = (C C')^{-1} per group (q, q, J)."""
    q, J = inv.shape
    unit, column = np.empty((q, J)), np.empty((q, J))
    for c in range(q):
        unit[:] = 0.0
        unit[c] = 1.0
        _forward_batch(C, inv, unit, column)
        _backward_batch(C, inv, column, unit)
        for a in range(q):
            for j in range(J):
                out[a, c, j] = unit[a, j]


# --- block operations on a batch of groups (arrays groups last, groups looped innermost: the q x q algebra
# vectorises for any q) ------------------------------------------------------------------------------------------
@_compiled
def _rhs(c, s, ZtX, Zty):
    """b = s (Z'y - Z'X c) per group (q, J)."""
    q, p, J = ZtX.shape
    b = np.empty((q, J))
    for a in range(q):
        for j in range(J):
            b[a, j] = Zty[a, j]
        for k in range(p):
            for j in range(J):
                b[a, j] -= ZtX[a, k, j] * c[k]
        for j in range(J):
            b[a, j] *= s
    return b


@_compiled
def _scaled_times_lower(s, ZtZ, L):
    """s Z'Z L per group, (q, r, J), for Z'Z (q, r, J) and a lower-triangular L (r, r)."""
    q, r, J = ZtZ.shape
    out = np.zeros((q, r, J))
    for a in range(q):
        for k in range(r):
            for d in range(k, r):
                for j in range(J):
                    out[a, k, j] += s * ZtZ[a, d, j] * L[d, k]
    return out


@_compiled
def _lower_transpose_times(L, v):
    """L'v per group, (q, J)."""
    q, J = v.shape
    out = np.zeros((q, J))
    for a in range(q):
        for d in range(a, q):
            for j in range(J):
                out[a, j] += L[d, a] * v[d, j]
    return out


@_inlined
def _sum_of_squares(v):
    total = 0.0
    for a in range(v.shape[0]):
        for j in range(v.shape[1]):
            total += v[a, j] ** 2
    return total


@_inlined
def _integrate_level(L, AL, t):
    """Integrates one level's whitened effects out: M = I + L'AL = C C', w = C^{-1} t per group. Returns C,
    1 / diag(C), w and Σ_groups log|M| (not finite when some M is not positive definite)."""
    q, J = t.shape
    M = np.zeros((q, q, J))
    for a in range(q):
        for j in range(J):
            M[a, a, j] = 1.0
        for k in range(q):
            for d in range(a, q):
                for j in range(J):
                    M[a, k, j] += L[d, a] * AL[d, k, j]
    C, inv, pivots, w = np.zeros((q, q, J)), np.empty((q, J)), np.ones(J), np.empty((q, J))
    _cholesky_batch(M, C, inv, pivots)
    _forward_batch(C, inv, t, w)
    return C, inv, w, _sum_of_logs(pivots)


@_inlined
def _integrate_top(c, s, L, ZtZ, ZtX, Zty, K, k, grad_c, G):
    """Integrates out the outermost level of the chain (the only one in two-level models), given what its
    children pass up (K, k; zero without children): A = s Z'Z - K, t = L'(b - k), b = s (Z'y - Z'X c).
    Adds -s Σ Z'X m (m = L ẑ) to ``grad_c`` and b ẑ' - s Z'Z L (ẑ ẑ' + Σ) to ``G`` (∂/∂L, lower triangle).
    Returns log|M|, Σ |w|², the σ terms m'(s Z'Z m - 2 b) + tr(s Z'Z L Σ L'), and the whitened effects'
    posterior means ẑ = C^{-T} w and covariances Σ = M^{-1}."""
    b = _rhs(c, s, ZtX, Zty)
    raw = _scaled_times_lower(s, ZtZ, L)
    q, J = b.shape
    corrected, rest = raw.copy(), np.empty((q, J))
    for a in range(q):
        for j in range(J):
            rest[a, j] = b[a, j] - k[a, j]
        for e in range(q):
            for d in range(e, q):
                for j in range(J):
                    corrected[a, e, j] -= K[a, d, j] * L[d, e]
    C, inv, w, logdet = _integrate_level(L, corrected, _lower_transpose_times(L, rest))
    z, S = np.empty((q, J)), np.empty((q, q, J))
    _backward_batch(C, inv, w, z)
    _inverse_batch(C, inv, S)
    sigma_terms = _top_gradient(s, L, ZtX, b, raw, z, S, grad_c, G)
    return logdet, _sum_of_squares(w), sigma_terms, z, S


@_compiled
def _top_gradient(s, L, ZtX, b, AL, z, S, grad_c, G):
    """The gradient terms of :func:`_integrate_top` (AL = s Z'Z L); returns the σ terms."""
    q, p, J = ZtX.shape
    m = np.zeros((q, J))  # m = L ẑ, the posterior means of the effects
    for a in range(q):
        for d in range(a + 1):
            for j in range(J):
                m[a, j] += L[a, d] * z[d, j]
    for e in range(p):
        acc = 0.0
        for a in range(q):
            for j in range(J):
                acc += ZtX[a, e, j] * m[a, j]
        grad_c[e] -= s * acc
    for a in range(q):
        for e in range(a + 1):
            acc = 0.0
            for j in range(J):
                acc += b[a, j] * z[e, j]
                for d in range(q):
                    acc -= AL[a, d, j] * (z[d, j] * z[e, j] + S[d, e, j])
            G[a, e] += acc
    return _sigma_terms(L, AL, b, z, S, m)


@_compiled
def _sigma_terms(L, AL, b, z, S, m):
    """m'(A m) - 2 m'b + tr(A L Σ L') for A L = ``AL``, m = L ẑ: E|r|² - e'e over one level's rows, weighted
    as A and b are (the σ terms of the gradient, module docstring)."""
    q, J = b.shape
    total = 0.0
    for a in range(q):
        for j in range(J):
            Az = 0.0
            for d in range(q):
                Az += AL[a, d, j] * z[d, j]
            total += m[a, j] * (Az - 2.0 * b[a, j])
        for e in range(q):
            for d in range(a + 1):
                for j in range(J):
                    total += AL[a, e, j] * L[a, d] * S[d, e, j]
    return total


@_compiled
def _integrate_child(c, s, L0, L1, ZtZ0, ZtX0, Zty0, Z0tZ1):
    """Integrates out the level-0 effects given the level-1 ones (three-level models): b_0, A_0 L_0, B L_1 with
    B = s Z_0'Z_1, the Cholesky factor C of M_0 and 1 / diag(C), w_0, G = C^{-1} L_0'B (q1, q0, J0: one
    (q0, J0) slice per level-1 coefficient) and Σ log|M_0|."""
    b0 = _rhs(c, s, ZtX0, Zty0)
    AL0 = _scaled_times_lower(s, ZtZ0, L0)
    BL1 = _scaled_times_lower(s, Z0tZ1, L1)
    C0, inv0, w0, logdet = _integrate_level(L0, AL0, _lower_transpose_times(L0, b0))
    q0, q1, J0 = Z0tZ1.shape
    F, G = np.zeros((q1, q0, J0)), np.empty((q1, q0, J0))
    for e in range(q1):
        for a in range(q0):
            for d in range(a, q0):
                for j in range(J0):
                    F[e, a, j] += s * L0[d, a] * Z0tZ1[d, e, j]
        _forward_batch(C0, inv0, F[e], G[e])
    return b0, AL0, BL1, C0, inv0, w0, G, logdet


@_compiled
def _pass_to_parent(G, w0, parent, J1):
    """What the level-0 groups pass to their level-1 group: K = Σ G'G and k = Σ G'w_0."""
    q1, q0, J0 = G.shape
    K, k = np.zeros((q1, q1, J1)), np.zeros((q1, J1))
    for j in range(J0):
        g = int(parent[j])
        for a in range(q1):
            for e in range(q0):
                k[a, g] += G[a, e, j] * w0[e, j]
                for d in range(q1):
                    K[a, d, g] += G[a, e, j] * G[d, e, j]
    return K, k


@_compiled
def _child_moments(C0, inv0, w0, G, L1, parent, z1, S1):
    """Posterior means and covariances of the level-0 whitened effects averaged over level 1 (module
    docstring): ẑ_0 = C^{-T} w_0 - H ẑ_1, Σ_00 = M_0^{-1} + H Σ_1 H', Σ_01 = -H Σ_1 with H = C^{-T} G L_1,
    and the parent's ẑ_1 gathered per level-0 group."""
    q1, q0, J0 = G.shape
    zp, Sp = np.empty((q1, J0)), np.empty((q1, q1, J0))
    for j in range(J0):
        g = int(parent[j])
        for a in range(q1):
            zp[a, j] = z1[a, g]
            for e in range(q1):
                Sp[a, e, j] = S1[a, e, g]
    z0, GL, H = np.empty((q0, J0)), np.empty((q0, J0)), np.empty((q1, q0, J0))
    S00, S01 = np.empty((q0, q0, J0)), np.zeros((q0, q1, J0))
    _backward_batch(C0, inv0, w0, z0)
    for e in range(q1):
        GL[:] = 0.0
        for a in range(q0):
            for d in range(e, q1):
                for j in range(J0):
                    GL[a, j] += G[d, a, j] * L1[d, e]
        _backward_batch(C0, inv0, GL, H[e])
    _inverse_batch(C0, inv0, S00)
    for a in range(q0):
        for e in range(q1):
            for d in range(q1):
                for j in range(J0):
                    S01[a, e, j] -= H[d, a, j] * Sp[d, e, j]
            for j in range(J0):
                z0[a, j] -= H[e, a, j] * zp[e, j]
    for a in range(q0):
        for e in range(q0):
            for d in range(q1):
                for j in range(J0):
                    S00[a, e, j] -= S01[a, d, j] * H[d, e, j]
    return z0, S00, S01, zp


@_compiled
def _child_gradient(s, L0, ZtX0, b0, AL0, BL1, z0, zp, S00, S01, grad_c, G0):
    """The level-0 gradient terms of a three-level model: -s Σ Z_0'X m_0 into ``grad_c``, b ẑ' - A L (ẑ ẑ' +
    Σ_00) - B L_1 (ẑ_1 ẑ' + Σ_10) into ``G0``; returns the σ terms -2 m'b + m'A m + 2 m'B m_1 +
    tr(A L Σ_00 L') + 2 tr(B L_1 Σ_10 L')."""
    q0, p, J0 = ZtX0.shape
    q1 = zp.shape[0]
    m0 = np.zeros((q0, J0))
    for a in range(q0):
        for d in range(a + 1):
            for j in range(J0):
                m0[a, j] += L0[a, d] * z0[d, j]
    for e in range(p):
        acc = 0.0
        for a in range(q0):
            for j in range(J0):
                acc += ZtX0[a, e, j] * m0[a, j]
        grad_c[e] -= s * acc
    sigma_terms = 0.0
    for a in range(q0):
        for j in range(J0):
            total = -2.0 * b0[a, j]
            for d in range(q0):
                total += AL0[a, d, j] * z0[d, j]
            for d in range(q1):
                total += 2.0 * BL1[a, d, j] * zp[d, j]
            sigma_terms += m0[a, j] * total
        for d in range(a + 1):
            for j in range(J0):
                for e in range(q0):
                    sigma_terms += AL0[a, e, j] * L0[a, d] * S00[d, e, j]
                for e in range(q1):
                    sigma_terms += 2.0 * BL1[a, e, j] * L0[a, d] * S01[d, e, j]
    for a in range(q0):
        for e in range(a + 1):
            acc = 0.0
            for j in range(J0):
                acc += b0[a, j] * z0[e, j]
                for d in range(q0):
                    acc -= AL0[a, d, j] * (z0[d, j] * z0[e, j] + S00[d, e, j])
                for d in range(q1):
                    acc -= BL1[a, d, j] * (zp[d, j] * z0[e, j] + S01[e, d, j])
            G0[a, e] += acc
    return sigma_terms


@_compiled
def _parent_gradient_from_child(s, L0, Z0tZ1, z0, zp, S01, G1):
    """The level-0 part of ∂/∂L_1: -B'L_0 (ẑ_0 ẑ_1' + Σ_01), (B'L_0)[a, d] = s Σ_r Z_0'Z_1[r, a] L_0[r, d]."""
    q0, q1, J0 = Z0tZ1.shape
    for a in range(q1):
        for e in range(a + 1):
            acc = 0.0
            for d in range(q0):
                for r in range(d, q0):
                    for j in range(J0):
                        acc += s * Z0tZ1[r, a, j] * L0[r, d] * (z0[d, j] * zp[e, j] + S01[d, e, j])
            G1[a, e] -= acc


# --- structured level-1 errors: a variance per stratum, or AR(1) ---------------------------------------------------
@_compiled
def _level1_weights(x, buf, grad):
    """The weights w_k of R^{-1} = Σ_k w_k W_k, their derivatives ``dw`` (K, M) with respect to the M level-1
    coordinates θ (per stratum log σ_k; AR(1): log σ and y, φ = tanh(y/2)), log|R| and its derivatives, and
    the log density of φ's Uniform(-1, 1) prior with the transform's log-Jacobian log((1 - φ²)/2), whose
    gradient -φ it adds to ``grad``.

    Strata: w_k = 1/σ_k², log|R| = Σ_k N_k log σ_k². AR(1) (:func:`bayeshlm.level1.ar1_pairs`): w = [1, -φ, φ²] /
    ((1 - φ²) σ²), log|R| = N log σ² + n_pairs log(1 - φ²)."""
    K, p_ext = int(buf[_N_COMPONENTS]), int(buf[_P_EXT])
    if buf[_AR1] == 0:
        rows = _array(buf, _ROWS)
        w, dw, dlogdet = np.empty(K), np.zeros((K, K)), np.empty(K)
        logdet = 0.0
        for k in range(K):
            w[k] = math.exp(-2.0 * x[p_ext + k])
            dw[k, k] = -2.0 * w[k]
            logdet += 2.0 * rows[k] * x[p_ext + k]
            dlogdet[k] = 2.0 * rows[k]
        return w, dw, logdet, dlogdet, 0.0
    n_obs, n_pairs, y = buf[_N_OBS], buf[_N_PAIRS], x[int(buf[_N_DIM]) - 1]
    phi = math.tanh(0.5 * y)
    one_minus, sigma2 = 1.0 - phi * phi, math.exp(2.0 * x[p_ext])
    scale = one_minus * sigma2
    dphi = 0.5 * one_minus  # dφ/dy
    numerator, dnumerator = np.array([1.0, -phi, phi * phi]), np.array([0.0, -1.0, 2.0 * phi])
    w, dw = numerator / scale, np.empty((3, 2))
    for k in range(3):
        dw[k, 0] = -2.0 * w[k]
        dw[k, 1] = (dnumerator[k] * scale + numerator[k] * 2.0 * phi * sigma2) / scale**2 * dphi
    logdet = 2.0 * n_obs * x[p_ext] + n_pairs * math.log(one_minus)
    dlogdet = np.array([2.0 * n_obs, -2.0 * n_pairs * phi / one_minus * dphi])
    grad[int(buf[_N_DIM]) - 1] -= phi
    return w, dw, logdet, dlogdet, math.log(0.5) + math.log(0.5 * one_minus)


@_compiled
def _level1_gradient(c, buf, L, z, S, dw, dlogdet, grad):
    """∂/∂θ of the log likelihood for the level-1 coordinates θ: -1/2 ∂log|R|/∂θ - 1/2 Σ_k E[r'W_k r] ∂w_k/∂θ
    (Fisher's identity), E[r'W_k r] = e'W_k e + the σ terms of component k at the posterior moments ẑ, Σ of
    the integrated effects."""
    K, M = dw.shape
    expected = np.empty(K)
    for k in range(K):
        ZtZ, ZtX, Zty = _level_stats(buf, 0, k)
        ee = _residual_terms(c, *_whole_sample(buf, k), 1.0)[0]
        q, J = Zty.shape
        m = np.zeros((q, J))
        for a in range(q):
            for d in range(a + 1):
                for j in range(J):
                    m[a, j] += L[a, d] * z[d, j]
        expected[k] = ee + _sigma_terms(L, _scaled_times_lower(1.0, ZtZ, L), _rhs(c, 1.0, ZtX, Zty), z, S, m)
    for i in range(M):
        at = int(buf[_N_DIM]) - 1 if buf[_AR1] > 0 and i == 1 else int(buf[_P_EXT]) + i
        acc = -0.5 * dlogdet[i]
        for k in range(K):
            acc -= 0.5 * expected[k] * dw[k, i]
        grad[at] += acc


# --- one integrated chain: two levels (one factor) or three (a factor nested in another) ---------------------------
@_inlined
def _integrate_two_level(c, s, buf, L0, grad_c, G0):
    """log|M|, Σ |w|² and the σ terms of a two-level model; adds to ``grad_c`` and ∂/∂L_0 to ``G0``."""
    ZtZ, ZtX, Zty = _level_stats(buf, 0, 0)
    q, J = Zty.shape
    return _integrate_top(c, s, L0, ZtZ, ZtX, Zty, np.zeros((q, q, J)), np.zeros((q, J)), grad_c, G0)[:3]


@_inlined
def _integrate_three_level(c, s, buf, L0, L1, grad_c, G0, G1):
    """As :func:`_integrate_two_level` for two nested factors: level 0 integrated given level 1 and passed up,
    level 1 integrated, then level 0's posterior moments and gradient terms given level 1's."""
    ZtZ0, ZtX0, Zty0 = _level_stats(buf, 0, 0)
    ZtZ1, ZtX1, Zty1 = _level_stats(buf, 1, 0)
    q0, J0, q1, J1 = Zty0.shape[0], Zty0.shape[1], Zty1.shape[0], Zty1.shape[1]
    Z0tZ1, parent = _array(buf, _Z0TZ1).reshape((q0, q1, J0)), _array(buf, _PARENT)
    b0, AL0, BL1, C0, inv0, w0, G, logdet0 = _integrate_child(c, s, L0, L1, ZtZ0, ZtX0, Zty0, Z0tZ1)
    K, k = _pass_to_parent(G, w0, parent, J1)
    logdet1, reduction1, sigma1, z1, S1 = _integrate_top(c, s, L1, ZtZ1, ZtX1, Zty1, K, k, grad_c, G1)
    z0, S00, S01, zp = _child_moments(C0, inv0, w0, G, L1, parent, z1, S1)
    sigma0 = _child_gradient(s, L0, ZtX0, b0, AL0, BL1, z0, zp, S00, S01, grad_c, G0)
    _parent_gradient_from_child(s, L0, Z0tZ1, z0, zp, S01, G1)
    return logdet0 + logdet1, _sum_of_squares(w0) + reduction1, sigma0 + sigma1


# --- the log density: priors, the integrated likelihood, the sampled factors -----------------------------------
@_compiled
def _positions(buf, sampled):
    """Per factor (the two integrated levels, then the sampled factors; level 1 empty in two-level models):
    its number of coefficients, whether it has correlations, and where in x its effects (sampled factors only),
    its log τ's and its correlation coordinates start; ``y_at`` has one more entry, the end of the last."""
    k = sampled.shape[0]
    n = 2 + k
    q, correlated = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_)
    for level in range(2):
        q[level] = int(_level_field(buf, level, _L_Q))
        correlated[level] = _level_field(buf, level, _L_CORRELATED) > 0
    effects_at = np.zeros(n, dtype=np.int64)
    at = int(buf[_P])
    for i in range(k):
        q[2 + i], correlated[2 + i] = int(sampled[i, _S_Q]), sampled[i, _S_CORRELATED] > 0
        effects_at[2 + i] = at
        at += int(sampled[i, _S_J]) * q[2 + i]
    at += int(buf[_N_LEVEL1])  # at = p_ext here: the log σ's, then the log τ's
    tau_at, y_at = np.empty(n, dtype=np.int64), np.empty(n + 1, dtype=np.int64)
    for f in range(n):
        tau_at[f] = at
        at += q[f]
    for f in range(n):
        y_at[f] = at
        if correlated[f]:
            at += q[f] * (q[f] - 1) // 2
    y_at[n] = at
    return q, correlated, effects_at, tau_at, y_at


@_inlined
def _sampled_table(buf):
    """The table of sampled factors (a row of _SAMPLED each) and the fixed effect each sampled effect is centred
    on (or -1)."""
    return _array(buf, _SAMPLED_AT).reshape((int(buf[_N_SAMPLED]), len(_SAMPLED))), _array(buf, _CENTRE)


@_compiled
def _level_factor(log_tau, y, correlated):
    """τ, L_Ω and L = diag(τ) L_Ω of one level."""
    q = len(log_tau)
    tau = np.exp(log_tau)
    L_omega = _correlation_factor(y, q)[0] if correlated else np.eye(q)
    L = np.empty((q, q))
    for i in range(q):
        for k in range(q):
            L[i, k] = tau[i] * L_omega[i, k]
    return tau, L_omega, L


@_inlined
def _factor_at(x, f, positions):
    """τ, L_Ω, L and the correlation coordinates of factor ``f`` (see :func:`_positions`) at ``x``."""
    q, correlated, _, tau_at, y_at = positions
    y = x[y_at[f]:y_at[f + 1]]
    tau, L_omega, L = _level_factor(x[tau_at[f]:tau_at[f] + q[f]], y, correlated[f])
    return tau, L_omega, L, y


@_compiled
def _level_terms(G, tau, L_omega, y, correlated, eta, grad_log_tau, grad_y):
    """Chain rule from ∂/∂L (``G``, lower triangle) to log τ and y of one level, plus the LKJ density and the
    correlation transform's Jacobian (returned)."""
    q = len(tau)
    gL_omega = np.zeros((q, q))
    for i in range(q):
        acc = 0.0
        for k in range(i + 1):
            acc += G[i, k] * L_omega[i, k]
            gL_omega[i, k] = tau[i] * G[i, k]
        grad_log_tau[i] += tau[i] * acc
    if correlated:
        return _correlation_terms(y, q, eta, gL_omega, grad_y)
    return 0.0


@_compiled
def _residual_terms(c, XtX, Xty, yty, s):
    """e'e = |y - X c|² and the likelihood's ∂/∂c before the group terms, s (X'y - X'X c), for the coefficient
    vector c = [β, the sampled factors' effects] (from X'X, X'y, y'y of one component or weighted)."""
    p_ext = len(c)
    xb = np.empty(p_ext)  # X'y - X'X c
    ee = yty
    for k in range(p_ext):
        acc = 0.0
        for j in range(p_ext):
            acc += XtX[k, j] * c[j]
        xb[k] = Xty[k] - acc
        ee -= c[k] * (Xty[k] + xb[k])  # e'e = y'y - 2 c'X'y + c'X'X c
    return ee, s * xb


@_compiled
def _coefficients(x, sampled, centre, positions, p, p_ext):
    """c = [β, u_1, u_2, ...]: the sampled effects u_j = b_j - γ_c from their coordinates b_j (centred; γ_c the
    fixed effect ``centre`` names, or 0) or u_j = L z_j (non-centred), each factor's (J, q) effects flattened
    group by group, as the columns of the extended X."""
    c = np.empty(p_ext)
    for k in range(p):
        c[k] = x[k]
    q, effects_at = positions[0], positions[2]
    for i in range(sampled.shape[0]):
        f, J = 2 + i, int(sampled[i, _S_J])
        at, qf = effects_at[f], q[f]
        if sampled[i, _S_CENTRED] > 0:
            for m in range(at, at + J * qf):
                k = int(centre[m - p])
                c[m] = x[m] - x[k] if k >= 0 else x[m]
            continue
        L = _factor_at(x, f, positions)[2]
        for j in range(J):
            for a in range(qf):
                acc = 0.0
                for d in range(a + 1):
                    acc += L[a, d] * x[at + j * qf + d]
                c[at + j * qf + a] = acc
    return c


@_compiled
def _sampled_prior(x, c, sampled, centre, positions, grad_c, grad):
    """The log prior of every sampled factor's effects, with its gradient (:func:`_sampled_terms`)."""
    lp = 0.0
    for i in range(sampled.shape[0]):
        lp += _sampled_terms(x, c, sampled, centre, i, positions, grad_c, grad)
    return lp


@_compiled
def _sampled_terms(x, c, sampled, centre, i, positions, grad_c, grad):
    """Log prior of sampled factor ``i``'s effects, and its gradient plus the chain rule of the likelihood's
    ∂/∂c: centred, log N(u_j | 0, T) with ∂/∂b_j = ∂/∂c_j - T^{-1} u_j (u_j = b_j - γ_c, so ∂/∂γ_c gains
    -Σ_j ∂/∂b_j) and ∂/∂L = L^{-T} (Σ_j w_j w_j' - J I), w_j = L^{-1} u_j; non-centred, log N(z_j | 0, I) with
    ∂/∂z_j = L' ∂/∂c_j - z_j and ∂/∂L = Σ_j ∂/∂c_j z_j'.
    Adds them to ``grad`` (effects, log τ and correlation coordinates) and returns the log density, LKJ
    density and correlation Jacobian included."""
    f, J, p = 2 + i, int(sampled[i, _S_J]), len(c) - len(centre)
    q_all, correlated, effects_at, tau_at, y_at = positions
    q, at = q_all[f], effects_at[f]
    tau, L_omega, L, y = _factor_at(x, f, positions)
    G = np.zeros((q, q))
    lp = -0.5 * J * q * _LOG_2PI
    if sampled[i, _S_CENTRED] > 0:
        for a in range(q):
            lp -= J * math.log(L[a, a])
        S = np.zeros((q, q))
        w, v = np.empty(q), np.empty(q)
        for j in range(J):
            for a in range(q):  # L w = u_j
                acc = c[at + j * q + a]
                for d in range(a):
                    acc -= L[a, d] * w[d]
                w[a] = acc / L[a, a]
            for a in range(q - 1, -1, -1):  # L'v = w: v = T^{-1} u_j
                acc = w[a]
                for d in range(a + 1, q):
                    acc -= L[d, a] * v[d]
                v[a] = acc / L[a, a]
            for a in range(q):
                lp -= 0.5 * w[a] ** 2
                m = at + j * q + a
                grad[m] += grad_c[m] - v[a]
                k = int(centre[m - p])
                if k >= 0:
                    grad[k] -= grad_c[m] - v[a]
                for d in range(q):
                    S[a, d] += w[a] * w[d]
        for col in range(q):  # G = L^{-T} (S - J I), column by column
            for a in range(q - 1, -1, -1):
                acc = S[a, col] - (J if a == col else 0.0)
                for d in range(a + 1, q):
                    acc -= L[d, a] * G[d, col]
                G[a, col] = acc / L[a, a]
    else:
        for j in range(J):
            for a in range(q):
                z = x[at + j * q + a]
                lp -= 0.5 * z * z
                acc = -z
                for d in range(a, q):
                    acc += L[d, a] * grad_c[at + j * q + d]
                grad[at + j * q + a] += acc
                for d in range(a, q):
                    G[d, a] += grad_c[at + j * q + d] * z
    return lp + _level_terms(G, tau, L_omega, y, correlated[f], sampled[i, _S_ETA],
                             grad[tau_at[f]:tau_at[f] + q], grad[y_at[f]:y_at[f + 1]])


@_inlined
def _density_setup(x, buf, grad):
    """The priors of β and of the scales (their part of ``grad``, which it resets), s = 1/σ², per integrated
    level (τ, L_Ω, L, y) and the positions of :func:`_positions`."""
    p, p_ext = int(buf[_P]), int(buf[_P_EXT])
    beta_mu, beta_sd = _array(buf, _BETA_MU), _array(buf, _BETA_SD)
    scale_code, scale_a, scale_b = _array(buf, _SCALE_CODE_AT), _array(buf, _SCALE_A), _array(buf, _SCALE_B)
    on_variance = _array(buf, _SCALE_ON_VARIANCE)
    grad[:] = 0.0
    lp = 0.0
    for k in range(p):  # β ~ Normal(mu, sd), or flat (sd = inf)
        if np.isfinite(beta_sd[k]):
            d = (x[k] - beta_mu[k]) / beta_sd[k]
            lp += -0.5 * d * d - math.log(beta_sd[k]) - 0.5 * _LOG_2PI
            grad[k] -= d / beta_sd[k]
    for i in range(len(scale_code)):  # σ, then the τ's of every factor
        lps, dlps = _scale_log_prior(int(scale_code[i]), scale_a[i], scale_b[i], on_variance[i] > 0,
                                     x[p_ext + i])
        lp += lps
        grad[p_ext + i] += dlps
    s = math.exp(-2.0 * x[p_ext]) if buf[_HAS_SIGMA] > 0 else 1.0
    positions = _positions(buf, _sampled_table(buf)[0])
    tau0, L_omega0, L0, y0 = _factor_at(x, 0, positions)
    tau1, L_omega1, L1, y1 = _factor_at(x, 1, positions)
    return lp, s, (tau0, L_omega0, L0, y0, tau1, L_omega1, L1, y1), positions


@_inlined
def _density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors, positions, homogeneous):
    """Adds the integrated likelihood to the prior part ``lp`` and completes ``grad`` (module docstring). With
    ``homogeneous`` level-1 errors (one σ² or known variances) it adds log|R| and ∂/∂log σ; otherwise
    ``integrated`` carries log|R| in place of the σ terms and :func:`_level1_gradient` has done the rest."""
    logdet_M, reduction, sigma_terms = integrated
    if not np.isfinite(logdet_M):
        return -np.inf
    tau0, L_omega0, L0, y0, tau1, L_omega1, L1, y1 = factors
    _, _, tau_at, y_at = positions[1:]
    p, p_ext = int(buf[_P]), int(buf[_P_EXT])
    has_sigma = buf[_HAS_SIGMA] > 0
    n_obs = buf[_N_OBS]
    if homogeneous:
        logdet_R = -n_obs * math.log(s) if has_sigma else buf[_LOGDET_V]
    else:
        logdet_R = sigma_terms
    lp += -0.5 * (n_obs * _LOG_2PI + logdet_R + logdet_M + s * ee - reduction)
    for k in range(p):
        grad[k] += grad_c[k]
    if homogeneous and has_sigma:
        grad[p_ext] += -n_obs + s * ee + sigma_terms
    lp += _level_terms(G0, tau0, L_omega0, y0, _level_field(buf, 0, _L_CORRELATED) > 0,
                       _level_field(buf, 0, _L_ETA), grad[tau_at[0]:tau_at[0] + len(tau0)], grad[y_at[0]:y_at[1]])
    lp += _level_terms(G1, tau1, L_omega1, y1, _level_field(buf, 1, _L_CORRELATED) > 0,
                       _level_field(buf, 1, _L_ETA), grad[tau_at[1]:tau_at[1] + len(tau1)], grad[y_at[1]:y_at[2]])
    return lp


@_inlined
def _fixed_coefficients(x, buf):
    """c = β (no sampled factors), a copy of the first p coordinates of x."""
    c = np.empty(int(buf[_P]))
    for k in range(len(c)):
        c[k] = x[k]
    return c


@_compiled
def _callback_arrays(dim, x_ptr, grad_ptr, user_data):
    """The packed buffer, x and the gradient behind a log-density callback's pointers (n = -1: wrong dim)."""
    header = numba.carray(user_data, (len(_HEADER),), np.float64)
    n = int(header[_N_DIM])
    buf = numba.carray(user_data, (int(header[_LENGTH]),), np.float64)
    return (n if dim == n else -1), buf, numba.carray(x_ptr, (n,)), numba.carray(grad_ptr, (n,))


@_compiled
def _return_code(value, grad, logp_ptr):
    """Stores the log density; nutpie's codes: 0 ok, 4 log density or 3 gradient not finite (divergent)."""
    logp_ptr[0] = value
    if not np.isfinite(value):
        return 4
    for k in range(len(grad)):
        if not np.isfinite(grad[k]):
            return 3
    return 0


_DOUBLE_PTR = numba.types.CPointer(numba.types.double)
LOGP_SIGNATURE = numba.types.int64(numba.types.uint64, _DOUBLE_PTR, _DOUBLE_PTR, _DOUBLE_PTR, numba.types.voidptr)
EXPAND_SIGNATURE = numba.types.int64(numba.types.uint64, numba.types.uint64, _DOUBLE_PTR, _DOUBLE_PTR,
                                     numba.types.voidptr)


@functools.cache
def numba_callbacks(levels: int, crossed: bool, level1: str = "homogeneous"):
    """The Numba-compiled C callbacks: the log density of a model with ``levels`` integrated factors (1 or 2),
    with sampled (``crossed``) factors or without, and its level-1 errors (``level1``: 'homogeneous', which
    includes known variances, 'strata' or 'ar1'; the last two in two-level models without sampled factors),
    reading the packed buffer through nutpie's user-data pointer, and the reported values (x itself:
    :func:`.kernel.constrained_draws` names them after sampling). Only the entry point a model needs is compiled, on
    first use, and cached on disk (one named function per model kind: the cache tells callbacks apart by name).
    Return codes follow nutpie's PyMC callbacks (-1: wrong dimension)."""
    if level1 != "homogeneous":
        return _structured_callback(), _copy_callback()
    compile_logp = numba.cfunc(LOGP_SIGNATURE, cache=True, error_model="numpy")
    if (levels, crossed) == (1, False):
        @compile_logp
        def logp_two_level(dim, x_ptr, grad_ptr, logp_ptr, user_data):
            n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
            if n < 0:
                return -1
            lp, s, factors, positions = _density_setup(x, buf, grad)
            c = _fixed_coefficients(x, buf)
            ee, grad_c = _residual_terms(c, *_whole_sample(buf, 0), s)
            G0, G1 = np.zeros((len(factors[0]), len(factors[0]))), np.zeros((0, 0))
            integrated = _integrate_two_level(c, s, buf, factors[2], grad_c, G0)
            return _return_code(_density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors,
                                                positions, True), grad, logp_ptr)
        return logp_two_level, _copy_callback()
    if (levels, crossed) == (2, False):
        @compile_logp
        def logp_three_level(dim, x_ptr, grad_ptr, logp_ptr, user_data):
            n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
            if n < 0:
                return -1
            lp, s, factors, positions = _density_setup(x, buf, grad)
            c = _fixed_coefficients(x, buf)
            ee, grad_c = _residual_terms(c, *_whole_sample(buf, 0), s)
            G0, G1 = np.zeros((len(factors[0]), len(factors[0]))), np.zeros((len(factors[4]), len(factors[4])))
            integrated = _integrate_three_level(c, s, buf, factors[2], factors[6], grad_c, G0, G1)
            return _return_code(_density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors,
                                                positions, True), grad, logp_ptr)
        return logp_three_level, _copy_callback()
    return _crossed_callback(levels), _copy_callback()


def _crossed_callback(levels: int):
    """The log-density callback of a model with sampled (crossed) factors: c = [β, u_1, u_2, ...]."""
    compile_logp = numba.cfunc(LOGP_SIGNATURE, cache=True, error_model="numpy")
    if levels == 1:
        @compile_logp
        def logp_two_level_crossed(dim, x_ptr, grad_ptr, logp_ptr, user_data):
            n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
            if n < 0:
                return -1
            lp, s, factors, positions = _density_setup(x, buf, grad)
            sampled, centre = _sampled_table(buf)
            c = _coefficients(x, sampled, centre, positions, int(buf[_P]), int(buf[_P_EXT]))
            ee, grad_c = _residual_terms(c, *_whole_sample(buf, 0), s)
            G0, G1 = np.zeros((len(factors[0]), len(factors[0]))), np.zeros((0, 0))
            integrated = _integrate_two_level(c, s, buf, factors[2], grad_c, G0)
            lp += _sampled_prior(x, c, sampled, centre, positions, grad_c, grad)
            return _return_code(_density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors,
                                                positions, True), grad, logp_ptr)
        return logp_two_level_crossed

    @compile_logp
    def logp_three_level_crossed(dim, x_ptr, grad_ptr, logp_ptr, user_data):
        n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
        if n < 0:
            return -1
        lp, s, factors, positions = _density_setup(x, buf, grad)
        sampled, centre = _sampled_table(buf)
        c = _coefficients(x, sampled, centre, positions, int(buf[_P]), int(buf[_P_EXT]))
        ee, grad_c = _residual_terms(c, *_whole_sample(buf, 0), s)
        G0, G1 = np.zeros((len(factors[0]), len(factors[0]))), np.zeros((len(factors[4]), len(factors[4])))
        integrated = _integrate_three_level(c, s, buf, factors[2], factors[6], grad_c, G0, G1)
        lp += _sampled_prior(x, c, sampled, centre, positions, grad_c, grad)
        return _return_code(_density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors,
                                            positions, True), grad, logp_ptr)
    return logp_three_level_crossed


@functools.cache
def _structured_callback():
    """The log-density callback of a two-level model with a variance per stratum or AR(1) errors: the
    statistics weighted by w(θ) (:func:`_level1_weights`), integrated as in :func:`_integrate_top`, and the
    level-1 gradient from the per-component moments (:func:`_level1_gradient`)."""
    @numba.cfunc(LOGP_SIGNATURE, cache=True, error_model="numpy")
    def logp_two_level_structured(dim, x_ptr, grad_ptr, logp_ptr, user_data):
        n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
        if n < 0:
            return -1
        lp, _, factors, positions = _density_setup(x, buf, grad)
        c = _fixed_coefficients(x, buf)
        w, dw, logdet_R, dlogdet, lp_phi = _level1_weights(x, buf, grad)
        ee, grad_c = _residual_terms(c, *_weighted_whole_sample(buf, w), 1.0)
        ZtZ, ZtX, Zty = _weighted_level_stats(buf, 0, w)
        q, J = Zty.shape
        G0, G1 = np.zeros((q, q)), np.zeros((0, 0))
        logdet_M, reduction, _, z, S = _integrate_top(c, 1.0, factors[2], ZtZ, ZtX, Zty, np.zeros((q, q, J)),
                                                      np.zeros((q, J)), grad_c, G0)
        if np.isfinite(logdet_M):
            _level1_gradient(c, buf, factors[2], z, S, dw, dlogdet, grad)
        return _return_code(_density_finish(buf, grad, lp + lp_phi, 1.0, ee, grad_c, (logdet_M, reduction, logdet_R),
                                            G0, G1, factors, positions, False), grad, logp_ptr)
    return logp_two_level_structured


@functools.cache
def _copy_callback():
    """The reported-values callback: x itself (dimensions checked; -1 if they differ)."""
    @numba.cfunc(EXPAND_SIGNATURE, cache=True, error_model="numpy")
    def unconstrained_values(dim, n_expanded, x_ptr, out_ptr, user_data):
        if dim != n_expanded:
            return -1
        for k in range(dim):
            out_ptr[k] = x_ptr[k]
        return 0
    return unconstrained_values
