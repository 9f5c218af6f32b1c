/* The two-level Gaussian kernel of bayeshlm/bayes/kernel.py compiled ahead of time (issue 27: a first fit
 * without the Numba compile). One grouping factor integrated out, no sampled factors, one sigma^2 or known
 * level-1 variances: the log posterior density and its gradient that kernel.py's Numba callback
 * ``logp_two_level`` computes, step for step in the same order of floating-point operations, reading the same
 * packed buffer (layout in kernel.py; LAYOUT below names the fields this file reads, and kernel.py uses this
 * extension only when they equal its own). The formulas are in kernel.py's module docstring:
 *
 *   A = s Z'Z,  b = s (Z'y - Z'X beta),  M = I + L'A L = C C',  w = C^{-1} L'b,
 *   log p(y | beta, T, sigma^2) = -1/2 [N log 2 pi + log|R| + sum_j log|M_j| + s e'e - sum_j |w_j|^2]
 *
 * (R&B 2002 eq. 3.52 in Cholesky form) plus the priors of beta, of the scales and LKJ(eta) on the correlation
 * factor, with the gradient by Fisher's identity. Per-group arrays are stored groups last (q, q, J).
 */
#define PY_SSIZE_T_CLEAN
#define _DEFAULT_SOURCE
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* kernel.py's _HEADER, _LEVEL_FIELDS and _ARRAYS, in order */
static const char *HEADER[] = {"levels", "p", "p_ext", "n_sampled", "n_scale", "has_sigma", "n_obs", "logdet_V",
                               "sigma_variance", "n_components", "n_level1", "ar1", "n_pairs", "n_dim", "length"};
static const char *LEVEL_FIELDS[] = {"q", "J", "correlated", "eta", "tau_variance"};
static const char *ARRAYS[] = {"ZtZ0", "ZtX0", "Zty0", "ZtZ1", "ZtX1", "Zty1", "Z0tZ1", "parent", "XtX", "Xty", "yty",
                               "rows_per_component", "beta_mu", "beta_sd", "scale_code", "scale_a", "scale_b",
                               "scale_on_variance", "sampled", "centre"};
#define N_HEADER 15
#define N_LEVEL_FIELDS 5
#define N_ARRAYS 20
enum { H_P = 1, H_P_EXT = 2, H_HAS_SIGMA = 5, H_N_OBS = 6, H_LOGDET_V = 7, H_N_LEVEL1 = 10, H_N_DIM = 13 };
enum { L_Q = 0, L_J = 1, L_CORRELATED = 2, L_ETA = 3 };
enum { A_ZTZ0 = 0, A_ZTX0 = 1, A_ZTY0 = 2, A_XTX = 8, A_XTY = 9, A_YTY = 10, A_BETA_MU = 12, A_BETA_SD = 13,
       A_SCALE_CODE = 14, A_SCALE_A = 15, A_SCALE_B = 16, A_SCALE_ON_VARIANCE = 17 };
#define LEVELS_AT N_HEADER
#define ARRAYS_AT (LEVELS_AT + 2 * N_LEVEL_FIELDS)

static double LOG_2PI;

static const double *array_at(const double *buf, int k) { return buf + (Py_ssize_t)buf[ARRAYS_AT + k]; }

static Py_ssize_t array_length(const double *buf, int k) {
    return (Py_ssize_t)buf[ARRAYS_AT + k + 1] - (Py_ssize_t)buf[ARRAYS_AT + k];
}

static double level_field(const double *buf, int field) { return buf[LEVELS_AT + field]; }

/* Log prior (normalising constant included) and Jacobian of a scale x = exp(theta) and its derivative; with
 * on_variance the density is that of x^2. Families by code: HalfFlat, HalfNormal, HalfStudentT, HalfCauchy,
 * Exponential (kernel.py's SCALE_FAMILIES order). */
