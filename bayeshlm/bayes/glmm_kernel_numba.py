"""The Numba twin of ``_glmm_kernel.c``: the HGLM log density, its gradient and the reported values of
:mod:`.glmm_kernel`, compiled by Numba (``cache=True``) when the C extension is not installed or reads another
buffer layout (:func:`.glmm_kernel.callbacks`). The same formulas in the same order of floating-point operations
as the C code (tests compare them bitwise); the model, the buffer layout and the maps are documented in
:mod:`.glmm_kernel`. Kept in its own module so that a fit on the C extension does not import Numba."""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from .glmm_kernel import (
    _AT_A,
    _AT_BETA_MU,
    _AT_BETA_SD,
    _AT_COUNT_TABLE,
    _AT_FACTORS,
    _AT_OFFSET,
    _AT_SHAPE_PRIOR,
    _AT_SIZE,
    _AT_X,
    _AT_Y,
    _CONSTANT,
    _F_AT_CENTRE,
    _F_AT_CODES,
    _F_AT_CONDITIONAL,
    _F_AT_CORR,
    _F_AT_PRIOR,
    _F_AT_SHIFT,
    _F_AT_SHIFT_VALUES,
    _F_AT_Z,
    _F_CENTRED,
    _F_CORRELATED,
    _F_ETA,
    _F_J,
    _F_LATENT_SCALE,
    _F_N_SHIFT,
    _F_PARTIAL,
    _F_Q,
    _F_X_CORR,
    _F_X_EFFECTS,
    _F_X_TAU,
    _FACTOR,
    _FAMILY,
    _HEADER,
    _LENGTH,
    _N,
    _N_COUNT_TABLE,
    _N_DIM,
    _N_EXPANDED,
    _N_FACTORS,
    _P,
    _SHAPE_AT,
)

_LOG_2PI = math.log(2.0 * math.pi)


