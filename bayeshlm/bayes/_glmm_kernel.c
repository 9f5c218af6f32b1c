/* The hierarchical GLM kernel of bayeshlm/bayes/glmm_kernel.py compiled ahead of time (issues 24 and 27: a first
 * Bayesian HGLM fit without the Numba compile). The log posterior density, its gradient and the reported values
 * that glmm_kernel.py's Numba functions ``log_density`` and ``expand`` compute, block for block and in the same
 * order of floating-point operations, reading the same packed float64 buffer (layout in glmm_kernel.py; LAYOUT
 * below names its header and factor-row fields, the family codes and the scale prior families by code, and
 * glmm_kernel.py uses this extension only when they equal its own). The model and formulas are in glmm_kernel.py's
 * module docstring:
 *
 *   eta_i = x_i'beta + offset_i + sum_f z_fi'u_f[j(i)],  u_fj = L_f z_fj (non-centred) or b'_fj - C_fj beta'
 *   (centred, b'_fj ~ N(C_fj beta', L_f L_f')),  L_f = diag(tau_f) L_Omega,f,
 *   beta_k = beta'_k - sum over the non-centred factors' shift entries (k, a, P) of P'u_f[:, a],  beta' = A x[:p],
 *   z_f = z'_f + (lambda_f - 1) G_f P_f z'_f on a shifted factor's shifted coefficient (glmm_kernel.py's docstring),
 *   z_f = z'_f tau_f^-(1-w_f) for a partially centred factor (q = 1), with its log-Jacobian,
 *   z_fj = tau_f c_fj / (1 + v_fj) + z'_fj / sqrt(1 + v_fj), v_fj = tau_f^2 h_fj, for a conditionally centred
 *   factor (q = 1), with its log-Jacobian,
 *
 * rows: binomial logit, Poisson log or negative binomial (NB2) log; priors with their normalising constants;
 * LKJ(eta) on L_Omega through PyMC's CholeskyCorr transform. Matrices are row-major (q x q, or J x q).
 */
#define PY_SSIZE_T_CLEAN
#define _DEFAULT_SOURCE
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* No fused multiply-adds: Numba's LLVM does not contract a * b + c either, and the results must be Numba's. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* glmm_kernel.py's _HEADER and _FACTOR, in order */
static const char *HEADER[] = {"n_dim", "n_expanded", "length", "family", "n", "p", "n_factors", "shape_at",
                               "constant", "at_y", "at_size", "at_offset", "at_X", "at_beta_mu", "at_beta_sd",
                               "at_factors", "at_shape_prior", "at_A", "n_count_table", "at_count_table"};
static const char *FACTOR[] = {"q", "J", "correlated", "centred", "eta", "at_codes", "at_Z", "at_centre",
                               "x_effects", "x_tau", "x_corr", "at_prior", "at_corr", "n_shift", "at_shift",
                               "latent_scale", "at_shift_values", "partial", "at_conditional"};
#define N_HEADER 20
#define N_FACTOR 19
enum { H_N_DIM, H_N_EXPANDED, H_LENGTH, H_FAMILY, H_N, H_P, H_N_FACTORS, H_SHAPE_AT, H_CONSTANT, H_AT_Y, H_AT_SIZE,
       H_AT_OFFSET, H_AT_X, H_AT_BETA_MU, H_AT_BETA_SD, H_AT_FACTORS, H_AT_SHAPE_PRIOR, H_AT_A, H_N_COUNT_TABLE,
       H_AT_COUNT_TABLE };
enum { F_Q, F_J, F_CORRELATED, F_CENTRED, F_ETA, F_AT_CODES, F_AT_Z, F_AT_CENTRE, F_X_EFFECTS, F_X_TAU, F_X_CORR,
       F_AT_PRIOR, F_AT_CORR, F_N_SHIFT, F_AT_SHIFT, F_LATENT_SCALE, F_AT_SHIFT_VALUES,
       F_PARTIAL, F_AT_CONDITIONAL };
/* glmm_kernel.py's FAMILY_CODES (family, link, code) and SCALE_FAMILIES (name by code, PyMC's parameter names) */
static const char *FAMILIES[][2] = {{"binomial", "logit"}, {"bernoulli", "logit"}, {"poisson", "log"},
                                    {"negative_binomial", "log"}};
static const int FAMILY_CODE[] = {0, 0, 1, 2};
#define N_FAMILIES 4
enum { BINOMIAL = 0, POISSON = 1, NEGATIVE_BINOMIAL = 2 };
static const char *SCALES[][3] = {{"HalfFlat", NULL, NULL}, {"HalfNormal", "sigma", NULL},
                                  {"HalfStudentT", "nu", "sigma"}, {"HalfCauchy", "beta", NULL},
                                  {"Exponential", "lam", NULL}, {"Gamma", "alpha", "beta"}};
#define N_SCALES 6

/* constants Numba folds with the C library's log (set at import, never folded by this compiler) */
static double LOG_2PI, LOG_2_OVER_PI, LOG_2, LOG_PI;

#define AT(buf, k) ((Py_ssize_t)(buf)[k])

/* numba's max(a, b): b if b > a, else a (a when either is NaN) */
static double numba_max(double a, double b) { return b > a ? b : a; }

static double log_gamma(double x) {
    int sign;
    return lgamma_r(x, &sign);
}

/* Log prior of s = exp(theta) (of s^2 when on_variance) with its normalising constant and the log-Jacobian theta;
 * returns it, with d/d theta in *d_out and s (sqrt when on_variance) in *scale_out (glmm_kernel_numba._scale_prior). */
static double scale_prior(int code, double a, double b, int on_variance, double theta, double *d_out,
                          double *scale_out) {
    double v = exp(theta), lp, dlp;
    if (code == 0) {
        lp = 0.0;
        dlp = 0.0;
    } else if (code == 1) {
        double va = v / a;
        lp = 0.5 * LOG_2_OVER_PI - log(a) - 0.5 * (va * va);
        dlp = -v / (a * a);
    } else if (code == 2) {
        double r = v * v / (a * b * b);
        lp = (LOG_2 + log_gamma(0.5 * (a + 1.0)) - log_gamma(0.5 * a) - 0.5 * log(a * M_PI * b * b)
              - 0.5 * (a + 1.0) * log1p(r));
        dlp = -(a + 1.0) * v / (a * b * b * (1.0 + r));
    } else if (code == 3) {
        double va = v / a;
        lp = log(2.0 / (M_PI * a)) - log1p(va * va);
        dlp = -2.0 * v / (a * a + v * v);
    } else if (code == 4) {
        lp = log(a) - a * v;
        dlp = -a;
    } else {
        lp = a * log(b) - log_gamma(a) + (a - 1.0) * log(v) - b * v;
        dlp = (a - 1.0) / v - b;
    }
    *scale_out = on_variance ? sqrt(v) : v;
    *d_out = dlp * v + 1.0;
    return lp + theta;
}

/* psi(x) for x > 0: recurrence up to x >= 6, then the asymptotic series (glmm_kernel_numba._digamma) */
static double digamma(double x) {
    double out = 0.0;
    while (x < 6.0) {
        out -= 1.0 / x;
        x += 1.0;
    }
    double inv = 1.0 / x;
    double inv2 = inv * inv;
    return out + log(x) - 0.5 * inv - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (
        1.0 / 240 - inv2 / 132))));
}