static void scale_log_prior(int code, double a, double b, int on_variance, double theta, double *lp_out,
                            double *dlp_out) {
    double x = exp(theta), t, dt, logjac, dlogjac, lp, dlp;
    if (on_variance) {
        t = x * x; dt = 2.0 * x * x; logjac = log(2.0) + 2.0 * theta; dlogjac = 2.0;
    } else {
        t = x; dt = x; logjac = theta; dlogjac = 1.0;
    }
    if (code == 0) {
        lp = 0.0; dlp = 0.0;
    } else if (code == 1) {
        double ta = t / a;
        lp = 0.5 * log(2.0 / M_PI) - log(a) - 0.5 * (ta * ta);
        dlp = -t / (a * a);
    } else if (code == 2) {
        int sign;
        double r = t * t / (a * b * b);
        lp = (log(2.0) + lgamma_r((a + 1.0) / 2.0, &sign) - lgamma_r(a / 2.0, &sign)
              - 0.5 * log(a * M_PI * b * b) - (a + 1.0) / 2.0 * log1p(r));
        dlp = -(a + 1.0) * t / (a * b * b * (1.0 + r));
    } else if (code == 3) {
        double ta = t / a;
        lp = log(2.0 / (M_PI * a)) - log1p(ta * ta);
        dlp = -2.0 * t / (a * a + t * t);
    } else {
        lp = log(a) - a * t;
        dlp = -a;
    }
    *lp_out = lp + logjac;
    *dlp_out = dlp * dt + dlogjac;
}

static double lkj_log_normaliser(double eta, int q) {
    int sign;
    double out = (q - 1) * lgamma_r(eta + 0.5 * (q - 1), &sign);
    for (int k = 1; k < q; k++)
        out -= 0.5 * k * log(M_PI) + lgamma_r(eta + 0.5 * (q - 1 - k), &sign);
    return out;
}

/* L_Omega (q x q) from the canonical partial correlations tanh(y), with z = tanh(y) and the remaining squared
 * row norm before each entry (rest), as kernel.py's _correlation_factor. */
static void correlation_factor(const double *y, int q, double *L, double *z, double *rest) {
    for (int i = 0; i < q * q; i++) { L[i] = 0.0; z[i] = 0.0; rest[i] = 1.0; }
    L[0] = 1.0;
    int pos = 0;
    for (int i = 1; i < q; i++) {
        double acc = 0.0;
        for (int k = 0; k < i; k++) {
            z[i * q + k] = tanh(y[pos]);
            pos++;
            rest[i * q + k] = 1.0 - acc;
            L[i * q + k] = z[i * q + k] * sqrt(rest[i * q + k]);
            acc += L[i * q + k] * L[i * q + k];
        }
        rest[i * q + i] = 1.0 - acc;
        L[i * q + i] = sqrt(rest[i * q + i]);
    }
}

/* LKJ(eta) log density of L_Omega plus the log-Jacobian of y -> L_Omega; adds to grad_y the gradient of that plus
 * sum gL * L_Omega (kernel.py's _correlation_terms). */
static double correlation_terms(const double *y, int q, double eta, const double *gL, double *grad_y,
                                double *work) {
    double *L = work, *z = work + q * q, *rest = work + 2 * q * q;
    correlation_factor(y, q, L, z, rest);
    double lp = lkj_log_normaliser(eta, q);
    int pos = q * (q - 1) / 2;
    for (int i = q - 1; i > 0; i--) {
        double c = 2.0 * eta - 2.0 + q - (i + 1);
        double Lii = L[i * q + i];
        lp += c * log(Lii);
        for (int k = 0; k < i; k++) {
            double zik = z[i * q + k];
            lp += log(1.0 - zik * zik) + 0.5 * log(rest[i * q + k]);
        }
        double bar_rest = (gL[i * q + i] + c / Lii) * (0.5 / Lii);
        pos -= i;
        for (int k = i - 1; k >= 0; k--) {
            double zik = z[i * q + k], root = sqrt(rest[i * q + k]);
            double bar_L = gL[i * q + k] - 2.0 * L[i * q + k] * bar_rest;
            double bar_z = bar_L * root - 2.0 * zik / (1.0 - zik * zik);
            bar_rest = bar_rest + bar_L * zik * 0.5 / root + 0.5 / rest[i * q + k];
            grad_y[pos + k] += bar_z * (1.0 - zik * zik);
        }
    }
    return lp;
}

/* sum log values[j] with one logarithm per run of factors whose product stays in range; NaN if a value is not
 * positive (kernel.py's _sum_of_logs) */