# --- pieces of the density ------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _scale_prior(code, a, b, on_variance, theta):
    """Log prior of a positive parameter s = exp(theta) (or of s^2 = exp(theta) when ``on_variance``: then the
    reported scale is sqrt), with its normalising constant and the log-Jacobian theta; and d/d theta.
    Returns (log density, derivative, s)."""
    v = math.exp(theta)  # the parameter the prior is on
    if code == 0:  # HalfFlat
        lp, dlp = 0.0, 0.0
    elif code == 1:  # HalfNormal(sigma=a)
        lp = 0.5 * math.log(2.0 / math.pi) - math.log(a) - 0.5 * (v / a) ** 2
        dlp = -v / (a * a)
    elif code == 2:  # HalfStudentT(nu=a, sigma=b)
        r = v * v / (a * b * b)
        lp = (math.log(2.0) + math.lgamma(0.5 * (a + 1.0)) - math.lgamma(0.5 * a)
              - 0.5 * math.log(a * math.pi * b * b) - 0.5 * (a + 1.0) * math.log1p(r))
        dlp = -(a + 1.0) * v / (a * b * b * (1.0 + r))
    elif code == 3:  # HalfCauchy(beta=a)
        lp = math.log(2.0 / (math.pi * a)) - math.log1p((v / a) ** 2)
        dlp = -2.0 * v / (a * a + v * v)
    elif code == 4:  # Exponential(lam=a)
        lp, dlp = math.log(a) - a * v, -a
    else:  # Gamma(alpha=a, beta=b)
        lp = a * math.log(b) - math.lgamma(a) + (a - 1.0) * math.log(v) - b * v
        dlp = (a - 1.0) / v - b
    scale = math.sqrt(v) if on_variance else v
    return lp + theta, dlp * v + 1.0, scale


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _digamma(x):
    """psi(x) for x > 0: recurrence up to x >= 6, then the asymptotic series."""
    out = 0.0
    while x < 6.0:
        out -= 1.0 / x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return out + math.log(x) - 0.5 * inv - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (
        1.0 / 240 - inv2 / 132))))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lkj_factor(y, positions, q):
    """L_Omega from the unconstrained y: row i is (y_i1, ..., y_i,i-1, 1) / its norm (PyMC's CholeskyCorr)."""
    L = np.eye(q)
    for i in range(1, q):
        norm2 = 1.0
        for k in range(i):
            norm2 += y[int(positions[i, k])] ** 2
        s = math.sqrt(norm2)
        for k in range(i):
            L[i, k] = y[int(positions[i, k])] / s
        L[i, i] = 1.0 / s
    return L


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lkj_terms(y, positions, q, eta, gL, grad_y):
    """LKJ(eta) log density of L_Omega, sum_i (2 eta - 2 + q - i) log L_ii (i one-based; PyMC's LKJCorr, with its
    normaliser), plus the transform's log-Jacobian sum_i (i + 1) log L_ii; adds to ``grad_y`` the gradient of
    these plus sum(gL * L_Omega) (gL: the gradient of the rest of the density in L_Omega).

    Together: weight 2 eta + q - 1 on each log L_ii = -log(s_i^2) / 2, s_i^2 = 1 + |y_i|^2 (rows after the first);
    dL_ik/dy_m = delta_km / s - y_k y_m / s^3, dL_ii/dy_m = -y_m / s^3."""
    lp = (q - 1) * math.lgamma(eta + 0.5 * (q - 1))
    for k in range(1, q):
        lp -= 0.5 * k * math.log(math.pi) + math.lgamma(eta + 0.5 * (q - 1 - k))
    weight = 2.0 * eta + q - 1.0
    for i in range(1, q):
        norm2 = 1.0
        for k in range(i):
            norm2 += y[int(positions[i, k])] ** 2
        s = math.sqrt(norm2)
        lp -= 0.5 * weight * math.log(norm2)
        along = gL[i, i]
        for k in range(i):
            along += gL[i, k] * y[int(positions[i, k])]
        for m in range(i):
            at = int(positions[i, m])
            grad_y[at] += -weight * y[at] / norm2 + gL[i, m] / s - y[at] * along / (s * norm2)
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _factor_scale(x, buf, row, grad, want_grad):
    """(L, tau, L_Omega, log prior of tau) of one factor; with ``want_grad`` adds the prior's gradient."""
    q = int(row[_F_Q])
    x_tau = int(row[_F_X_TAU])
    prior = buf[int(row[_F_AT_PRIOR]):int(row[_F_AT_PRIOR]) + 4 * q]
    tau = np.empty(q)
    lp = 0.0
    for a in range(q):
        on_variance = prior[4 * a + 3] > 0.5
        value, d, tau[a] = _scale_prior(int(prior[4 * a]), prior[4 * a + 1], prior[4 * a + 2], on_variance,
                                        x[x_tau + a])
        lp += value
        if want_grad:
            grad[x_tau + a] += d
    if row[_F_CORRELATED] > 0.5:
        x_corr = int(row[_F_X_CORR])
        positions = buf[int(row[_F_AT_CORR]):int(row[_F_AT_CORR]) + q * q].reshape(q, q)
        omega = _lkj_factor(x[x_corr:x_corr + q * (q - 1) // 2], positions, q)
    else:
        omega = np.eye(q)
    L = omega * tau.reshape(q, 1)
    return L, tau, omega, lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _effects(x, buf, row, L, beta):
    """u (J, q) of one factor from its coordinates: L z_j, or b'_j - C_j beta' (loops: no BLAS call to compile)."""
    q, J, x_eff = int(row[_F_Q]), int(row[_F_J]), int(row[_F_X_EFFECTS])
    u = np.zeros((J, q))
    if row[_F_CENTRED] < 0.5:
        for j in range(J):
            for a in range(q):
                s = 0.0
                for b in range(a + 1):  # L is lower triangular
                    s += L[a, b] * x[x_eff + j * q + b]
                u[j, a] = s
        return u
    p = len(beta)
    at_centre = int(row[_F_AT_CENTRE])
    for j in range(J):
        for a in range(q):
            c = 0.0
            for k in range(p):
                c += buf[at_centre + (j * q + a) * p + k] * beta[k]
            u[j, a] = x[x_eff + j * q + a] - c
    return u


_LOG_BLOCK = 32  # factors (1 + t_i) multiplied before one log is taken; _glmm_kernel.c's LOG_BLOCK


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _powers_into_product(base, n, product, factors):
    """base^n multiplied into a running ``product`` of ``factors`` factors (each in [1, 2]) for a whole n in
    [1, _LOG_BLOCK], logged once it holds _LOG_BLOCK factors or more (then restarting at 1); n log(base) for any
    other n but 0. Returns (product, factors, the log to add now, whether there is one): sums of n_i log(1 + t_i)
    then take about one log per _LOG_BLOCK factors (:func:`_binomial_rows`, :func:`_negative_binomial_rows`)."""
    if n >= 1.0 and n <= _LOG_BLOCK and float(int(n)) == n:
        for _ in range(int(n)):
            product *= base
        factors += int(n)
        if factors < _LOG_BLOCK:
            return product, factors, 0.0, False
        return 1.0, 0, math.log(product), True
    if n == 0.0:
        return product, factors, 0.0, False
    return product, factors, n * math.log(base), True


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _binomial_rows(y, size, eta, r):
    """Sum of the binomial rows' terms l_i = y_i eta_i - n_i log(1 + e^eta_i) (log C(n, y) is in the constant),
    with r_i = dl_i/deta_i = y_i - n_i mu_i written into ``r``. One exp per row: t = e^-|eta|,
    log(1 + e^eta) = max(eta, 0) + log(1 + t), mu = 1 / (1 + e^-eta) = (1 or t) / (1 + t). The logs are taken
    of products: rows with a whole number of trials n_i <= _LOG_BLOCK multiply (1 + t_i)^n_i into a running product
    (each factor in (1, 2]), logged once it has _LOG_BLOCK factors or more (below 2^64), so
    sum_i n_i log(1 + t_i) costs about one log per _LOG_BLOCK trials instead of one log1p per row (Contraception,
    1,547 rows: 47 -> 21 us per gradient with the passes of _glmm_kernel.c, benchmarks/results/
    bayes_contraception_speed.md). Rounding: 1 + t and each product are rounded once, a relative 1.1e-16 each,
    so the log of a product of m factors is off by at most about m 1.1e-16 -- the same 1.1e-16 per trial as
    n_i log1p(t_i) summed row by row, which the sum of the rows' terms rounds at anyway. Other rows:
    n_i log(1 + t_i). NaN in eta gives NaN; +-inf gives what the direct formula gives."""
    lp, product, factors = 0.0, 1.0, 0
    for i in range(len(eta)):
        e, n_i = eta[i], size[i]
        t = math.exp(-abs(e))
        one_plus_t = 1.0 + t
        mu = (1.0 if e >= 0.0 else t) / one_plus_t
        r[i] = y[i] - n_i * mu
        lp += y[i] * e - n_i * max(e, 0.0)
        product, factors, logged, now = _powers_into_product(one_plus_t, n_i, product, factors)
        if now:
            lp -= logged
    return lp - math.log(product)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _negative_binomial_rows(y, eta, shape, log_shape, per_row_gamma, r):
    """(sum of the negative binomial rows' terms l_i without lgamma(y_i + k) - lgamma(k), sum of their dl_i/dk
    without psi(y_i + k) - psi(k)) with r_i = dl_i/deta_i = k w_i, w_i = (y_i - mu_i) / (k + mu_i), written into
    ``r`` (module docstring; log y! is in the constant, k log k is added once per row outside); with
    ``per_row_gamma``, lgamma(y_i + k) and psi(y_i + k) are added row by row (-lgamma(k) and -psi(k) once per row
    outside), else :func:`_count_table_terms` gives the sums of the differences.

    log(k + mu_i) = log max(k, mu_i) + log(1 + s_i), s_i = min(k, mu_i) / max(k, mu_i) in [0, 1] (log max: log k
    or eta_i itself), with the one exp per row that mu_i needs anyway. The rows need sum_i log(1 + s_i) and
    sum_i y_i log(1 + s_i), taken as in :func:`_binomial_rows`: the logs of running products of the (1 + s_i) and
    of the (1 + s_i)^y_i (whole y_i <= _LOG_BLOCK; others y_i log(1 + s_i) directly), each logged once it has
    _LOG_BLOCK factors or more (below 2^64), so about (n + sum y_i) / _LOG_BLOCK logs instead of n (salamanders:
    C kernel 11.2 -> 8.8 us per gradient). Rounding: each factor and product is rounded once, a relative 1.1e-16,
    so each sum is off by about 1.1e-16 per factor, as a row-by-row sum of logs is; against a long-double
    reference the rows' sum was within 6e-15 of the sum of the |terms| (k 0.05 to 1e3, salamanders' counts).
    NaN in eta gives NaN; mu_i = inf gives NaN in r_i, as (y_i - mu_i) / (k + mu_i) does."""
    lp, d_shape, inv_shape = 0.0, 0.0, 1.0 / shape
    product, product_y, log_sum, log_sum_y = 1.0, 1.0, 0.0, 0.0  # products of factors in [1, 2]
    factors, factors_y = 0, 0
    for i in range(len(eta)):
        e, y_i = eta[i], y[i]
        mu = math.exp(e)
        w = (y_i - mu) / (shape + mu)
        if mu > shape:
            log_larger, s = e, shape / mu
        else:
            log_larger, s = log_shape, mu * inv_shape
        one_plus_s = 1.0 + s
        value = y_i * (e - log_larger) - shape * log_larger
        d_k = log_shape - log_larger - w
        if per_row_gamma:
            value += math.lgamma(y_i + shape)
            d_k += _digamma(y_i + shape)
        r[i] = shape * w
        lp += value
        d_shape += d_k
        product, factors, logged, now = _powers_into_product(one_plus_s, 1.0, product, factors)
        if now:
            log_sum += logged
        product_y, factors_y, logged, now = _powers_into_product(one_plus_s, y_i, product_y, factors_y)
        if now:
            log_sum_y += logged
    log_sum += math.log(product)
    log_sum_y += math.log(product_y)
    return lp - (shape * log_sum + log_sum_y), d_shape - log_sum


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _count_table_terms(counts, shape):
    """(sum_i lgamma(y_i + k) - lgamma(k), sum_i psi(y_i + k) - psi(k)) for whole counts y_i >= 0 from the count
    table N_m = #{i : y_i > m}, m < M = max y (:func:`count_table`): Gamma(y + k) = Gamma(k) prod_{m < y} (k + m),
    so the sums are sum_m N_m log(k + m) and sum_m N_m / (k + m): M logs and divisions instead of n lgamma and n
    psi (and no cancellation of lgamma(y_i + k) - lgamma(k) at large k)."""
    lp, d_shape = 0.0, 0.0
    for m in range(len(counts)):
        k_m = shape + m
        lp += counts[m] * math.log(k_m)
        d_shape += counts[m] / k_m
    return lp, d_shape


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fixed_prior(beta, beta_mu, beta_sd, g_beta):
    """Log prior of the fixed effects (Normal, or flat where sd is 0) with its gradient added to ``g_beta``."""
    lp = 0.0
    for k in range(len(beta)):
        if beta_sd[k] > 0.0:
            r = (beta[k] - beta_mu[k]) / beta_sd[k]
            lp -= 0.5 * _LOG_2PI + math.log(beta_sd[k]) + 0.5 * r * r
            g_beta[k] -= r / beta_sd[k]
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _factor_rows(buf, row, n):
    """(codes, Z) of one factor: each row's group and its random-effect columns."""
    q = int(row[_F_Q])
    codes = buf[int(row[_F_AT_CODES]):int(row[_F_AT_CODES]) + n]
    Z = buf[int(row[_F_AT_Z]):int(row[_F_AT_Z]) + n * q].reshape(n, q)
    return codes, Z


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _linear_predictor(buf, table, X, beta, u_all, u_at):
    """eta_i = offset_i + x_i'beta + sum over factors of z_i'u_j[i]."""
    n, p = X.shape
    at_offset = int(buf[_AT_OFFSET])
    eta = buf[at_offset:at_offset + n].copy()
    for i in range(n):
        for k in range(p):
            eta[i] += X[i, k] * beta[k]
    for f in range(table.shape[0]):
        q = int(table[f, _F_Q])
        codes, Z = _factor_rows(buf, table[f], n)
        u = u_all[u_at[f]:u_at[f + 1]].reshape(-1, q)
        for i in range(n):
            j = int(codes[i])
            for a in range(q):
                eta[i] += Z[i, a] * u[j, a]
    return eta


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _row_terms(family, y, size, eta, shape, log_shape, per_row_gamma, r):
    """(sum of the rows' log-likelihood terms, their sum of dl_i/dk) with r_i = dl_i/deta_i written into ``r``:
    family 0 binomial (Bernoulli: size 1), 1 Poisson, 2 negative binomial (:func:`_negative_binomial_rows`)."""
    lp, d_shape = 0.0, 0.0
    n = len(eta)
    if family == 0:
        lp = _binomial_rows(y, size, eta, r)
    elif family == 1:
        for i in range(n):
            mu = math.exp(eta[i])
            lp += y[i] * eta[i] - mu
            r[i] = y[i] - mu
    else:
        lp, d_shape = _negative_binomial_rows(y, eta, shape, log_shape, per_row_gamma, r)
    return lp, d_shape


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pass_to_coefficients(buf, table, X, r, g_beta, g_u_all, u_at):
    """dl/dbeta = X'r and dl/du_j = sum over group j's rows of r_i z_i, added to ``g_beta`` and ``g_u_all``."""
    n, p = X.shape
    for i in range(n):
        for k in range(p):
            g_beta[k] += X[i, k] * r[i]
    for f in range(table.shape[0]):
        q = int(table[f, _F_Q])
        codes, Z = _factor_rows(buf, table[f], n)
        g_u = g_u_all[u_at[f]:u_at[f + 1]].reshape(-1, q)
        for i in range(n):
            j = int(codes[i])
            for a in range(q):
                g_u[j, a] += r[i] * Z[i, a]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _non_centred_prior(x, x_eff, L, g_u, grad, gL):
    """u_j = L z_j, z_j ~ N(0, I): the log prior of the z_j; dz_j = L' g_uj - z_j into ``grad``, dL += g_uj z_j'."""
    J, q = g_u.shape
    lp = 0.0
    for j in range(J):
        for a in range(q):
            z = x[x_eff + j * q + a]
            lp -= 0.5 * (_LOG_2PI + z * z)
            s = -z
            for b in range(a, q):
                s += L[b, a] * g_u[j, b]
            grad[x_eff + j * q + a] += s
            for b in range(a, q):
                gL[b, a] += g_u[j, b] * z
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _centred_prior(buf, at_centre, x_eff, L, u, g_u, grad, g_beta, gL):
    """b_j centred, u_j = b_j - C_j beta ~ N(0, L L'). With w_j = L^{-1} u_j: log N(u_j | 0, L L') = -|w_j|^2/2 -
    sum log L_aa - q/2 log 2 pi; db_j = g_uj - L^{-T} w_j, dbeta -= C_j' db_j, dL += L^{-T} w_j w_j' - diag(1/L_aa)."""
    J, q = u.shape
    p = len(g_beta)
    lp = 0.0
    w, back = np.empty(q), np.empty(q)
    for a in range(q):
        lp -= J * (0.5 * _LOG_2PI + math.log(L[a, a]))
        gL[a, a] -= J / L[a, a]
    for j in range(J):
        for a in range(q):  # forward substitution: L w = u_j
            s = u[j, a]
            for b in range(a):
                s -= L[a, b] * w[b]
            w[a] = s / L[a, a]
            lp -= 0.5 * w[a] * w[a]
        for a in range(q - 1, -1, -1):  # back substitution: L' back = w
            s = w[a]
            for b in range(a + 1, q):
                s -= L[b, a] * back[b]
            back[a] = s / L[a, a]
        for a in range(q):
            d = g_u[j, a] - back[a]
            grad[x_eff + j * q + a] += d
            for k in range(p):
                g_beta[k] -= buf[at_centre + (j * q + a) * p + k] * d
            for b in range(a + 1):
                gL[a, b] += back[a] * w[b]
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _shift_fixed_effects(buf, table, u_all, u_at, beta):
    """beta -= sum over the non-centred factors' shift entries (k, a, P) of P'u_f[:, a] (module docstring)."""
    for f in range(table.shape[0]):
        q, J, at = int(table[f, _F_Q]), int(table[f, _F_J]), int(table[f, _F_AT_SHIFT])
        for e in range(int(table[f, _F_N_SHIFT])):
            k, a = int(buf[at + e * (J + 2)]), int(buf[at + e * (J + 2) + 1])
            s = 0.0
            for j in range(J):
                s += buf[at + e * (J + 2) + 2 + j] * u_all[u_at[f] + j * q + a]
            beta[k] -= s


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _shift_gradient(buf, table, g_beta, g_u_all, u_at):
    """The chain rule through the shift: d beta_k / d u_f[j, a] = -P_j, so g_u_f[j, a] -= P_j g_beta_k (then on
    to z and L as every gradient in u)."""
    for f in range(table.shape[0]):
        q, J, at = int(table[f, _F_Q]), int(table[f, _F_J]), int(table[f, _F_AT_SHIFT])
        for e in range(int(table[f, _F_N_SHIFT])):
            k, a = int(buf[at + e * (J + 2)]), int(buf[at + e * (J + 2) + 1])
            for j in range(J):
                g_u_all[u_at[f] + j * q + a] -= buf[at + e * (J + 2) + 2 + j] * g_beta[k]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _scale_gradient(x, buf, row, gL, tau, omega, grad):
    """L = diag(tau) L_Omega: d tau_a = sum_b gL[a,b] Omega[a,b] (to the sampled log scale), d Omega = tau_a gL[a,b]
    (to the LKJ coordinates, whose log prior :func:`_lkj_terms` adds and returns)."""
    q = len(tau)
    x_tau = int(row[_F_X_TAU])
    prior = buf[int(row[_F_AT_PRIOR]):int(row[_F_AT_PRIOR]) + 4 * q]
    for a in range(q):
        d_tau = 0.0
        for b in range(a + 1):
            d_tau += gL[a, b] * omega[a, b]
        grad[x_tau + a] += d_tau * tau[a] * (0.5 if prior[4 * a + 3] > 0.5 else 1.0)
    if row[_F_CORRELATED] > 0.5:
        x_corr = int(row[_F_X_CORR])
        g_omega = gL * tau.reshape(q, 1)
        positions = buf[int(row[_F_AT_CORR]):int(row[_F_AT_CORR]) + q * q].reshape(q, q)
        return _lkj_terms(x[x_corr:x_corr + q * (q - 1) // 2], positions, q, row[_F_ETA], g_omega,
                          grad[x_corr:x_corr + q * (q - 1) // 2])
    return 0.0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _effect_priors(lp, x, buf, table, Ls, taus, omegas, u_all, g_u_all, u_at, centred, grad, g_beta):
    """``lp`` plus the log prior of the centred (or of the non-centred) factors' effects, with the chain rule from
    their g_u to their coordinates, to L (scales and LKJ coordinates) and, for centred ones, to g_beta."""
    for f in range(table.shape[0]):
        row = table[f]
        if (row[_F_CENTRED] > 0.5) != centred:
            continue
        q, J = int(row[_F_Q]), int(row[_F_J])
        L = Ls[f, :q, :q]
        g_u = g_u_all[u_at[f]:u_at[f + 1]].reshape(J, q)
        gL = np.zeros((q, q))
        if centred:
            lp += _centred_prior(buf, int(row[_F_AT_CENTRE]), int(row[_F_X_EFFECTS]), L,
                                 u_all[u_at[f]:u_at[f + 1]].reshape(J, q), g_u, grad, g_beta, gL)
        else:
            lp += _non_centred_prior(x, int(row[_F_X_EFFECTS]), L, g_u, grad, gL)
        lp += _scale_gradient(x, buf, row, gL, taus[f, :q], omegas[f, :q, :q], grad)
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _scale_latent(buf, table, v):
    """v_f[:, a] += (lambda_f - 1) G_f P_f v_f[:, a] in place, per factor with a shift and lambda_f != 1 (module
    docstring) on its shifted coefficient's block of v (coordinates or gradient): G P is symmetric, so the same map
    takes z' to z and dz to dz'."""
    for f in range(table.shape[0]):
        row = table[f]
        lam, n_shift = row[_F_LATENT_SCALE], int(row[_F_N_SHIFT])
        if n_shift == 0 or lam == 1.0:
            continue
        q, J = int(row[_F_Q]), int(row[_F_J])
        at, values = int(row[_F_AT_SHIFT]), int(row[_F_AT_SHIFT_VALUES])
        start = int(row[_F_X_EFFECTS])
        t = np.zeros(n_shift)
        for e in range(n_shift):
            a = int(buf[at + e * (J + 2) + 1])
            for j in range(J):
                t[e] += buf[at + e * (J + 2) + 2 + j] * v[start + j * q + a]
        for e in range(n_shift):
            a = int(buf[at + e * (J + 2) + 1])
            for j in range(J):
                v[start + j * q + a] += (lam - 1.0) * buf[values + e * J + j] * t[e]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _latent_scaled(x, buf):
    """The coordinates with every scaled factor's z' taken to z (:func:`_scale_latent`); ``x`` itself when no
    factor is scaled."""
    n_factors = int(buf[_N_FACTORS])
    table = buf[int(buf[_AT_FACTORS]):int(buf[_AT_FACTORS]) + n_factors * len(_FACTOR)].reshape(
        n_factors, len(_FACTOR))
    for f in range(n_factors):
        if table[f, _F_N_SHIFT] > 0 and table[f, _F_LATENT_SCALE] != 1.0:
            out = x.copy()
            _scale_latent(buf, table, out)
            return out
    return x


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _partial_factor(buf, row):
    """(1 - w) h for a non-centred factor with q = 1 and w < 1 (h = 1/2 when its scale coordinate is log tau^2),
    else 0."""
    if row[_F_CENTRED] > 0.5 or int(row[_F_Q]) != 1 or row[_F_PARTIAL] == 1.0:
        return 0.0
    return (1.0 - row[_F_PARTIAL]) * (0.5 if buf[int(row[_F_AT_PRIOR]) + 3] > 0.5 else 1.0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _conditional_factor(buf, row):
    """d log tau / d theta (1, or 1/2 when the scale coordinate theta is log tau^2) for a conditionally centred
    factor (one with a table of (c_j, h_j); pack allows it for non-centred factors with q = 1 only), else 0."""
    if row[_F_AT_CONDITIONAL] == 0.0:
        return 0.0
    return 0.5 if buf[int(row[_F_AT_PRIOR]) + 3] > 0.5 else 1.0


_PRODUCT_LIMIT = 1e100  # factors 1 + v_j multiplied until their product exceeds it, then logged (_glmm_kernel.c's)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _conditional_coordinates(x, buf, row, y, kept):
    """z_j = tau c_j r_j + z'_j s_j, r_j = 1 / (1 + v_j), s_j = sqrt(r_j), v_j = tau^2 h_j, into ``y`` for a
    conditionally centred factor (module docstring), with r_j, s_j, a_j = tau c_j r_j and v_j kept in the rows of
    ``kept`` (4, J) for :func:`_conditional_gradient`; returns the log-Jacobian -sum_j log(1 + v_j) / 2, with the
    logs taken of running products of the factors 1 + v_j (one log per product above _PRODUCT_LIMIT; a factor
    above it alone): a log1p per group cost as much as the rest of the map. Each factor and product is rounded once
    (relative 1.1e-16), so the sum is off by about 1.1e-16 per group, as a sum of logs is. One division and one
    square root per group for the map and its gradient (the map first took three of each: 22 against 13-16 us per
    gradient for the Poisson model with 595 rows; the gradient's own two, 15.7 -> 11.5 us with the C kernel's q = 1
    paths, benchmarks/results/bayes_olre_speed.md)."""
    half = _conditional_factor(buf, row)
    J, x_eff, x_tau, at = int(row[_F_J]), int(row[_F_X_EFFECTS]), int(row[_F_X_TAU]), int(row[_F_AT_CONDITIONAL])
    r, s, a, v = kept[0], kept[1], kept[2], kept[3]
    tau = math.exp(half * x[x_tau])
    tau2 = tau * tau
    log_jacobian, product = 0.0, 1.0
    for j in range(J):
        v[j] = tau2 * buf[at + 2 * j + 1]
        d = 1.0 + v[j]
        r[j] = 1.0 / d
        s[j] = math.sqrt(r[j])
        if d > _PRODUCT_LIMIT:
            log_jacobian -= 0.5 * math.log(d)
        else:
            product *= d
            if product > _PRODUCT_LIMIT:
                log_jacobian -= 0.5 * math.log(product)
                product = 1.0
    for j in range(J):
        a[j] = tau * buf[at + 2 * j] * r[j]
        y[x_eff + j] = a[j] + x[x_eff + j] * s[j]
    return log_jacobian - 0.5 * math.log(product)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _conditional_gradient(x, buf, row, kept, grad):
    """The gradient in z taken to z' and log tau (conditional centring) with the log-Jacobian's: dz'_j = dz_j s_j,
    d log tau += sum_j (dz_j (a_j (1 - v_j) - s_j z'_j v_j) - v_j) r_j, with r_j = 1 / (1 + v_j), s_j = sqrt(r_j),
    a_j = tau c_j r_j (the rows of ``kept``, from :func:`_conditional_coordinates`); times d log tau / d theta."""
    half = _conditional_factor(buf, row)
    J, x_eff, x_tau = int(row[_F_J]), int(row[_F_X_EFFECTS]), int(row[_F_X_TAU])
    r, s, a, v = kept[0], kept[1], kept[2], kept[3]
    d_log_tau = 0.0
    for j in range(J):
        g = grad[x_eff + j]
        d_log_tau += (g * (a[j] * (1.0 - v[j]) - s[j] * x[x_eff + j] * v[j]) - v[j]) * r[j]
        grad[x_eff + j] = g * s[j]
    grad[x_tau] += half * d_log_tau


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _partially_centred(x, buf):
    """(coordinates with z = z' tau^-(1-w) for each partially centred factor and z from z' for each conditionally
    centred one, the log-Jacobian of those maps: -(1 - w) J log tau, -sum_j log(1 + tau^2 h_j) / 2, what the
    conditional centring keeps for its gradient: 4 J per conditionally centred factor, in factor order); ``x``
    itself, 0 and nothing when there is none (module docstring)."""
    n_factors = int(buf[_N_FACTORS])
    table = buf[int(buf[_AT_FACTORS]):int(buf[_AT_FACTORS]) + n_factors * len(_FACTOR)].reshape(
        n_factors, len(_FACTOR))
    partial, n_kept = False, 0
    for f in range(n_factors):
        partial = partial or _partial_factor(buf, table[f]) != 0.0 or _conditional_factor(buf, table[f]) != 0.0
        if _conditional_factor(buf, table[f]) != 0.0:
            n_kept += 4 * int(table[f, _F_J])
    kept = np.empty(n_kept)
    if not partial:
        return x, 0.0, kept
    y, log_jacobian, at = x.copy(), 0.0, 0
    for f in range(n_factors):
        if _conditional_factor(buf, table[f]) != 0.0:
            J = int(table[f, _F_J])
            log_jacobian += _conditional_coordinates(x, buf, table[f], y, kept[at:at + 4 * J].reshape(4, J))
            at += 4 * J
            continue
        k = _partial_factor(buf, table[f])
        if k == 0.0:
            continue
        J, x_eff, x_tau = int(table[f, _F_J]), int(table[f, _F_X_EFFECTS]), int(table[f, _F_X_TAU])
        c = math.exp(-k * x[x_tau])
        for j in range(J):
            y[x_eff + j] = x[x_eff + j] * c
        log_jacobian += -k * J * x[x_tau]
    return y, log_jacobian, kept


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _partial_gradient(x, buf, kept, grad):
    """The gradient in z (``grad`` at the z block) and log tau taken to z' and log tau, with the log-Jacobian's:
    dz'_j = c dz_j, d log tau += -(1 - w) (sum_j dz_j z_j + J), c = tau^-(1-w); conditionally centred factors by
    :func:`_conditional_gradient` from what :func:`_partially_centred` kept."""
    n_factors = int(buf[_N_FACTORS])
    table = buf[int(buf[_AT_FACTORS]):int(buf[_AT_FACTORS]) + n_factors * len(_FACTOR)].reshape(
        n_factors, len(_FACTOR))
    at = 0
    for f in range(n_factors):
        if _conditional_factor(buf, table[f]) != 0.0:
            J = int(table[f, _F_J])
            _conditional_gradient(x, buf, table[f], kept[at:at + 4 * J].reshape(4, J), grad)
            at += 4 * J
            continue
        k = _partial_factor(buf, table[f])
        if k == 0.0:
            continue
        J, x_eff, x_tau = int(table[f, _F_J]), int(table[f, _F_X_EFFECTS]), int(table[f, _F_X_TAU])
        c = math.exp(-k * x[x_tau])
        d = 0.0
        for j in range(J):
            d += grad[x_eff + j] * (x[x_eff + j] * c)
            grad[x_eff + j] *= c
        grad[x_tau] += -k * d - k * J


@numba.njit(cache=True, nogil=True, error_model="numpy")
def log_density(x, buf, grad):
    """Log posterior density at ``x`` with its gradient written into ``grad``: :func:`_log_density` at the
    coordinates z of the partially centred and scaled factors plus the log-Jacobian, its gradient taken back to the
    sampled coordinates (module docstring)."""
    y, log_jacobian, kept = _partially_centred(x, buf)
    value = _log_density(_latent_scaled(y, buf), buf, grad)
    n_factors = int(buf[_N_FACTORS])
    _scale_latent(buf, buf[int(buf[_AT_FACTORS]):int(buf[_AT_FACTORS]) + n_factors * len(_FACTOR)].reshape(
        n_factors, len(_FACTOR)), grad)
    _partial_gradient(x, buf, kept, grad)
    return value + log_jacobian


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _log_density(x, buf, grad):
    """Log posterior density at ``x`` (module docstring) with its gradient written into ``grad`` (loops only: no
    BLAS or LAPACK binding to compile): priors, effects, eta, the rows' terms, then the chain rule back through
    the effects' priors and scales to the coordinates."""
    n, p, n_factors = int(buf[_N]), int(buf[_P]), int(buf[_N_FACTORS])
    family, shape_at = int(buf[_FAMILY]), int(buf[_SHAPE_AT])
    per_row_gamma = buf[_N_COUNT_TABLE] < 0  # no count table: lgamma and psi row by row
    for k in range(len(grad)):
        grad[k] = 0.0
    table = buf[int(buf[_AT_FACTORS]):int(buf[_AT_FACTORS]) + n_factors * len(_FACTOR)].reshape(
        n_factors, len(_FACTOR))
    A = buf[int(buf[_AT_A]):int(buf[_AT_A]) + p * p].reshape(p, p)
    beta = np.zeros(p)  # the coordinates are the coefficients of the standardised columns: beta = A x[:p] - shift
    for k in range(p):
        for m in range(p):
            beta[k] += A[k, m] * x[m]
    g_beta = np.zeros(p)
    # every factor's effects in one flat array, factor f's group j at u_at[f] + j q_f
    q_max, u_at = 1, np.zeros(n_factors + 1, np.int64)
    for f in range(n_factors):
        q_max = max(q_max, int(table[f, _F_Q]))
        u_at[f + 1] = u_at[f] + int(table[f, _F_J]) * int(table[f, _F_Q])
    Ls, taus, omegas = np.zeros((n_factors, q_max, q_max)), np.zeros((n_factors, q_max)), np.zeros(
        (n_factors, q_max, q_max))
    u_all, g_u_all = np.empty(u_at[n_factors]), np.zeros(u_at[n_factors])
    lp_scales = np.zeros(n_factors)
    for f in range(n_factors):  # scales and effects: the centred ones around C_j beta' (before the shift)
        q = int(table[f, _F_Q])
        L, tau, omega, lp_scales[f] = _factor_scale(x, buf, table[f], grad, True)
        Ls[f, :q, :q], taus[f, :q], omegas[f, :q, :q] = L, tau, omega
        u_all[u_at[f]:u_at[f + 1]] = _effects(x, buf, table[f], L, beta).ravel()
    _shift_fixed_effects(buf, table, u_all, u_at, beta)
    lp = buf[_CONSTANT] + _fixed_prior(beta, buf[int(buf[_AT_BETA_MU]):int(buf[_AT_BETA_MU]) + p],
                                       buf[int(buf[_AT_BETA_SD]):int(buf[_AT_BETA_SD]) + p], g_beta)
    for f in range(n_factors):
        lp += lp_scales[f]
    shape, log_shape, d_shape = 1.0, 0.0, 0.0
    if family == 2:
        shape_prior = buf[int(buf[_AT_SHAPE_PRIOR]):int(buf[_AT_SHAPE_PRIOR]) + 4]
        lp_shape, d_log_shape, shape = _scale_prior(int(shape_prior[0]), shape_prior[1], shape_prior[2], False,
                                                    x[shape_at])
        log_shape = math.log(shape)
        lp += lp_shape + n * shape * log_shape
        grad[shape_at] += d_log_shape
        if per_row_gamma:
            lp -= n * math.lgamma(shape)
            d_shape -= n * _digamma(shape)
        else:
            at_counts = int(buf[_AT_COUNT_TABLE])
            lp_counts, d_counts = _count_table_terms(buf[at_counts:at_counts + int(buf[_N_COUNT_TABLE])], shape)
            lp += lp_counts
            d_shape += d_counts
    # eta, then each row's log-likelihood term and r_i = dl_i/deta_i, then r into the gradients of beta and of
    # the effects: simple passes over contiguous arrays (one fused pass with indirect reads measured 2x slower)
    X = buf[int(buf[_AT_X]):int(buf[_AT_X]) + n * p].reshape(n, p)
    eta = _linear_predictor(buf, table, X, beta, u_all, u_at)
    r = np.empty(n)
    lp_rows, d_shape_rows = _row_terms(family, buf[int(buf[_AT_Y]):int(buf[_AT_Y]) + n],
                                       buf[int(buf[_AT_SIZE]):int(buf[_AT_SIZE]) + n], eta, shape, log_shape,
                                       per_row_gamma, r)
    lp += lp_rows
    d_shape += d_shape_rows
    _pass_to_coefficients(buf, table, X, r, g_beta, g_u_all, u_at)
    if family == 2:
        grad[shape_at] += d_shape * shape
    # g_beta (of beta) through the shift into the non-centred effects' g_u; then the group effects' priors and the
    # chain rule to their coordinates and to L, the centred factors first, which add their part of g_beta (of beta')
    _shift_gradient(buf, table, g_beta, g_u_all, u_at)
    lp = _effect_priors(lp, x, buf, table, Ls, taus, omegas, u_all, g_u_all, u_at, True, grad, g_beta)
    lp = _effect_priors(lp, x, buf, table, Ls, taus, omegas, u_all, g_u_all, u_at, False, grad, g_beta)
    for m in range(p):  # to the standardised coordinates: A' g_beta
        for k in range(p):
            grad[m] += A[k, m] * g_beta[k]
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _add_centre_shift(buf, at_centre, n_effects, beta, sampled, b):
    """b += C (beta - beta') per centred coefficient: from the sampled b' to the graph's b (module docstring)."""
    p = len(beta)
    for i in range(n_effects):
        c = 0.0
        for k in range(p):
            c += buf[at_centre + i * p + k] * (beta[k] - sampled[k])
        b[i] += c


@numba.njit(cache=True, nogil=True, error_model="numpy")
def expand(x, buf, out):
    """:func:`_expand` at the coordinates z of the partially centred and scaled factors (the graph's z is
    reported)."""
    _expand(_latent_scaled(_partially_centred(x, buf)[0], buf), buf, out)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _expand(x, buf, out):
    """The reported values at ``x``: beta, per factor tau, the correlation Cholesky factor (when correlated), u
    and z (non-centred) or b_j = b'_j + C_j (beta - beta') (centred: the graph's coefficients); then the negative
    binomial shape."""
    p, n_factors = int(buf[_P]), int(buf[_N_FACTORS])
    table = buf[int(buf[_AT_FACTORS]):int(buf[_AT_FACTORS]) + n_factors * len(_FACTOR)].reshape(
        n_factors, len(_FACTOR))
    A = buf[int(buf[_AT_A]):int(buf[_AT_A]) + p * p].reshape(p, p)
    beta = np.zeros(p)
    for k in range(p):
        for m in range(p):
            beta[k] += A[k, m] * x[m]
    sampled = beta.copy()  # beta', around which the centred effects are
    dummy = np.zeros(len(x))
    u_at = np.zeros(n_factors + 1, np.int64)
    for f in range(n_factors):
        u_at[f + 1] = u_at[f] + int(table[f, _F_J]) * int(table[f, _F_Q])
    u_all = np.zeros(u_at[n_factors])
    for f in range(n_factors):  # the non-centred effects, to shift beta as log_density does
        if table[f, _F_CENTRED] < 0.5:
            L = _factor_scale(x, buf, table[f], dummy, False)[0]
            u_all[u_at[f]:u_at[f + 1]] = _effects(x, buf, table[f], L, beta).ravel()
    _shift_fixed_effects(buf, table, u_all, u_at, beta)
    out[:p] = beta
    at = p
    for f in range(n_factors):
        row = table[f]
        q, J = int(row[_F_Q]), int(row[_F_J])
        L, tau, omega, _ = _factor_scale(x, buf, row, dummy, False)
        out[at:at + q] = tau
        at += q
        if row[_F_CORRELATED] > 0.5:
            out[at:at + q * q] = omega.ravel()
            at += q * q
        u = _effects(x, buf, row, L, sampled)
        out[at:at + J * q] = u.ravel()
        at += J * q
        x_eff = int(row[_F_X_EFFECTS])
        out[at:at + J * q] = x[x_eff:x_eff + J * q]  # z, or b'
        if row[_F_CENTRED] > 0.5:
            _add_centre_shift(buf, int(row[_F_AT_CENTRE]), J * q, beta, sampled, out[at:at + J * q])
        at += J * q
    if int(buf[_FAMILY]) == 2:
        out[at] = math.exp(x[int(buf[_SHAPE_AT])])


# --- nutpie's C callbacks -------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _logp_arrays(dim, x_ptr, grad_ptr, user_data):
    header = numba.carray(user_data, (len(_HEADER),), np.float64)
    n = int(header[_N_DIM])
    buf = numba.carray(user_data, (int(header[_LENGTH]),), np.float64)
    return (n if dim == n else -1), buf, numba.carray(x_ptr, (n,)), numba.carray(grad_ptr, (n,))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _finish(value, grad, logp_ptr):
    """nutpie's return codes: 0 ok, 4 log density or 3 gradient not finite (a divergence)."""
    logp_ptr[0] = value
    if not np.isfinite(value):
        return 4
    for k in range(len(grad)):
        if not np.isfinite(grad[k]):
            return 3
    return 0


@functools.cache
def numba_callbacks():
    """The Numba-compiled callbacks (compiled on first use, then loaded from Numba's on-disk cache); return
    codes as nutpie's PyMC callbacks (0 ok, 4 / 3 log density / gradient not finite, -1 wrong dimension)."""
    double_ptr = numba.types.CPointer(numba.types.double)
    logp_signature = numba.types.int64(numba.types.uint64, double_ptr, double_ptr, double_ptr, numba.types.voidptr)
    expand_signature = numba.types.int64(numba.types.uint64, numba.types.uint64, double_ptr, double_ptr,
                                         numba.types.voidptr)

    @numba.cfunc(logp_signature, cache=True, error_model="numpy")
    def glmm_logp(dim, x_ptr, grad_ptr, logp_ptr, user_data):
        n, buf, x, grad = _logp_arrays(dim, x_ptr, grad_ptr, user_data)
        return -1 if n < 0 else _finish(log_density(x, buf, grad), grad, logp_ptr)

    @numba.cfunc(expand_signature, cache=True, error_model="numpy")
    def glmm_expand(dim, n_expanded, x_ptr, out_ptr, user_data):
        header = numba.carray(user_data, (len(_HEADER),), np.float64)
        n, m = int(header[_N_DIM]), int(header[_N_EXPANDED])
        if dim != n or n_expanded != m:
            return -1
        buf = numba.carray(user_data, (int(header[_LENGTH]),), np.float64)
        expand(numba.carray(x_ptr, (n,)), buf, numba.carray(out_ptr, (m,)))
        return 0

    return glmm_logp, glmm_expand