/* L_Omega (q x q) from y: row i is (y_i1, ..., y_i,i-1, 1) / its norm (glmm_kernel_numba._lkj_factor) */
static void lkj_factor(const double *y, const double *positions, int q, double *L) {
    for (int i = 0; i < q * q; i++)
        L[i] = 0.0;
    for (int i = 0; i < q; i++)
        L[i * q + i] = 1.0;
    for (int i = 1; i < q; i++) {
        double norm2 = 1.0;
        for (int k = 0; k < i; k++) {
            double yk = y[(int)positions[i * q + k]];
            norm2 += yk * yk;
        }
        double s = sqrt(norm2);
        for (int k = 0; k < i; k++)
            L[i * q + k] = y[(int)positions[i * q + k]] / s;
        L[i * q + i] = 1.0 / s;
    }
}

/* LKJ(eta) log density of L_Omega with its normaliser plus the transform's log-Jacobian; adds their gradient and
 * that of sum(gL * L_Omega) to grad_y (glmm_kernel_numba._lkj_terms) */
static double lkj_terms(const double *y, const double *positions, int q, double eta, const double *gL,
                        double *grad_y) {
    double lp = (q - 1) * log_gamma(eta + 0.5 * (q - 1));
    for (int k = 1; k < q; k++)
        lp -= 0.5 * k * LOG_PI + log_gamma(eta + 0.5 * (q - 1 - k));
    double weight = 2.0 * eta + q - 1.0;
    for (int i = 1; i < q; i++) {
        double norm2 = 1.0;
        for (int k = 0; k < i; k++) {
            double yk = y[(int)positions[i * q + k]];
            norm2 += yk * yk;
        }
        double s = sqrt(norm2);
        lp -= 0.5 * weight * log(norm2);
        double along = gL[i * q + i];
        for (int k = 0; k < i; k++)
            along += gL[i * q + k] * y[(int)positions[i * q + k]];
        for (int m = 0; m < i; m++) {
            int at = (int)positions[i * q + m];
            grad_y[at] += -weight * y[at] / norm2 + gL[i * q + m] / s - y[at] * along / (s * norm2);
        }
    }
    return lp;
}

/* L = diag(tau) L_Omega, tau and L_Omega of one factor and the log prior of tau (returned); with want_grad adds
 * the prior's gradient (glmm_kernel_numba._factor_scale) */
static double factor_scale(const double *x, const double *buf, const double *row, double *grad, int want_grad,
                           double *L, double *tau, double *omega) {
    int q = (int)row[F_Q];
    Py_ssize_t x_tau = AT(row, F_X_TAU);
    const double *prior = buf + AT(row, F_AT_PRIOR);
    double lp = 0.0;
    for (int a = 0; a < q; a++) {
        int on_variance = prior[4 * a + 3] > 0.5;
        double d;
        double value = scale_prior((int)prior[4 * a], prior[4 * a + 1], prior[4 * a + 2], on_variance,
                                   x[x_tau + a], &d, &tau[a]);
        lp += value;
        if (want_grad)
            grad[x_tau + a] += d;
    }
    if (row[F_CORRELATED] > 0.5) {
        lkj_factor(x + AT(row, F_X_CORR), buf + AT(row, F_AT_CORR), q, omega);
    } else {
        for (int i = 0; i < q * q; i++)
            omega[i] = 0.0;
        for (int i = 0; i < q; i++)
            omega[i * q + i] = 1.0;
    }
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++)
            L[a * q + b] = omega[a * q + b] * tau[a];
    return lp;
}

/* u (J x q) of one factor from its coordinates: L z_j, or b'_j - C_j beta' (glmm_kernel_numba._effects) */
static void effects(const double *x, const double *buf, const double *row, const double *L, const double *beta,
                    int p, double *u) {
    int q = (int)row[F_Q];
    Py_ssize_t J = AT(row, F_J), x_eff = AT(row, F_X_EFFECTS);
    if (row[F_CENTRED] < 0.5 && q == 1) {  /* the loops below with q = 1, in one line GCC vectorises */
        double l = L[0];
        for (Py_ssize_t j = 0; j < J; j++)
            u[j] = 0.0 + l * x[x_eff + j];
        return;
    }
    if (row[F_CENTRED] < 0.5) {
        for (Py_ssize_t j = 0; j < J; j++)
            for (int a = 0; a < q; a++) {
                double s = 0.0;
                for (int b = 0; b <= a; b++)
                    s += L[a * q + b] * x[x_eff + j * q + b];
                u[j * q + a] = s;
            }
        return;
    }
    const double *centre = buf + AT(row, F_AT_CENTRE);
    for (Py_ssize_t j = 0; j < J; j++)
        for (int a = 0; a < q; a++) {
            double c = 0.0;
            for (int k = 0; k < p; k++)
                c += centre[(j * q + a) * p + k] * beta[k];
            u[j * q + a] = x[x_eff + j * q + a] - c;
        }
}

/* log prior of the fixed effects (Normal, flat where sd is 0), gradient added to g_beta (glmm_kernel_numba._fixed_prior) */
static double fixed_prior(const double *beta, const double *beta_mu, const double *beta_sd, int p, double *g_beta) {
    double lp = 0.0;
    for (int k = 0; k < p; k++)
        if (beta_sd[k] > 0.0) {
            double r = (beta[k] - beta_mu[k]) / beta_sd[k];
            lp -= 0.5 * LOG_2PI + log(beta_sd[k]) + 0.5 * r * r;
            g_beta[k] -= r / beta_sd[k];
        }
    return lp;
}

/* The passes over the rows, written so that GCC keeps their sums in registers: each loop below runs with its
 * width (w columns of X, q columns of Z) a constant where the callers' switch inlines it. Every sum still adds
 * its terms in the order glmm_kernel.py's loops do (eta_i over k then over each factor's a; g_beta_k and g_u[j, a]
 * over the rows in order), so the results are Numba's to the last bit. */
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define COLUMN_BLOCK 8
#define LOG_BLOCK 32

/* base^n multiplied into a running product (*product, holding *factors factors, each in [1, 2]) for a whole n in
 * [1, LOG_BLOCK]; returns 1 with *logged = log(*product) when it holds LOG_BLOCK factors or more (the product then
 * restarts at 1), 1 with *logged = n log(base) for any other n but 0, else 0 (nothing to add). The rows' sums of
 * n_i log(1 + t_i) so take about one log per LOG_BLOCK factors (glmm_kernel_numba._powers_into_product) */
static ALWAYS_INLINE int powers_into_product(double base, double n, double *product, int *factors, double *logged) {
    if (n >= 1.0 && n <= LOG_BLOCK && (double)(int)n == n) {
        for (int m = 0; m < (int)n; m++)
            *product *= base;
        *factors += (int)n;
        if (*factors < LOG_BLOCK)
            return 0;
        *logged = log(*product);
        *product = 1.0;
        *factors = 0;
        return 1;
    }
    if (n == 0.0)
        return 0;
    *logged = n * log(base);
    return 1;
}

/* eta_i = start_i + sum over k in [k0, k0 + w) of X_ik beta_k, in that order */
static ALWAYS_INLINE void add_columns(const double *restrict X, const double *restrict beta, Py_ssize_t n, int p,
                                      int k0, int w, const double *start, double *eta) {
    double b[COLUMN_BLOCK];
    for (int m = 0; m < w; m++)
        b[m] = beta[k0 + m];
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *restrict x_i = X + i * p + k0;
        double e = start[i];
        for (int m = 0; m < w; m++)
            e += x_i[m] * b[m];
        eta[i] = e;
    }
}