static double sum_of_logs(const double *values, Py_ssize_t n) {
    double total = 0.0, product = 1.0;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (!(values[j] > 0.0))
            return NAN;
        product *= values[j];
        if (product > 1e200 || product < 1e-200) {
            total += log(product);
            product = 1.0;
        }
    }
    return total + log(product);
}

#define AT3(a, b, j) (((Py_ssize_t)(a) * q + (b)) * J + (j))
#define AT2(a, j) ((Py_ssize_t)(a) * J + (j))

/* C C' = M per group, inv = 1 / diag(C); multiplies pivots by each |M| */
static void cholesky_batch(int q, Py_ssize_t J, const double *M, double *C, double *inv, double *pivots) {
    for (int c = 0; c < q; c++) {
        for (Py_ssize_t j = 0; j < J; j++) {
            double acc = M[AT3(c, c, j)];
            for (int k = 0; k < c; k++)
                acc -= C[AT3(c, k, j)] * C[AT3(c, k, j)];
            pivots[j] *= acc;
            C[AT3(c, c, j)] = sqrt(acc);
            inv[AT2(c, j)] = 1.0 / C[AT3(c, c, j)];
        }
        for (int r = c + 1; r < q; r++)
            for (Py_ssize_t j = 0; j < J; j++) {
                double acc = M[AT3(r, c, j)];
                for (int k = 0; k < c; k++)
                    acc -= C[AT3(r, k, j)] * C[AT3(c, k, j)];
                C[AT3(r, c, j)] = acc * inv[AT2(c, j)];
            }
    }
}

/* out = C^{-1} rhs per group */
static void forward_batch(int q, Py_ssize_t J, const double *C, const double *inv, const double *rhs, double *out) {
    for (int a = 0; a < q; a++)
        for (Py_ssize_t j = 0; j < J; j++) {
            double acc = rhs[AT2(a, j)];
            for (int k = 0; k < a; k++)
                acc -= C[AT3(a, k, j)] * out[AT2(k, j)];
            out[AT2(a, j)] = acc * inv[AT2(a, j)];
        }
}

/* out = C^{-T} rhs per group */
static void backward_batch(int q, Py_ssize_t J, const double *C, const double *inv, const double *rhs, double *out) {
    for (int a = q - 1; a >= 0; a--)
        for (Py_ssize_t j = 0; j < J; j++) {
            double acc = rhs[AT2(a, j)];
            for (int k = a + 1; k < q; k++)
                acc -= C[AT3(k, a, j)] * out[AT2(k, j)];
            out[AT2(a, j)] = acc * inv[AT2(a, j)];
        }
}

/* out = (C C')^{-1} per group; unit and column: (q, J) scratch */
static void inverse_batch(int q, Py_ssize_t J, const double *C, const double *inv, double *out, double *unit,
                          double *column) {
    for (int c = 0; c < q; c++) {
        for (Py_ssize_t i = 0; i < q * J; i++)
            unit[i] = 0.0;
        for (Py_ssize_t j = 0; j < J; j++)
            unit[AT2(c, j)] = 1.0;
        forward_batch(q, J, C, inv, unit, column);
        backward_batch(q, J, C, inv, column, unit);
        for (int a = 0; a < q; a++)
            for (Py_ssize_t j = 0; j < J; j++)
                out[AT3(a, c, j)] = unit[AT2(a, j)];
    }
}

/* What kernel.py's _integrate_top computes for the only level of a two-level model (K, k zero): log|M| (return
 * value), sum |w|^2 and the sigma terms; adds -s sum Z'X m to grad_c and b z' - s Z'Z L (z z' + S) to G. */
static double integrate_two_level(const double *buf, const double *c, int p, double s, const double *L, int q,
                                  double *grad_c, double *G, double *reduction_out, double *sigma_terms_out,
                                  double *work) {
    Py_ssize_t J = (Py_ssize_t)level_field(buf, L_J);
    const double *ZtZ = array_at(buf, A_ZTZ0), *ZtX = array_at(buf, A_ZTX0), *Zty = array_at(buf, A_ZTY0);
    Py_ssize_t qqJ = (Py_ssize_t)q * q * J, qJ = (Py_ssize_t)q * J;
    double *b = work, *AL = b + qJ, *M = AL + qqJ, *C = M + qqJ, *inv = C + qqJ, *pivots = inv + qJ;
    double *t = pivots + J, *w = t + qJ, *z = w + qJ, *S = z + qJ, *m = S + qqJ, *unit = m + qJ, *column = unit + qJ;
    /* b = s (Z'y - Z'X c) */
    for (int a = 0; a < q; a++) {
        for (Py_ssize_t j = 0; j < J; j++)
            b[AT2(a, j)] = Zty[AT2(a, j)];
        for (int k = 0; k < p; k++)
            for (Py_ssize_t j = 0; j < J; j++)
                b[AT2(a, j)] -= ZtX[((Py_ssize_t)a * p + k) * J + j] * c[k];
        for (Py_ssize_t j = 0; j < J; j++)
            b[AT2(a, j)] *= s;
    }
    /* AL = s Z'Z L */
    for (Py_ssize_t i = 0; i < qqJ; i++)
        AL[i] = 0.0;
    for (int a = 0; a < q; a++)
        for (int k = 0; k < q; k++)
            for (int d = k; d < q; d++)
                for (Py_ssize_t j = 0; j < J; j++)
                    AL[AT3(a, k, j)] += s * ZtZ[AT3(a, d, j)] * L[d * q + k];
    /* t = L'b */
    for (Py_ssize_t i = 0; i < qJ; i++)
        t[i] = 0.0;
    for (int a = 0; a < q; a++)
        for (int d = a; d < q; d++)
            for (Py_ssize_t j = 0; j < J; j++)
                t[AT2(a, j)] += L[d * q + a] * b[AT2(d, j)];
    /* M = I + L'AL = C C', w = C^{-1} t */
    for (Py_ssize_t i = 0; i < qqJ; i++) {
        M[i] = 0.0;
        C[i] = 0.0;
    }
    for (int a = 0; a < q; a++) {
        for (Py_ssize_t j = 0; j < J; j++)
            M[AT3(a, a, j)] = 1.0;
        for (int k = 0; k < q; k++)
            for (int d = a; d < q; d++)
                for (Py_ssize_t j = 0; j < J; j++)
                    M[AT3(a, k, j)] += L[d * q + a] * AL[AT3(d, k, j)];
    }
    for (Py_ssize_t j = 0; j < J; j++)
        pivots[j] = 1.0;
    cholesky_batch(q, J, M, C, inv, pivots);
    forward_batch(q, J, C, inv, t, w);
    double logdet = sum_of_logs(pivots, J);
    backward_batch(q, J, C, inv, w, z);
    inverse_batch(q, J, C, inv, S, unit, column);
    /* the gradient terms (kernel.py's _top_gradient): m = L z */
    for (Py_ssize_t i = 0; i < qJ; i++)
        m[i] = 0.0;
    for (int a = 0; a < q; a++)
        for (int d = 0; d <= a; d++)
            for (Py_ssize_t j = 0; j < J; j++)
                m[AT2(a, j)] += L[a * q + d] * z[AT2(d, j)];
    for (int e = 0; e < p; e++) {
        double acc = 0.0;
        for (int a = 0; a < q; a++)
            for (Py_ssize_t j = 0; j < J; j++)
                acc += ZtX[((Py_ssize_t)a * p + e) * J + j] * m[AT2(a, j)];
        grad_c[e] -= s * acc;
    }
    for (int a = 0; a < q; a++)
        for (int e = 0; e <= a; e++) {
            double acc = 0.0;
            for (Py_ssize_t j = 0; j < J; j++) {
                acc += b[AT2(a, j)] * z[AT2(e, j)];
                for (int d = 0; d < q; d++)
                    acc -= AL[AT3(a, d, j)] * (z[AT2(d, j)] * z[AT2(e, j)] + S[AT3(d, e, j)]);
            }
            G[a * q + e] += acc;
        }
    /* the sigma terms m'(A m) - 2 m'b + tr(A L S L') (kernel.py's _sigma_terms) */
    double total = 0.0;
    for (int a = 0; a < q; a++) {
        for (Py_ssize_t j = 0; j < J; j++) {
            double Az = 0.0;
            for (int d = 0; d < q; d++)
                Az += AL[AT3(a, d, j)] * z[AT2(d, j)];
            total += m[AT2(a, j)] * (Az - 2.0 * b[AT2(a, j)]);
        }
        for (int e = 0; e < q; e++)
            for (int d = 0; d <= a; d++)
                for (Py_ssize_t j = 0; j < J; j++)
                    total += AL[AT3(a, e, j)] * L[a * q + d] * S[AT3(d, e, j)];
    }
    double reduction = 0.0;
    for (Py_ssize_t i = 0; i < qJ; i++)
        reduction += w[i] * w[i];
    *reduction_out = reduction;
    *sigma_terms_out = total;
    return logdet;
}