/* g_beta_k += sum over the rows of X_ik r_i for k in [k0, k0 + w), the rows in order */
static ALWAYS_INLINE void columns_times_r(const double *restrict X, const double *restrict r, Py_ssize_t n, int p,
                                          int k0, int w, double *restrict g_beta) {
    double s[COLUMN_BLOCK];
    for (int m = 0; m < w; m++)
        s[m] = g_beta[k0 + m];
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *restrict x_i = X + i * p + k0;
        double r_i = r[i];
        for (int m = 0; m < w; m++)
            s[m] += x_i[m] * r_i;
    }
    for (int m = 0; m < w; m++)
        g_beta[k0 + m] = s[m];
}

/* eta_i += z_i'u_j[i] for one factor with q columns */
static ALWAYS_INLINE void add_factor(const double *restrict codes, const double *restrict Z,
                                     const double *restrict u, Py_ssize_t n, int q, double *restrict eta) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *u_j = u + (Py_ssize_t)codes[i] * q;
        double e = eta[i];
        for (int a = 0; a < q; a++)
            e += Z[i * q + a] * u_j[a];
        eta[i] = e;
    }
}

/* g_u[j] += r_i z_i over group j's rows, in order; a run of rows of one group sums in registers (q <= 4) */
static ALWAYS_INLINE void factor_times_r(const double *restrict codes, const double *restrict Z,
                                         const double *restrict r, Py_ssize_t n, int q, double *restrict g_u) {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    Py_ssize_t j = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t code = (Py_ssize_t)codes[i];
        if (code != j) {
            for (int a = 0; a < q && j >= 0; a++)
                g_u[j * q + a] = s[a];
            j = code;
            for (int a = 0; a < q; a++)
                s[a] = g_u[j * q + a];
        }
        for (int a = 0; a < q; a++)
            s[a] += r[i] * Z[i * q + a];
    }
    for (int a = 0; a < q && j >= 0; a++)
        g_u[j * q + a] = s[a];
}

/* eta_i = offset_i + x_i'beta + sum over factors of z_i'u_j[i] (glmm_kernel_numba._linear_predictor) */
static void linear_predictor(const double *buf, const double *table, Py_ssize_t n, int p, int n_factors,
                             const double *X, const double *beta, const double *u_all, const Py_ssize_t *u_at,
                             double *eta) {
    const double *start = buf + AT(buf, H_AT_OFFSET);
    for (int k0 = 0; k0 < p || k0 == 0; k0 += COLUMN_BLOCK, start = eta) {
        switch (p - k0 < COLUMN_BLOCK ? p - k0 : COLUMN_BLOCK) {
            case 0: for (Py_ssize_t i = 0; i < n; i++) eta[i] = start[i]; break;
            case 1: add_columns(X, beta, n, p, k0, 1, start, eta); break;
            case 2: add_columns(X, beta, n, p, k0, 2, start, eta); break;
            case 3: add_columns(X, beta, n, p, k0, 3, start, eta); break;
            case 4: add_columns(X, beta, n, p, k0, 4, start, eta); break;
            case 5: add_columns(X, beta, n, p, k0, 5, start, eta); break;
            case 6: add_columns(X, beta, n, p, k0, 6, start, eta); break;
            case 7: add_columns(X, beta, n, p, k0, 7, start, eta); break;
            default: add_columns(X, beta, n, p, k0, 8, start, eta);
        }
    }
    for (int f = 0; f < n_factors; f++) {
        const double *row = table + f * N_FACTOR;
        const double *codes = buf + AT(row, F_AT_CODES), *Z = buf + AT(row, F_AT_Z), *u = u_all + u_at[f];
        switch ((int)row[F_Q]) {
            case 1: add_factor(codes, Z, u, n, 1, eta); break;
            case 2: add_factor(codes, Z, u, n, 2, eta); break;
            default: add_factor(codes, Z, u, n, (int)row[F_Q], eta);
        }
    }
}

/* the negative binomial rows' terms l_i without lgamma(y_i + k) - lgamma(k) (returned) and the sum of their
 * dl_i/dk without psi(y_i + k) - psi(k) (*d_shape_out), r_i = dl_i/deta_i; with per_row_gamma, lgamma(y_i + k) and
 * psi(y_i + k) are added row by row. log(k + mu_i) = log max(k, mu_i) + log(1 + s_i), s_i = min / max in [0, 1],
 * the log(1 + s_i) summed as logs of running products of the (1 + s_i) and of the (1 + s_i)^y_i
 * (glmm_kernel_numba._negative_binomial_rows says why, and how far this rounds) */
static double negative_binomial_rows(const double *restrict y, const double *restrict eta, Py_ssize_t n,
                                     double shape, double log_shape, int per_row_gamma, double *restrict r,
                                     double *d_shape_out) {
    double lp = 0.0, d_shape = 0.0, inv_shape = 1.0 / shape;
    double product = 1.0, product_y = 1.0, log_sum = 0.0, log_sum_y = 0.0, logged;  /* products: factors in [1, 2] */
    int factors = 0, factors_y = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double e = eta[i], y_i = y[i], mu = exp(e), w = (y_i - mu) / (shape + mu), log_larger, s;
        if (mu > shape) {
            log_larger = e;
            s = shape / mu;
        } else {
            log_larger = log_shape;
            s = mu * inv_shape;
        }
        double one_plus_s = 1.0 + s;
        double value = y_i * (e - log_larger) - shape * log_larger, d_k = log_shape - log_larger - w;
        if (per_row_gamma) {
            value += log_gamma(y_i + shape);
            d_k += digamma(y_i + shape);
        }
        r[i] = shape * w;
        lp += value;
        d_shape += d_k;
        if (powers_into_product(one_plus_s, 1.0, &product, &factors, &logged))
            log_sum += logged;
        if (powers_into_product(one_plus_s, y_i, &product_y, &factors_y, &logged))
            log_sum_y += logged;
    }
    log_sum += log(product);
    log_sum_y += log(product_y);
    *d_shape_out = d_shape - log_sum;
    return lp - (shape * log_sum + log_sum_y);
}

/* sum_i lgamma(y_i + k) - lgamma(k) = sum_{m < M} N_m log(k + m) (returned) and sum_i psi(y_i + k) - psi(k) =
 * sum_{m < M} N_m / (k + m) (*d_shape_out) for whole counts y_i, N_m = #{i : y_i > m} (the count table, M = max y;
 * glmm_kernel_numba._count_table_terms) */
static double count_table_terms(const double *restrict counts, Py_ssize_t M, double shape, double *d_shape_out) {
    double lp = 0.0, d_shape = 0.0;
    for (Py_ssize_t m = 0; m < M; m++) {
        double k_m = shape + (double)m;
        lp += counts[m] * log(k_m);
        d_shape += counts[m] / k_m;
    }
    *d_shape_out = d_shape;
    return lp;
}

/* sum of the rows' log-likelihood terms (returned) and of dl_i/dk (*d_shape_out), r_i = dl_i/deta_i
 * (glmm_kernel_numba._row_terms, _binomial_rows and _negative_binomial_rows). Binomial: one exp per row, t = e^-|eta|,
 * log(1 + e^eta) = max(eta, 0) + log(1 + t), the logs taken of running products of the (1 + t_i)^n_i
 * (glmm_kernel_numba._binomial_rows says why, and how far this rounds) */