static double log_density(const double *buf, const double *x, double *grad, double *work) {
    int p = (int)buf[H_P], p_ext = (int)buf[H_P_EXT], has_sigma = buf[H_HAS_SIGMA] > 0;
    int q = (int)level_field(buf, L_Q), correlated = level_field(buf, L_CORRELATED) > 0;
    double eta = level_field(buf, L_ETA), n_obs = buf[H_N_OBS];
    const double *beta_mu = array_at(buf, A_BETA_MU), *beta_sd = array_at(buf, A_BETA_SD);
    const double *scale_code = array_at(buf, A_SCALE_CODE), *scale_a = array_at(buf, A_SCALE_A);
    const double *scale_b = array_at(buf, A_SCALE_B), *on_variance = array_at(buf, A_SCALE_ON_VARIANCE);
    Py_ssize_t n_scale = array_length(buf, A_SCALE_CODE);
    int n_dim = (int)buf[H_N_DIM];
    /* the priors of beta and of the scales (kernel.py's _density_setup) */
    for (int k = 0; k < n_dim; k++)
        grad[k] = 0.0;
    double lp = 0.0;
    for (int k = 0; k < p; k++)
        if (isfinite(beta_sd[k])) {
            double d = (x[k] - beta_mu[k]) / beta_sd[k];
            lp += -0.5 * d * d - log(beta_sd[k]) - 0.5 * LOG_2PI;
            grad[k] -= d / beta_sd[k];
        }
    for (Py_ssize_t i = 0; i < n_scale; i++) {
        double lps, dlps;
        scale_log_prior((int)scale_code[i], scale_a[i], scale_b[i], on_variance[i] > 0, x[p_ext + i], &lps, &dlps);
        lp += lps;
        grad[p_ext + i] += dlps;
    }
    double s = has_sigma ? exp(-2.0 * x[p_ext]) : 1.0;
    /* the level's tau, L_Omega and L = diag(tau) L_Omega (kernel.py's _positions and _factor_at) */
    int tau_at = p + (int)buf[H_N_LEVEL1], y_at = tau_at + q;
    double *tau = work, *L_omega = tau + q, *L = L_omega + q * q, *G = L + q * q, *gL_omega = G + q * q;
    double *grad_c = gL_omega + q * q, *corr_work = grad_c + p, *rest_work = corr_work + 3 * q * q;
    for (int i = 0; i < q; i++)
        tau[i] = exp(x[tau_at + i]);
    if (correlated) {
        correlation_factor(x + y_at, q, L_omega, corr_work, corr_work + q * q);
    } else {
        for (int i = 0; i < q * q; i++)
            L_omega[i] = 0.0;
        for (int i = 0; i < q; i++)
            L_omega[i * q + i] = 1.0;
    }
    for (int i = 0; i < q; i++)
        for (int k = 0; k < q; k++)
            L[i * q + k] = tau[i] * L_omega[i * q + k];
    /* e'e and s (X'y - X'X beta) (kernel.py's _residual_terms) */
    const double *XtX = array_at(buf, A_XTX), *Xty = array_at(buf, A_XTY);
    double ee = array_at(buf, A_YTY)[0];
    for (int k = 0; k < p; k++) {
        double acc = 0.0;
        for (int j = 0; j < p; j++)
            acc += XtX[k * p + j] * x[j];
        double xb = Xty[k] - acc;
        ee -= x[k] * (Xty[k] + xb);
        grad_c[k] = s * xb;
    }
    for (int i = 0; i < q * q; i++)
        G[i] = 0.0;
    double reduction, sigma_terms;
    double logdet_M = integrate_two_level(buf, x, p, s, L, q, grad_c, G, &reduction, &sigma_terms, rest_work);
    /* the integrated likelihood and the rest of the gradient (kernel.py's _density_finish) */
    if (!isfinite(logdet_M))
        return -INFINITY;
    double logdet_R = has_sigma ? -n_obs * log(s) : buf[H_LOGDET_V];
    lp += -0.5 * (n_obs * LOG_2PI + logdet_R + logdet_M + s * ee - reduction);
    for (int k = 0; k < p; k++)
        grad[k] += grad_c[k];
    if (has_sigma)
        grad[p_ext] += -n_obs + s * ee + sigma_terms;
    /* chain rule from dL to log tau and the correlation coordinates, LKJ density (kernel.py's _level_terms) */
    for (int i = 0; i < q * q; i++)
        gL_omega[i] = 0.0;
    for (int i = 0; i < q; i++) {
        double acc = 0.0;
        for (int k = 0; k <= i; k++) {
            acc += G[i * q + k] * L_omega[i * q + k];
            gL_omega[i * q + k] = tau[i] * G[i * q + k];
        }
        grad[tau_at + i] += tau[i] * acc;
    }
    if (correlated)
        lp += correlation_terms(x + y_at, q, eta, gL_omega, grad + y_at, corr_work);
    return lp;
}