static double row_terms(int family, const double *restrict y, const double *restrict size,
                        const double *restrict eta, Py_ssize_t n, double shape, double log_shape, int per_row_gamma,
                        double *restrict r, double *d_shape_out) {
    double lp = 0.0, d_shape = 0.0;
    if (family == BINOMIAL) {
        double product = 1.0, logged;  /* of the (1 + t_i)^n_i not yet logged: at most 2^(2 LOG_BLOCK) */
        int factors = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double e = eta[i], n_i = size[i], t = exp(-fabs(e)), one_plus_t = 1.0 + t;
            double mu = (e >= 0.0 ? 1.0 : t) / one_plus_t;
            r[i] = y[i] - n_i * mu;
            lp += y[i] * e - n_i * numba_max(e, 0.0);
            if (powers_into_product(one_plus_t, n_i, &product, &factors, &logged))
                lp -= logged;
        }
        lp -= log(product);
    } else if (family == POISSON) {
        for (Py_ssize_t i = 0; i < n; i++) {
            double mu = exp(eta[i]);
            lp += y[i] * eta[i] - mu;
            r[i] = y[i] - mu;
        }
    } else {
        lp = negative_binomial_rows(y, eta, n, shape, log_shape, per_row_gamma, r, &d_shape);
    }
    *d_shape_out = d_shape;
    return lp;
}

/* X'r added to g_beta, and to each group's g_u the sum of r_i z_i over its rows (glmm_kernel_numba._pass_to_coefficients) */
static void pass_to_coefficients(const double *buf, const double *table, Py_ssize_t n, int p, int n_factors,
                                 const double *X, const double *r, double *g_beta, double *g_u_all,
                                 const Py_ssize_t *u_at) {
    for (int k0 = 0; k0 < p; k0 += COLUMN_BLOCK) {
        switch (p - k0 < COLUMN_BLOCK ? p - k0 : COLUMN_BLOCK) {
            case 1: columns_times_r(X, r, n, p, k0, 1, g_beta); break;
            case 2: columns_times_r(X, r, n, p, k0, 2, g_beta); break;
            case 3: columns_times_r(X, r, n, p, k0, 3, g_beta); break;
            case 4: columns_times_r(X, r, n, p, k0, 4, g_beta); break;
            case 5: columns_times_r(X, r, n, p, k0, 5, g_beta); break;
            case 6: columns_times_r(X, r, n, p, k0, 6, g_beta); break;
            case 7: columns_times_r(X, r, n, p, k0, 7, g_beta); break;
            default: columns_times_r(X, r, n, p, k0, 8, g_beta);
        }
    }
    for (int f = 0; f < n_factors; f++) {
        const double *row = table + f * N_FACTOR;
        int q = (int)row[F_Q];
        const double *codes = buf + AT(row, F_AT_CODES), *Z = buf + AT(row, F_AT_Z);
        double *g_u = g_u_all + u_at[f];
        switch (q) {
            case 1: factor_times_r(codes, Z, r, n, 1, g_u); break;
            case 2: factor_times_r(codes, Z, r, n, 2, g_u); break;
            case 3: factor_times_r(codes, Z, r, n, 3, g_u); break;
            case 4: factor_times_r(codes, Z, r, n, 4, g_u); break;
            default:
                for (Py_ssize_t i = 0; i < n; i++)
                    for (int a = 0; a < q; a++)
                        g_u[(Py_ssize_t)codes[i] * q + a] += r[i] * Z[i * q + a];
        }
    }
}

/* z_j ~ N(0, I): their log prior; dz_j = L' g_uj - z_j into grad, dL += g_uj z_j' (glmm_kernel_numba._non_centred_prior) */
static double non_centred_prior(const double *x, Py_ssize_t x_eff, const double *L, const double *g_u, Py_ssize_t J,
                                int q, double *grad, double *gL) {
    double lp = 0.0;
    if (q == 1) {  /* the loops below with q = 1, dL summed in a register */
        double l = L[0], g_l = gL[0];
        for (Py_ssize_t j = 0; j < J; j++) {
            double z = x[x_eff + j];
            lp -= 0.5 * (LOG_2PI + z * z);
            grad[x_eff + j] += -z + l * g_u[j];
            g_l += g_u[j] * z;
        }
        gL[0] = g_l;
        return lp;
    }
    for (Py_ssize_t j = 0; j < J; j++)
        for (int a = 0; a < q; a++) {
            double z = x[x_eff + j * q + a];
            lp -= 0.5 * (LOG_2PI + z * z);
            double s = -z;
            for (int b = a; b < q; b++)
                s += L[b * q + a] * g_u[j * q + b];
            grad[x_eff + j * q + a] += s;
            for (int b = a; b < q; b++)
                gL[b * q + a] += g_u[j * q + b] * z;
        }
    return lp;
}

/* u_j = b_j - C_j beta ~ N(0, L L'), w_j = L^{-1} u_j: log density, db_j = g_uj - L^{-T} w_j, dbeta -= C_j' db_j,
 * dL += L^{-T} w_j w_j' - diag(1 / L_aa) (glmm_kernel_numba._centred_prior); w and back: q scratch each */
static double centred_prior(const double *centre, Py_ssize_t x_eff, const double *L, const double *u,
                            const double *g_u, Py_ssize_t J, int q, int p, double *grad, double *g_beta, double *gL,
                            double *w, double *back) {
    double lp = 0.0;
    for (int a = 0; a < q; a++) {
        lp -= J * (0.5 * LOG_2PI + log(L[a * q + a]));
        gL[a * q + a] -= J / L[a * q + a];
    }
    for (Py_ssize_t j = 0; j < J; j++) {
        for (int a = 0; a < q; a++) {  /* forward substitution: L w = u_j */
            double s = u[j * q + a];
            for (int b = 0; b < a; b++)
                s -= L[a * q + b] * w[b];
            w[a] = s / L[a * q + a];
            lp -= 0.5 * w[a] * w[a];
        }
        for (int a = q - 1; a >= 0; a--) {  /* back substitution: L' back = w */
            double s = w[a];
            for (int b = a + 1; b < q; b++)
                s -= L[b * q + a] * back[b];
            back[a] = s / L[a * q + a];
        }
        for (int a = 0; a < q; a++) {
            double d = g_u[j * q + a] - back[a];
            grad[x_eff + j * q + a] += d;
            for (int k = 0; k < p; k++)
                g_beta[k] -= centre[(j * q + a) * p + k] * d;
            for (int b = 0; b <= a; b++)
                gL[a * q + b] += back[a] * w[b];
        }
    }
    return lp;
}

/* beta -= P'u[:, a] for each shift entry (k, a, P) of one non-centred factor (rows k, a, P_1..P_J at shift;
 * glmm_kernel_numba._shift_fixed_effects, one factor) */
static void shift_fixed_effects(const double *shift, Py_ssize_t n_shift, Py_ssize_t J, int q, const double *u,
                                double *beta) {
    for (Py_ssize_t e = 0; e < n_shift; e++) {
        const double *entry = shift + e * (J + 2);
        int k = (int)entry[0], a = (int)entry[1];
        double s = 0.0;
        for (Py_ssize_t j = 0; j < J; j++)
            s += entry[2 + j] * u[j * q + a];
        beta[k] -= s;
    }
}

/* the chain rule through the shift: g_u[j, a] -= P_j g_beta_k (glmm_kernel_numba._shift_gradient, one factor) */
static void shift_gradient(const double *shift, Py_ssize_t n_shift, Py_ssize_t J, int q, const double *g_beta,
                           double *g_u) {
    for (Py_ssize_t e = 0; e < n_shift; e++) {
        const double *entry = shift + e * (J + 2);
        int k = (int)entry[0], a = (int)entry[1];
        for (Py_ssize_t j = 0; j < J; j++)
            g_u[j * q + a] -= entry[2 + j] * g_beta[k];
    }
}

/* the gradient of L = diag(tau) L_Omega to the log scales and, when correlated, to the LKJ coordinates with their
 * log prior (returned; glmm_kernel_numba._scale_gradient); g_omega: q x q scratch */
static double scale_gradient(const double *x, const double *buf, const double *row, const double *gL,
                             const double *tau, const double *omega, double *grad, double *g_omega) {
    int q = (int)row[F_Q];
    Py_ssize_t x_tau = AT(row, F_X_TAU);
    const double *prior = buf + AT(row, F_AT_PRIOR);
    for (int a = 0; a < q; a++) {
        double d_tau = 0.0;
        for (int b = 0; b <= a; b++)
            d_tau += gL[a * q + b] * omega[a * q + b];
        grad[x_tau + a] += d_tau * tau[a] * (prior[4 * a + 3] > 0.5 ? 0.5 : 1.0);
    }
    if (row[F_CORRELATED] > 0.5) {
        Py_ssize_t x_corr = AT(row, F_X_CORR);
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++)
                g_omega[a * q + b] = gL[a * q + b] * tau[a];
        return lkj_terms(x + x_corr, buf + AT(row, F_AT_CORR), q, row[F_ETA], g_omega, grad + x_corr);
    }
    return 0.0;
}

/* the sizes the work arrays of log_density and expand depend on */
typedef struct {
    Py_ssize_t n, n_u, q_max, J_max;
    int p, n_factors;
} Sizes;

static Sizes sizes_of(const double *buf) {
    Sizes s = {AT(buf, H_N), 0, 1, 0, (int)buf[H_P], (int)buf[H_N_FACTORS]};
    const double *table = buf + AT(buf, H_AT_FACTORS);
    for (int f = 0; f < s.n_factors; f++) {
        Py_ssize_t q = AT(table + f * N_FACTOR, F_Q), J = AT(table + f * N_FACTOR, F_J);
        s.q_max = q > s.q_max ? q : s.q_max;
        s.J_max = J > s.J_max ? J : s.J_max;
        s.n_u += J * q;
    }
    return s;
}

/* lp plus the log prior of the centred (or of the non-centred) factors' effects, with the chain rule from their g_u to their
 * coordinates, to L and, for centred ones, to g_beta (glmm_kernel_numba._effect_priors); gL, g_omega (q_max^2), w and
 * back (q_max): scratch */
static double effect_priors(double lp, const double *x, const double *buf, Sizes s, const double *Ls, const double *taus,
                            const double *omegas, const double *u_all, double *g_u_all, const Py_ssize_t *u_at,
                            int centred, double *grad, double *g_beta, double *gL, double *g_omega, double *w,
                            double *back) {
    const double *table = buf + AT(buf, H_AT_FACTORS);
    Py_ssize_t qq = s.q_max * s.q_max;
    for (int f = 0; f < s.n_factors; f++) {
        const double *row = table + f * N_FACTOR;
        if ((row[F_CENTRED] > 0.5) != centred)
            continue;
        int q = (int)row[F_Q];
        Py_ssize_t J = AT(row, F_J), x_eff = AT(row, F_X_EFFECTS);
        const double *L = Ls + f * qq;
        for (Py_ssize_t i = 0; i < q * q; i++)
            gL[i] = 0.0;
        if (centred)
            lp += centred_prior(buf + AT(row, F_AT_CENTRE), x_eff, L, u_all + u_at[f], g_u_all + u_at[f], J, q, s.p,
                                grad, g_beta, gL, w, back);
        else
            lp += non_centred_prior(x, x_eff, L, g_u_all + u_at[f], J, q, grad, gL);
        lp += scale_gradient(x, buf, row, gL, taus + f * s.q_max, omegas + f * qq, grad, g_omega);
    }
    return lp;
}

/* doubles of work log_density needs: beta, g_beta; per factor L, tau, L_Omega; u and g_u of every factor; eta
 * and r; gL, g_omega, w and back of one factor; each factor's log prior of its scales */
static Py_ssize_t density_work(Sizes s) {
    return 2 * s.p + s.n_factors * (2 * s.q_max * s.q_max + s.q_max) + 2 * s.n_u + 2 * s.n + 2 * s.q_max * s.q_max
           + 2 * s.q_max + s.n_factors;
}

/* the log posterior density at x with its gradient in grad (glmm_kernel_numba.log_density, step for step); u_at:
 * n_factors + 1 offsets */
static double log_density(const double *x, const double *buf, double *grad, double *work, Py_ssize_t *u_at) {
    Sizes s = sizes_of(buf);
    Py_ssize_t n = s.n, n_dim = AT(buf, H_N_DIM), qq = s.q_max * s.q_max;
    int p = s.p, n_factors = s.n_factors, family = (int)buf[H_FAMILY];
    Py_ssize_t shape_at = AT(buf, H_SHAPE_AT);
    int per_row_gamma = AT(buf, H_N_COUNT_TABLE) < 0;  /* no count table: lgamma and psi row by row */
    for (Py_ssize_t k = 0; k < n_dim; k++)
        grad[k] = 0.0;
    const double *table = buf + AT(buf, H_AT_FACTORS), *A = buf + AT(buf, H_AT_A);
    double *beta = work, *g_beta = beta + p, *Ls = g_beta + p, *taus = Ls + n_factors * qq;
    double *omegas = taus + n_factors * s.q_max, *u_all = omegas + n_factors * qq, *g_u_all = u_all + s.n_u;
    double *eta = g_u_all + s.n_u, *r = eta + n, *gL = r + n, *g_omega = gL + qq, *w = g_omega + qq;
    double *back = w + s.q_max, *lp_scales = back + s.q_max;
    for (int k = 0; k < p; k++) {  /* the coordinates are the coefficients of the standardised columns */
        beta[k] = 0.0;
        for (int m = 0; m < p; m++)
            beta[k] += A[k * p + m] * x[m];
    }
    for (int k = 0; k < p; k++)
        g_beta[k] = 0.0;
    u_at[0] = 0;
    for (int f = 0; f < n_factors; f++)
        u_at[f + 1] = u_at[f] + AT(table + f * N_FACTOR, F_J) * AT(table + f * N_FACTOR, F_Q);
    for (Py_ssize_t i = 0; i < s.n_u; i++)
        g_u_all[i] = 0.0;
    for (int f = 0; f < n_factors; f++) {  /* scales and effects: the centred ones around C_j beta' (unshifted) */
        const double *row = table + f * N_FACTOR;
        double *L = Ls + f * qq;
        lp_scales[f] = factor_scale(x, buf, row, grad, 1, L, taus + f * s.q_max, omegas + f * qq);
        effects(x, buf, row, L, beta, p, u_all + u_at[f]);
    }
    for (int f = 0; f < n_factors; f++) {
        const double *row = table + f * N_FACTOR;
        shift_fixed_effects(buf + AT(row, F_AT_SHIFT), AT(row, F_N_SHIFT), AT(row, F_J), (int)row[F_Q],
                            u_all + u_at[f], beta);
    }
    double lp = buf[H_CONSTANT] + fixed_prior(beta, buf + AT(buf, H_AT_BETA_MU), buf + AT(buf, H_AT_BETA_SD), p,
                                              g_beta);
    for (int f = 0; f < n_factors; f++)
        lp += lp_scales[f];
    double shape = 1.0, log_shape = 0.0, d_shape = 0.0;
    if (family == NEGATIVE_BINOMIAL) {
        const double *shape_prior = buf + AT(buf, H_AT_SHAPE_PRIOR);
        double d_log_shape;
        double lp_shape = scale_prior((int)shape_prior[0], shape_prior[1], shape_prior[2], 0, x[shape_at],
                                      &d_log_shape, &shape);
        log_shape = log(shape);
        lp += lp_shape + n * shape * log_shape;
        grad[shape_at] += d_log_shape;
        if (per_row_gamma) {
            lp -= n * log_gamma(shape);
            d_shape -= n * digamma(shape);
        } else {
            double d_counts;
            lp += count_table_terms(buf + AT(buf, H_AT_COUNT_TABLE), AT(buf, H_N_COUNT_TABLE), shape, &d_counts);
            d_shape += d_counts;
        }
    }
    const double *X = buf + AT(buf, H_AT_X);
    linear_predictor(buf, table, n, p, n_factors, X, beta, u_all, u_at, eta);
    double d_shape_rows;
    lp += row_terms(family, buf + AT(buf, H_AT_Y), buf + AT(buf, H_AT_SIZE), eta, n, shape, log_shape,
                    per_row_gamma, r, &d_shape_rows);
    d_shape += d_shape_rows;
    pass_to_coefficients(buf, table, n, p, n_factors, X, r, g_beta, g_u_all, u_at);
    if (family == NEGATIVE_BINOMIAL)
        grad[shape_at] += d_shape * shape;
    /* g_beta (of beta) through the shift into the non-centred effects' g_u; then the effects' priors and the chain
     * rule to their coordinates and to L, the centred factors first, which add their part of g_beta (of beta') */
    for (int f = 0; f < n_factors; f++) {
        const double *row = table + f * N_FACTOR;
        shift_gradient(buf + AT(row, F_AT_SHIFT), AT(row, F_N_SHIFT), AT(row, F_J), (int)row[F_Q], g_beta,
                       g_u_all + u_at[f]);
    }
    lp = effect_priors(lp, x, buf, s, Ls, taus, omegas, u_all, g_u_all, u_at, 1, grad, g_beta, gL, g_omega, w,
                       back);
    lp = effect_priors(lp, x, buf, s, Ls, taus, omegas, u_all, g_u_all, u_at, 0, grad, g_beta, gL, g_omega, w,
                       back);
    for (int m = 0; m < p; m++)  /* to the standardised coordinates: A' g_beta */
        for (int k = 0; k < p; k++)
            grad[m] += A[k * p + m] * g_beta[k];
    return lp;
}