/* nutpie's log-density callback; codes as its PyMC callbacks: 0 ok, 4 log density or 3 gradient not finite,
 * -1 wrong dimension, -2 out of memory */
static int64_t logp_two_level(uint64_t dim, const double *x, double *grad, double *logp, void *user_data) {
    const double *buf = (const double *)user_data;
    int n_dim = (int)buf[H_N_DIM];
    if ((int64_t)dim != n_dim)
        return -1;
    int p = (int)buf[H_P], q = (int)level_field(buf, L_Q);
    Py_ssize_t J = (Py_ssize_t)level_field(buf, L_J);
    Py_ssize_t size = q + 4 * (Py_ssize_t)q * q + p + 3 * (Py_ssize_t)q * q  /* log_density's own arrays */
                      + 5 * (Py_ssize_t)q * q * J + 8 * (Py_ssize_t)q * J + J; /* integrate_two_level's */
    double *work = malloc((size_t)(size > 0 ? size : 1) * sizeof(double));
    if (work == NULL)
        return -2;
    double value = log_density(buf, x, grad, work);
    free(work);
    *logp = value;
    if (!isfinite(value))
        return 4;
    for (int k = 0; k < n_dim; k++)
        if (!isfinite(grad[k]))
            return 3;
    return 0;
}

/* nutpie's reported-values callback: x itself */
static int64_t unconstrained_values(uint64_t dim, uint64_t n_expanded, const double *x, double *out,
                                    void *user_data) {
    (void)user_data;
    if (dim != n_expanded)
        return -1;
    for (uint64_t k = 0; k < dim; k++)
        out[k] = x[k];
    return 0;
}

/* Exact draws of one level's group effects given (beta, T, sigma^2) per posterior draw, as bayes/marginal_numba.py's
 * Numba loop _draw_one_level (same order of operations, same draws): per draw d and group j,
 * A = sum_k s_k Z'Z, b = sum_k s_k (Z'y - Z'X beta), C C' = M = I + L'A L, w = C^{-1} L'b,
 * u = L C^{-T} (w + noise). ZtZ (K, J, q, width), ZtX (K, J, q, P), Zty (K, J, q), s (S, K), beta (S, P),
 * L (S, q, q), noise and out (S, J, q); the first q columns of ZtZ are the level's own. Returns -2 when out
 * of memory, else 0. */