/* b += C (beta - beta') per centred coefficient: from the sampled b' to the graph's b
 * (glmm_kernel_numba._add_centre_shift) */
static void add_centre_shift(const double *centre, Py_ssize_t n_effects, int p, const double *beta,
                             const double *sampled, double *b) {
    for (Py_ssize_t i = 0; i < n_effects; i++) {
        double c = 0.0;
        for (int k = 0; k < p; k++)
            c += centre[i * p + k] * (beta[k] - sampled[k]);
        b[i] += c;
    }
}

/* the reported values at x: beta, per factor tau, L_Omega (when correlated), u and z or (centred) the graph's b;
 * then the negative binomial shape (glmm_kernel_numba.expand); work: beta, beta', L, tau, L_Omega and u of one factor */
static void expand(const double *x, const double *buf, double *out, double *work) {
    Sizes s = sizes_of(buf);
    int p = s.p;
    const double *table = buf + AT(buf, H_AT_FACTORS), *A = buf + AT(buf, H_AT_A);
    double *beta = work, *sampled = beta + p, *L = sampled + p, *tau = L + s.q_max * s.q_max;
    double *omega = tau + s.q_max, *u = omega + s.q_max * s.q_max;
    for (int k = 0; k < p; k++) {
        beta[k] = 0.0;
        for (int m = 0; m < p; m++)
            beta[k] += A[k * p + m] * x[m];
        sampled[k] = beta[k];
    }
    for (int f = 0; f < s.n_factors; f++) {  /* the non-centred effects, to shift beta as log_density does */
        const double *row = table + f * N_FACTOR;
        if (row[F_CENTRED] > 0.5)
            continue;
        factor_scale(x, buf, row, NULL, 0, L, tau, omega);
        effects(x, buf, row, L, beta, p, u);
        shift_fixed_effects(buf + AT(row, F_AT_SHIFT), AT(row, F_N_SHIFT), AT(row, F_J), (int)row[F_Q], u, beta);
    }
    for (int k = 0; k < p; k++)
        out[k] = beta[k];
    Py_ssize_t at = p;
    for (int f = 0; f < s.n_factors; f++) {
        const double *row = table + f * N_FACTOR;
        int q = (int)row[F_Q];
        Py_ssize_t J = AT(row, F_J), x_eff = AT(row, F_X_EFFECTS);
        factor_scale(x, buf, row, NULL, 0, L, tau, omega);
        for (int a = 0; a < q; a++)
            out[at++] = tau[a];
        if (row[F_CORRELATED] > 0.5)
            for (int i = 0; i < q * q; i++)
                out[at++] = omega[i];
        effects(x, buf, row, L, sampled, p, u);
        for (Py_ssize_t i = 0; i < J * q; i++)
            out[at++] = u[i];
        for (Py_ssize_t i = 0; i < J * q; i++)  /* z, or b' */
            out[at + i] = x[x_eff + i];
        if (row[F_CENTRED] > 0.5)
            add_centre_shift(buf + AT(row, F_AT_CENTRE), J * q, p, beta, sampled, out + at);
        at += J * q;
    }
    if ((int)buf[H_FAMILY] == NEGATIVE_BINOMIAL)
        out[at] = exp(x[AT(buf, H_SHAPE_AT)]);
}

/* v_f[:, a] += (lambda_f - 1) G_f P_f v_f[:, a] in place on the shifted coefficient's block of v (coordinates or
 * gradient), per factor with a shift and lambda_f != 1 (glmm_kernel_numba._scale_latent); t: n_shift <= p scratch */
static void scale_latent(const double *buf, double *v, double *t) {
    const double *table = buf + AT(buf, H_AT_FACTORS);
    for (int f = 0; f < (int)buf[H_N_FACTORS]; f++) {
        const double *row = table + f * N_FACTOR;
        double lam = row[F_LATENT_SCALE];
        Py_ssize_t n_shift = AT(row, F_N_SHIFT);
        if (n_shift == 0 || lam == 1.0)
            continue;
        int q = (int)row[F_Q];
        Py_ssize_t J = AT(row, F_J), start = AT(row, F_X_EFFECTS);
        const double *shift = buf + AT(row, F_AT_SHIFT), *values = buf + AT(row, F_AT_SHIFT_VALUES);
        for (Py_ssize_t e = 0; e < n_shift; e++) {
            int a = (int)shift[e * (J + 2) + 1];
            t[e] = 0.0;
            for (Py_ssize_t j = 0; j < J; j++)
                t[e] += shift[e * (J + 2) + 2 + j] * v[start + j * q + a];
        }
        for (Py_ssize_t e = 0; e < n_shift; e++) {
            int a = (int)shift[e * (J + 2) + 1];
            for (Py_ssize_t j = 0; j < J; j++)
                v[start + j * q + a] += (lam - 1.0) * values[e * J + j] * t[e];
        }
    }
}

/* whether a factor's z is scaled (glmm_kernel_numba._latent_scaled) */
static int latent_scaled(const double *buf) {
    const double *table = buf + AT(buf, H_AT_FACTORS);
    for (int f = 0; f < (int)buf[H_N_FACTORS]; f++)
        if (table[f * N_FACTOR + F_N_SHIFT] > 0 && table[f * N_FACTOR + F_LATENT_SCALE] != 1.0)
            return 1;
    return 0;
}

/* (1 - w) h of a partially centred factor (non-centred, q = 1, w < 1; h = 1/2 when its scale coordinate is
 * log tau^2), else 0 (glmm_kernel_numba._partial_factor) */
static double partial_factor(const double *buf, const double *row) {
    if (row[F_CENTRED] > 0.5 || (int)row[F_Q] != 1 || row[F_PARTIAL] == 1.0)
        return 0.0;
    return (1.0 - row[F_PARTIAL]) * (buf[AT(row, F_AT_PRIOR) + 3] > 0.5 ? 0.5 : 1.0);
}

/* d log tau / d theta of a conditionally centred factor (1, or 1/2 when theta is log tau^2), else 0
 * (glmm_kernel_numba._conditional_factor) */
static double conditional_factor(const double *buf, const double *row) {
    if (row[F_AT_CONDITIONAL] == 0.0)
        return 0.0;
    return buf[AT(row, F_AT_PRIOR) + 3] > 0.5 ? 0.5 : 1.0;
}

/* whether a factor is partially or conditionally centred */
static int partially_centred(const double *buf) {
    const double *table = buf + AT(buf, H_AT_FACTORS);
    for (int f = 0; f < (int)buf[H_N_FACTORS]; f++) {
        const double *row = table + f * N_FACTOR;
        if (partial_factor(buf, row) != 0.0 || conditional_factor(buf, row) != 0.0)
            return 1;
    }
    return 0;
}

#define PRODUCT_LIMIT 1e100

/* d multiplied into the running product of factors 1 + v_j, the product logged into *log_jacobian once above
 * PRODUCT_LIMIT, or d logged alone when above it; returns the product */
static ALWAYS_INLINE double log_factor(double d, double product, double *log_jacobian) {
    if (d > PRODUCT_LIMIT) {
        *log_jacobian -= 0.5 * log(d);
        return product;
    }
    product *= d;
    if (product > PRODUCT_LIMIT) {
        *log_jacobian -= 0.5 * log(product);
        return 1.0;
    }
    return product;
}

/* z_j = tau c_j r_j + z'_j s_j, r_j = 1 / (1 + v_j), s_j = sqrt(r_j), v_j = tau^2 h_j, into y, with r_j, s_j,
 * a_j = tau c_j r_j and v_j kept in kept (4 x J: the rows r, s, a, v) for conditional_gradient; returns the
 * log-Jacobian -sum_j log(1 + v_j) / 2, logged in running products (glmm_kernel_numba._conditional_coordinates) */
static double conditional_coordinates(const double *restrict x, const double *buf, const double *row,
                                      double *restrict y, double *restrict kept) {
    double half = conditional_factor(buf, row);
    Py_ssize_t J = AT(row, F_J), x_eff = AT(row, F_X_EFFECTS), x_tau = AT(row, F_X_TAU);
    const double *restrict table = buf + AT(row, F_AT_CONDITIONAL);
    double *restrict r = kept, *restrict s = kept + J, *restrict a = kept + 2 * J, *restrict v = kept + 3 * J;
    double tau = exp(half * x[x_tau]);
    double tau2 = tau * tau, log_jacobian = 0.0, product = 1.0;
    Py_ssize_t j = 0;
#if defined(__SSE2__)
    /* two groups per division and square root (GCC does not vectorise sqrt, which may set errno); correctly
     * rounded, so the same values as one at a time. The product's chain of multiplications runs beside them. */
    __m128d one = _mm_set1_pd(1.0), tau2_pair = _mm_set1_pd(tau2);
    for (; j + 2 <= J; j += 2) {
        __m128d v_pair = _mm_mul_pd(tau2_pair, _mm_set_pd(table[2 * j + 3], table[2 * j + 1]));
        __m128d d_pair = _mm_add_pd(one, v_pair), r_pair = _mm_div_pd(one, d_pair);
        _mm_storeu_pd(v + j, v_pair);
        _mm_storeu_pd(r + j, r_pair);
        _mm_storeu_pd(s + j, _mm_sqrt_pd(r_pair));
        product = log_factor(_mm_cvtsd_f64(d_pair), product, &log_jacobian);
        product = log_factor(_mm_cvtsd_f64(_mm_unpackhi_pd(d_pair, d_pair)), product, &log_jacobian);
    }
#endif
    for (; j < J; j++) {
        v[j] = tau2 * table[2 * j + 1];
        r[j] = 1.0 / (1.0 + v[j]);
        s[j] = sqrt(r[j]);
        product = log_factor(1.0 + v[j], product, &log_jacobian);
    }
    for (j = 0; j < J; j++) {
        a[j] = tau * table[2 * j] * r[j];
        y[x_eff + j] = a[j] + x[x_eff + j] * s[j];
    }
    return log_jacobian - 0.5 * log(product);
}

/* the gradient in z taken to z' and log tau with the log-Jacobian's, from the r, s, a, v conditional_coordinates
 * kept (glmm_kernel_numba._conditional_gradient) */
static void conditional_gradient(const double *restrict x, const double *buf, const double *row,
                                 const double *restrict kept, double *restrict grad) {
    double half = conditional_factor(buf, row);
    Py_ssize_t J = AT(row, F_J), x_eff = AT(row, F_X_EFFECTS), x_tau = AT(row, F_X_TAU);
    const double *restrict r = kept, *restrict s = kept + J, *restrict a = kept + 2 * J, *restrict v = kept + 3 * J;
    double d_log_tau = 0.0;
    for (Py_ssize_t j = 0; j < J; j++) {
        double g = grad[x_eff + j];
        d_log_tau += (g * (a[j] * (1.0 - v[j]) - s[j] * x[x_eff + j] * v[j]) - v[j]) * r[j];
        grad[x_eff + j] = g * s[j];
    }
    grad[x_tau] += half * d_log_tau;
}

/* doubles conditional_coordinates keeps for conditional_gradient: 4 J per conditionally centred factor */
static Py_ssize_t conditional_work(const double *buf) {
    const double *table = buf + AT(buf, H_AT_FACTORS);
    Py_ssize_t n = 0;
    for (int f = 0; f < (int)buf[H_N_FACTORS]; f++)
        if (conditional_factor(buf, table + f * N_FACTOR) != 0.0)
            n += 4 * AT(table + f * N_FACTOR, F_J);
    return n;
}

/* z = z' tau^-(1-w) into y (a copy of x) per partially centred factor, z from z' per conditionally centred one;
 * returns the log-Jacobian, -(1 - w) J log tau or -sum_j log(1 + v_j) / 2 per factor
 * (glmm_kernel_numba._partially_centred) */
static double partial_coordinates(const double *x, const double *buf, double *y, double *kept) {
    const double *table = buf + AT(buf, H_AT_FACTORS);
    double log_jacobian = 0.0;
    for (int f = 0; f < (int)buf[H_N_FACTORS]; f++) {
        const double *row = table + f * N_FACTOR;
        if (conditional_factor(buf, row) != 0.0) {
            log_jacobian += conditional_coordinates(x, buf, row, y, kept);
            kept += 4 * AT(row, F_J);
            continue;
        }
        double k = partial_factor(buf, row);
        if (k == 0.0)
            continue;
        Py_ssize_t J = AT(row, F_J), x_eff = AT(row, F_X_EFFECTS), x_tau = AT(row, F_X_TAU);
        double c = exp(-k * x[x_tau]);
        for (Py_ssize_t j = 0; j < J; j++)
            y[x_eff + j] = x[x_eff + j] * c;
        log_jacobian += -k * J * x[x_tau];
    }
    return log_jacobian;
}