static int64_t draw_one_level(int64_t K, int64_t J, int64_t q, int64_t width, int64_t P, int64_t S,
                              const double *ZtZ, const double *ZtX, const double *Zty, const double *s,
                              const double *beta, const double *L, const double *noise, double *out) {
    double *work = malloc((size_t)(3 * q * q + 3 * q + 1) * sizeof(double));
    if (work == NULL)
        return -2;
    double *A = work, *M = A + q * q, *C = M + q * q, *b = C + q * q, *t = b + q, *v = t + q;
    for (int64_t i = 0; i < q * q; i++)
        C[i] = 0.0;
    for (int64_t d = 0; d < S; d++) {
        const double *Ld = L + d * q * q, *weights = s + d * K, *beta_d = beta + d * P;
        for (int64_t j = 0; j < J; j++) {
            for (int64_t i = 0; i < q * q; i++)
                A[i] = 0.0;
            for (int64_t r = 0; r < q; r++)
                b[r] = 0.0;
            for (int64_t kk = 0; kk < K; kk++) {
                double weight = weights[kk];
                for (int64_t r = 0; r < q; r++) {
                    double residual = Zty[(kk * J + j) * q + r];
                    for (int64_t c = 0; c < P; c++)
                        residual -= ZtX[((kk * J + j) * q + r) * P + c] * beta_d[c];
                    b[r] += weight * residual;
                    for (int64_t c = 0; c < q; c++)
                        A[r * q + c] += weight * ZtZ[((kk * J + j) * q + r) * width + c];
                }
            }
            for (int64_t r = 0; r < q; r++) {  /* M = I + L'A L, t = L'b */
                for (int64_t c = 0; c < q; c++) {
                    double total = r == c ? 1.0 : 0.0;
                    for (int64_t e = r; e < q; e++)
                        for (int64_t f = c; f < q; f++)
                            total += Ld[e * q + r] * A[e * q + f] * Ld[f * q + c];
                    M[r * q + c] = total;
                }
                double total = 0.0;
                for (int64_t e = r; e < q; e++)
                    total += Ld[e * q + r] * b[e];
                t[r] = total;
            }
            for (int64_t c = 0; c < q; c++) {  /* C C' = M */
                double diagonal = M[c * q + c];
                for (int64_t e = 0; e < c; e++)
                    diagonal -= C[c * q + e] * C[c * q + e];
                C[c * q + c] = sqrt(diagonal);
                for (int64_t r = c + 1; r < q; r++) {
                    double total = M[r * q + c];
                    for (int64_t e = 0; e < c; e++)
                        total -= C[r * q + e] * C[c * q + e];
                    C[r * q + c] = total / C[c * q + c];
                }
            }
            for (int64_t r = 0; r < q; r++) {  /* v = C^{-1} t */
                double total = t[r];
                for (int64_t e = 0; e < r; e++)
                    total -= C[r * q + e] * v[e];
                v[r] = total / C[r * q + r];
            }
            for (int64_t a = 0; a < q; a++)
                v[a] += noise[(d * J + j) * q + a];
            for (int64_t r = q - 1; r >= 0; r--) {  /* z = C^{-T} v (in t), u = L z */
                double total = v[r];
                for (int64_t e = r + 1; e < q; e++)
                    total -= C[e * q + r] * t[e];
                t[r] = total / C[r * q + r];
            }
            for (int64_t r = 0; r < q; r++) {
                double total = 0.0;
                for (int64_t e = 0; e <= r; e++)
                    total += Ld[r * q + e] * t[e];
                out[(d * J + j) * q + r] = total;
            }
        }
    }
    free(work);
    return 0;
}

static PyObject *group_draws(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)draw_one_level);
}

static PyObject *callbacks(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return Py_BuildValue("(NN)", PyLong_FromVoidPtr((void *)logp_two_level),
                         PyLong_FromVoidPtr((void *)unconstrained_values));
}

static PyObject *names(const char **items, Py_ssize_t n) {
    PyObject *out = PyTuple_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyUnicode_FromString(items[i]);
        if (name == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, name);
    }
    return out;
}

static PyMethodDef METHODS[] = {
    {"callbacks", callbacks, METH_NOARGS,
     "The addresses of the log-density and reported-values C callbacks (nutpie's signatures)."},
    {"group_draws", group_draws, METH_NOARGS, "The address of the one-level group-effect draws (draw_one_level)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_two_level_kernel",
                                    "The two-level Gaussian kernel, compiled ahead of time (see kernel.py).", -1,
                                    METHODS};

PyMODINIT_FUNC PyInit__two_level_kernel(void) {
    LOG_2PI = log(2.0 * M_PI);
    PyObject *module = PyModule_Create(&MODULE);
    if (module == NULL)
        return NULL;
    PyObject *layout = Py_BuildValue("(NNN)", names(HEADER, N_HEADER), names(LEVEL_FIELDS, N_LEVEL_FIELDS),
                                     names(ARRAYS, N_ARRAYS));
    if (layout == NULL || PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