/* the gradient in z and log tau taken to z' and log tau with the log-Jacobian's, partially or conditionally centred
 * factors (glmm_kernel_numba._partial_gradient) */
static void partial_gradient(const double *x, const double *buf, const double *kept, double *grad) {
    const double *table = buf + AT(buf, H_AT_FACTORS);
    for (int f = 0; f < (int)buf[H_N_FACTORS]; f++) {
        const double *row = table + f * N_FACTOR;
        if (conditional_factor(buf, row) != 0.0) {
            conditional_gradient(x, buf, row, kept, grad);
            kept += 4 * AT(row, F_J);
            continue;
        }
        double k = partial_factor(buf, row);
        if (k == 0.0)
            continue;
        Py_ssize_t J = AT(row, F_J), x_eff = AT(row, F_X_EFFECTS), x_tau = AT(row, F_X_TAU);
        double c = exp(-k * x[x_tau]), d = 0.0;
        for (Py_ssize_t j = 0; j < J; j++) {
            d += grad[x_eff + j] * (x[x_eff + j] * c);
            grad[x_eff + j] *= c;
        }
        grad[x_tau] += -k * d - k * J;
    }
}

/* x, or (a partially centred or scaled factor) a copy of x with z' taken to z in scaled (n_dim) using t (p) and
 * kept (conditional_work: what the conditional centring keeps for its gradient), the log-Jacobian of the partial
 * centring added to *log_jacobian */
static const double *latent_coordinates(const double *x, const double *buf, double *scaled, double *t, double *kept,
                                        double *log_jacobian) {
    if (scaled == NULL)
        return x;
    for (Py_ssize_t k = 0; k < AT(buf, H_N_DIM); k++)
        scaled[k] = x[k];
    *log_jacobian += partial_coordinates(x, buf, scaled, kept);
    scale_latent(buf, scaled, t);
    return scaled;
}

/* nutpie's log-density callback; codes as its PyMC callbacks: 0 ok, 4 log density or 3 gradient not finite,
 * -1 wrong dimension (nothing written), -2 out of memory. The density is evaluated at the scaled factors' z and
 * its gradient taken back to z' (glmm_kernel_numba.log_density) */
static int64_t glmm_logp(uint64_t dim, const double *x, double *grad, double *logp, void *user_data) {
    const double *buf = (const double *)user_data;
    Py_ssize_t n_dim = AT(buf, H_N_DIM);
    if ((int64_t)dim != n_dim)
        return -1;
    Sizes s = sizes_of(buf);
    int scaled = latent_scaled(buf) || partially_centred(buf);
    Py_ssize_t n_kept = scaled ? conditional_work(buf) : 0;
    double *work = malloc((size_t)(density_work(s) + (scaled ? n_dim + s.p + n_kept : 0)) * sizeof(double));
    Py_ssize_t *u_at = malloc((size_t)(s.n_factors + 1) * sizeof(Py_ssize_t));
    if (work == NULL || u_at == NULL) {
        free(work);
        free(u_at);
        return -2;
    }
    double *latent = scaled ? work + density_work(s) : NULL, *t = scaled ? latent + n_dim : NULL;
    double *kept = scaled ? t + s.p : NULL, log_jacobian = 0.0;
    double value = log_density(latent_coordinates(x, buf, latent, t, kept, &log_jacobian), buf, grad, work, u_at);
    if (scaled) {
        scale_latent(buf, grad, t);
        partial_gradient(x, buf, kept, grad);
        value = value + log_jacobian;
    }
    free(work);
    free(u_at);
    *logp = value;
    if (!isfinite(value))
        return 4;
    for (Py_ssize_t k = 0; k < n_dim; k++)
        if (!isfinite(grad[k]))
            return 3;
    return 0;
}

/* nutpie's reported-values callback: -1 when the sizes are not the buffer's, -2 out of memory */
static int64_t glmm_expand(uint64_t dim, uint64_t n_expanded, const double *x, double *out, void *user_data) {
    const double *buf = (const double *)user_data;
    if ((int64_t)dim != AT(buf, H_N_DIM) || (int64_t)n_expanded != AT(buf, H_N_EXPANDED))
        return -1;
    Sizes s = sizes_of(buf);
    Py_ssize_t n_work = 2 * s.p + 2 * s.q_max * s.q_max + s.q_max + s.J_max * s.q_max, n_dim = AT(buf, H_N_DIM);
    int scaled = latent_scaled(buf) || partially_centred(buf);
    Py_ssize_t n_kept = scaled ? conditional_work(buf) : 0;
    double *work = malloc((size_t)(n_work + (scaled ? n_dim + s.p + n_kept : 0)) * sizeof(double));
    if (work == NULL)
        return -2;
    double *latent = scaled ? work + n_work : NULL, *t = scaled ? latent + n_dim : NULL, log_jacobian = 0.0;
    expand(latent_coordinates(x, buf, latent, t, scaled ? t + s.p : NULL, &log_jacobian), buf, out, work);
    free(work);
    return 0;
}

static PyObject *callbacks(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return Py_BuildValue("(NN)", PyLong_FromVoidPtr((void *)glmm_logp), PyLong_FromVoidPtr((void *)glmm_expand));
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

/* ((family, link, code), ...) as glmm_kernel.FAMILY_CODES.items() */
static PyObject *family_codes(void) {
    PyObject *out = PyTuple_New(N_FAMILIES);
    for (Py_ssize_t i = 0; out != NULL && i < N_FAMILIES; i++) {
        PyObject *item = Py_BuildValue("(ssi)", FAMILIES[i][0], FAMILIES[i][1], FAMILY_CODE[i]);
        if (item == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

/* ((name, (parameter, ...)), ...) by code, as glmm_kernel.SCALE_FAMILIES.items() */
static PyObject *scale_families(void) {
    PyObject *out = PyTuple_New(N_SCALES);
    for (Py_ssize_t i = 0; out != NULL && i < N_SCALES; i++) {
        Py_ssize_t k = SCALES[i][1] == NULL ? 0 : SCALES[i][2] == NULL ? 1 : 2;
        PyObject *item = Py_BuildValue("(sN)", SCALES[i][0], names(SCALES[i] + 1, k));
        if (item == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

static PyMethodDef METHODS[] = {
    {"callbacks", callbacks, METH_NOARGS,
     "The addresses of the log-density and reported-values C callbacks (nutpie's signatures)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_glmm_kernel",
                                    "The hierarchical GLM kernel, compiled ahead of time (see glmm_kernel.py).", -1,
                                    METHODS};

PyMODINIT_FUNC PyInit__glmm_kernel(void) {
    volatile double two = 2.0, pi = M_PI;  /* volatile: computed by the C library's log, as Numba's constants are */
    LOG_2PI = log(two * pi);
    LOG_2_OVER_PI = log(two / pi);
    LOG_2 = log(two);
    LOG_PI = log(pi);
    PyObject *module = PyModule_Create(&MODULE);
    if (module == NULL)
        return NULL;
    PyObject *layout = Py_BuildValue("(NNNN)", names(HEADER, N_HEADER), names(FACTOR, N_FACTOR), family_codes(),
                                     scale_families());
    if (layout == NULL || PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
