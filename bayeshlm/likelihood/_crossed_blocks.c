/* One REML / ML evaluation of bayeshlm/likelihood/crossed.py compiled (issue 27, "Small models"), for the dense
 * case (C kept as a J x q_1 x t array). NumPy runs each evaluation as ~40 calls on arrays of a few hundred numbers,
 * whose per-call cost is most of the time; here it is two calls. crossed_factorize / crossed_gradient serve designs
 * whose every factor has one coefficient (crossed random intercepts, such as ScotsSec's primary x second schools),
 * crossed_factorize_blocks / crossed_gradient_blocks any coefficients (random slopes; see their comment below).
 * The formulas are those of crossed.py, with q = 1 (every block a number) for the first pair, in another order
 * (equal to rounding):
 *
 * crossed_factorize  (CrossedSolver.factorize): with lambda_1 the first factor's entry and s the diagonal of
 *     Lambda~ (each remaining factor's lambda on its columns, 1 on X and y),
 *     a_g = lambda_1^2 D_g + 1,  L_g = sqrt(a_g),  W_g = lambda_1^2 / a_g,  b_g = (lambda_1 / L_g) C_g,
 *     T = A - sum_g b_g b_g',  S = diag(s) T diag(s) + [I 0; 0 0],  Lz Lz' = S_ZZ,  Rz = Lz^{-1} S_Z[X y],
 *     log|L_theta|^2 = 2 (sum_g log L_g + sum log diag Lz),  top = S_[X y][X y] - Rz'Rz.
 * crossed_gradient  (CrossedFactorization.gradient_parts): Sigma = (F F')^{-1} with F = [Lz 0; Rz_X' R_X]
 *     (REML) or Lz (ML), Phi = diag(s) Sigma diag(s), Y_g = C_g Phi C_g',
 *     Q_1 = sum_g (lambda_1 / a_g) [D_g - Y_g (1 - W_g D_g)],  Q_l = sum_{k in l} sum_j Sigma_kj s_j T_kj,
 *     the modes u_rest = Lz'^{-1} (Rz_y - Rz_X beta), b = s u, x = [-b_rest, -beta, 1],
 *     u_g = lambda_1 (C_g x) / a_g,  G_1 = sum_g (C_g x - D_g lambda_1 u_g) u_g,
 *     G_l = sum_{k in l} (A_k x - sum_g C_gk lambda_1 u_g) u_k.
 *
 * Arrays are C-ordered float64 (int64 for dims) passed by the buffer protocol: dims = [J, K, p, n_rest,
 * offsets of the remaining factors' columns 0 .. K], C (J, t) with t = K + p + 1, D (J,), A (t, t), lam =
 * [lambda_1, lambda_2 .. lambda_{n_rest + 1}] in solver order (the block functions' layout is given with them).
 * LAYOUT names these conventions; the Python side checks it before use. Sums over the groups run over each
 * group's nonzero entries of C_g only (a group of the first factor meets few groups of the others), and the
 * sums that decide the criterion are Neumaier-compensated, so it is as smooth near the optimum as NumPy's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LAYOUT "dims=J,K,p,n_rest,offsets;C=J*t;D=J;A=t*t;lam=1+n_rest;blocks:dims+=q1,q_rest;v2"

typedef struct {
    Py_ssize_t J;
    int K, p, t, n_rest;
    const int64_t *offsets; /* n_rest + 1 */
} Dims;

static int read_dims(Py_buffer *view, Dims *d) {
    const int64_t *v = view->buf;
    Py_ssize_t length = view->len / 8;
    if (length < 5) goto bad;
    d->J = (Py_ssize_t)v[0];
    d->K = (int)v[1];
    d->p = (int)v[2];
    d->n_rest = (int)v[3];
    d->offsets = v + 4;
    d->t = d->K + d->p + 1;
    if (d->J < 1 || d->K < 1 || d->p < 0 || d->n_rest < 1 || length != 5 + d->n_rest) goto bad;
    if (d->offsets[0] != 0 || d->offsets[d->n_rest] != d->K) goto bad;
    for (int r = 0; r < d->n_rest; r++)
        if (d->offsets[r + 1] <= d->offsets[r]) goto bad;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "crossed blocks: bad dims");
    return -1;
}

static int check_sizes(Py_buffer *views, const Py_ssize_t *doubles, int count) {
    for (int i = 0; i < count; i++) {
        if (!PyBuffer_IsContiguous(&views[i], 'C')) {
            PyErr_SetString(PyExc_ValueError, "crossed blocks: arrays must be C-contiguous");
            return -1;
        }
        if (doubles[i] >= 0 && views[i].len != doubles[i] * (Py_ssize_t)sizeof(double)) {
            PyErr_Format(PyExc_ValueError, "crossed blocks: array %d has %zd bytes, expected %zd", i, views[i].len,
                         doubles[i] * (Py_ssize_t)sizeof(double));
            return -1;
        }
    }
    return 0;
}

static void release(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++) PyBuffer_Release(&views[i]);
}

/* The positions of the nonzero entries of row (length t) into ``at``; returns their count. */
static int nonzero_entries(const double *row, int t, int *at) {
    int count = 0;
    for (int i = 0; i < t; i++)
        if (row[i] != 0.0) at[count++] = i;
    return count;
}

/* Neumaier's compensated summation: sum + comp carries the total to about one rounding of the result, so the
 * criterion is as smooth near the optimum as NumPy's blocked sums make it (the line search compares values that
 * differ by ~1e-15 relative). */
static inline void add_compensated(double *sum, double *comp, double x) {
    double total = *sum + x;
    *comp += fabs(*sum) >= fabs(x) ? (*sum - total) + x : (x - total) + *sum;
    *sum = total;
}

/* start - sum_{k < count} x[k * dx] y[k * dy], compensated. */
static double minus_products(double start, const double *x, int dx, const double *y, int dy, int count) {
    double sum = start, comp = 0.0;
    for (int k = 0; k < count; k++) add_compensated(&sum, &comp, -x[k * dx] * y[k * dy]);
    return sum + comp;
}

/* s: the diagonal of Lambda~ (t entries). */
static void column_scale(const Dims *d, const double *lam, double *s) {
    for (int r = 0; r < d->n_rest; r++)
        for (int64_t k = d->offsets[r]; k < d->offsets[r + 1]; k++) s[k] = lam[1 + r];
    for (int k = d->K; k < d->t; k++) s[k] = 1.0;
}

/* crossed_factorize(dims, C, D, A, lam, L_out, Linv_out, W_out, T_out, Lz_out, Rz_out, top_out) -> log|L_theta|^2,
 * NaN when S_ZZ is not positive definite. */
static PyObject *crossed_factorize(PyObject *self, PyObject *args) {
    Py_buffer v[12];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*w*w*w*w*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
                          &v[8], &v[9], &v[10], &v[11]))
        return NULL;
    Dims d;
    double *work = NULL;
    int *nonzero = NULL;
    PyObject *result = NULL;
    if (read_dims(&v[0], &d)) goto done;
    Py_ssize_t J = d.J;
    int K = d.K, p = d.p, t = d.t, P1 = p + 1;
    Py_ssize_t sizes[12] = {-1, J * t, J, (Py_ssize_t)t * t, 1 + d.n_rest, J, J, J, (Py_ssize_t)t * t,
                            (Py_ssize_t)K * K, (Py_ssize_t)K * P1, (Py_ssize_t)P1 * P1};
    if (check_sizes(v, sizes, 12)) goto done;
    const double *C = v[1].buf, *D = v[2].buf, *A = v[3].buf, *lam = v[4].buf;
    double *L = v[5].buf, *Linv = v[6].buf, *W = v[7].buf, *T = v[8].buf, *Lz = v[9].buf, *Rz = v[10].buf,
           *top = v[11].buf;
    work = calloc((size_t)(2 * t + 2 * t * t), sizeof(double));
    nonzero = malloc(sizeof(int) * (size_t)t);
    if (!work || !nonzero) { PyErr_NoMemory(); goto done; }
    double *s = work, *b = work + t, *N = b + t, *Ncomp = N + (Py_ssize_t)t * t;
    column_scale(&d, lam, s);
    double l1 = lam[0], square = l1 * l1, logdet = 0.0, logdet_comp = 0.0;
    /* N = sum_g b_g b_g' (upper triangle, compensated), over the nonzero entries of each C_g (a group of the first
     * factor meets few groups of the others; the skipped products are exact zeros); then T = A - N */
    for (Py_ssize_t g = 0; g < J; g++) {
        double a = square * D[g] + 1.0, Lg = sqrt(a);
        L[g] = Lg;
        Linv[g] = 1.0 / Lg;
        W[g] = square / a;
        add_compensated(&logdet, &logdet_comp, log(Lg));
        double f = Linv[g] * l1;
        int count = nonzero_entries(C + g * t, t, nonzero);
        for (int k = 0; k < count; k++) b[k] = f * C[g * t + nonzero[k]];
        for (int k = 0; k < count; k++) {
            Py_ssize_t row = (Py_ssize_t)nonzero[k] * t;
            for (int l = k; l < count; l++) add_compensated(N + row + nonzero[l], Ncomp + row + nonzero[l], b[k] * b[l]);
        }
    }
    for (int i = 0; i < t; i++)
        for (int j = i; j < t; j++) {
            Py_ssize_t at = (Py_ssize_t)i * t + j;
            T[at] = A[at] - (N[at] + Ncomp[at]);
            T[(Py_ssize_t)j * t + i] = T[at];
        }
    /* S = diag(s) T diag(s) + [I 0; 0 0]: Lz from its Z block, Rz = Lz^{-1} S_Z[X y], top = S_[X y] - Rz'Rz */
    memset(Lz, 0, sizeof(double) * (size_t)K * K);
    for (int j = 0; j < K; j++) {
        double dj = minus_products(s[j] * s[j] * T[(Py_ssize_t)j * t + j] + 1.0, Lz + j * K, 1, Lz + j * K, 1, j);
        if (!(dj > 0.0)) {
            result = PyFloat_FromDouble(NAN);
            goto done;
        }
        double ljj = sqrt(dj);
        Lz[j * K + j] = ljj;
        add_compensated(&logdet, &logdet_comp, log(ljj));
        for (int i = j + 1; i < K; i++)
            Lz[i * K + j] = minus_products(s[i] * s[j] * T[(Py_ssize_t)i * t + j], Lz + i * K, 1, Lz + j * K, 1, j) / ljj;
    }
    for (int c = 0; c < P1; c++)
        for (int i = 0; i < K; i++)
            Rz[i * P1 + c] = minus_products(s[i] * T[(Py_ssize_t)i * t + K + c], Lz + i * K, 1, Rz + c, P1, i) /
                             Lz[i * K + i];
    for (int a = 0; a < P1; a++)
        for (int c = 0; c < P1; c++)
            top[a * P1 + c] = minus_products(T[(Py_ssize_t)(K + a) * t + K + c], Rz + a, P1, Rz + c, P1, K);
    result = PyFloat_FromDouble(2.0 * (logdet + logdet_comp));
done:
    free(work);
    free(nonzero);
    release(v, 12);
    return result;
}

/* Sigma = (F F')^{-1} (m x m, full) for the lower-triangular F = [Lz 0; Rz_X' R_X] (REML) or Lz (ML). */
static void fixed_and_rest_inverse(int K, int p, int m, const double *Lz, const double *Rz, const double *RX,
                                   double *F, double *Finv, double *Sigma) {
    int P1 = p + 1;
    memset(F, 0, sizeof(double) * (size_t)m * m);
    for (int i = 0; i < K; i++)
        for (int j = 0; j <= i; j++) F[i * m + j] = Lz[i * K + j];
    for (int a = 0; a < m - K; a++) {
        for (int k = 0; k < K; k++) F[(K + a) * m + k] = Rz[k * P1 + a];
        for (int c = 0; c <= a; c++) F[(K + a) * m + K + c] = RX[a * p + c];
    }
    /* Finv column by column: F Finv[:, j] = e_j */
    memset(Finv, 0, sizeof(double) * (size_t)m * m);
    for (int j = 0; j < m; j++) {
        Finv[j * m + j] = 1.0 / F[j * m + j];
        for (int i = j + 1; i < m; i++) {
            double x = 0.0;
            for (int k = j; k < i; k++) x -= F[i * m + k] * Finv[k * m + j];
            Finv[i * m + j] = x / F[i * m + i];
        }
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j <= i; j++) {
            double x = 0.0;
            for (int k = i; k < m; k++) x += Finv[k * m + i] * Finv[k * m + j];
            Sigma[i * m + j] = x;
            Sigma[j * m + i] = x;
        }
}

/* crossed_gradient(dims, C, D, A, lam, Linv, W, T, Lz, Rz, RX, beta, reml, Q_out, G_out) */
static PyObject *crossed_gradient(PyObject *self, PyObject *args) {
    Py_buffer v[14];
    int reml;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*pw*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                          &v[7], &v[8], &v[9], &v[10], &v[11], &reml, &v[12], &v[13]))
        return NULL;
    Dims d;
    double *work = NULL;
    int *nonzero = NULL;
    PyObject *result = NULL;
    if (read_dims(&v[0], &d)) goto done;
    Py_ssize_t J = d.J;
    int K = d.K, p = d.p, t = d.t, P1 = p + 1, n = 1 + d.n_rest;
    int m = reml ? K + p : K;
    Py_ssize_t sizes[14] = {-1, J * t, J, (Py_ssize_t)t * t, n, J, J, (Py_ssize_t)t * t, (Py_ssize_t)K * K,
                            (Py_ssize_t)K * P1, (Py_ssize_t)p * p, p, n, n};
    if (check_sizes(v, sizes, 14)) goto done;
    const double *C = v[1].buf, *D = v[2].buf, *A = v[3].buf, *lam = v[4].buf, *Linv = v[5].buf, *W = v[6].buf,
                 *T = v[7].buf, *Lz = v[8].buf, *Rz = v[9].buf, *RX = v[10].buf, *beta = v[11].buf;
    double *Q = v[12].buf, *G = v[13].buf;
    size_t mm = (size_t)m * m;
    work = calloc(3 * mm + (size_t)(2 * t + K + J), sizeof(double));
    nonzero = malloc(sizeof(int) * (size_t)t);
    if (!work || !nonzero) { PyErr_NoMemory(); goto done; }
    double *F = work, *Finv = F + mm, *Phi = Finv + mm, *s = Phi + mm, *x = s + t, *u_rest = x + t,
           *b_first = u_rest + K;
    column_scale(&d, lam, s);
    double l1 = lam[0];
    memset(Q, 0, sizeof(double) * n);
    memset(G, 0, sizeof(double) * n);
    /* Sigma into Phi, then Q_l of the remaining factors from Sigma and T, then Phi = diag(s) Sigma diag(s) */
    fixed_and_rest_inverse(K, p, m, Lz, Rz, RX, F, Finv, Phi);
    for (int r = 0; r < d.n_rest; r++)
        for (int64_t k = d.offsets[r]; k < d.offsets[r + 1]; k++)
            for (int j = 0; j < m; j++) Q[1 + r] += Phi[k * m + j] * s[j] * T[k * t + j];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++) Phi[i * m + j] *= s[i] * s[j];
    /* the modes of the remaining factors: Lz' u_rest = Rz_y - Rz_X beta, then x = [-s u_rest, -beta, 1] */
    for (int k = K - 1; k >= 0; k--) {
        double r = Rz[k * P1 + p];
        for (int i = 0; i < p; i++) r -= Rz[k * P1 + i] * beta[i];
        for (int i = k + 1; i < K; i++) r -= Lz[i * K + k] * u_rest[i];
        u_rest[k] = r / Lz[k * K + k];
    }
    for (int k = 0; k < K; k++) x[k] = -s[k] * u_rest[k];
    for (int i = 0; i < p; i++) x[K + i] = -beta[i];
    x[t - 1] = 1.0;
    /* per group of the first factor: Y_g = C_g Phi C_g' (Q_1), C_g x, its mode u_g and Z_g'W e (G_1), over the
     * nonzero entries of C_g */
    for (Py_ssize_t g = 0; g < J; g++) {
        const double *Cg = C + g * t;
        int count = nonzero_entries(Cg, t, nonzero), inside = 0;
        while (inside < count && nonzero[inside] < m) inside++;  /* the entries within Phi's m columns */
        double Y = 0.0, Cx = 0.0;
        for (int k = 0; k < inside; k++) {
            double sum = 0.0;
            const double *row = Phi + (Py_ssize_t)nonzero[k] * m;
            for (int l = 0; l < inside; l++) sum += row[nonzero[l]] * Cg[nonzero[l]];
            Y += Cg[nonzero[k]] * sum;
        }
        for (int k = 0; k < count; k++) Cx += Cg[nonzero[k]] * x[nonzero[k]];
        double inverse = Linv[g] * Linv[g];  /* 1 / a_g */
        Q[0] += inverse * l1 * (D[g] - Y * (1.0 - W[g] * D[g]));
        double ug = inverse * (Cx * l1);
        b_first[g] = ug * l1;
        G[0] += (Cx - D[g] * b_first[g]) * ug;
    }
    /* Z_r'W e = A_r x - C_r' b_first for the remaining factors' effects, G_l = sum_{k in l} (Z_k'W e) u_k */
    for (int r = 0; r < d.n_rest; r++)
        for (int64_t k = d.offsets[r]; k < d.offsets[r + 1]; k++) {
            double z = 0.0;
            for (int j = 0; j < t; j++) z += A[k * t + j] * x[j];
            for (Py_ssize_t g = 0; g < J; g++) z -= C[g * t + k] * b_first[g];
            G[1 + r] += z * u_rest[k];
        }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    free(work);
    free(nonzero);
    release(v, 14);
    return result;
}


/* ---- factors with several coefficients (random slopes): every block q x q --------------------------------------
 *
 * dims = [J, K, p, n_rest, q_1, offsets of the remaining factors' columns 0 .. K, q_2 .. q_{n_rest + 1}], C (J, q_1, t),
 * D (J, q_1, q_1), lam = each factor's q x q Lambda (lower) concatenated in solver order. The formulas of
 * crossed.py: A_g = Lambda_1'D_g Lambda_1 + I = L_g L_g', W_g = Lambda_1 A_g^{-1} Lambda_1',
 * B_g = L_g^{-1} Lambda_1' C_g, T = A - sum_g B_g'B_g, S = Lambda~' T Lambda~ + [I 0; 0 0]; the gradient's
 * Q_1 = sum_g A_g^{-1} Lambda_1' [D_g - Y_g (I - W_g D_g)], Y_g = C_g Phi C_g', Q_l = sum over the groups h of l
 * of [Sigma Lambda~']_h T_h', and G from the modes as for one coefficient. */

typedef struct {
    Py_ssize_t J;
    int K, p, t, n_rest, q;
    const int64_t *offsets, *qs; /* n_rest + 1 offsets, n_rest sizes */
    Py_ssize_t lam_at[65];       /* where each factor's Lambda starts in lam; lam_at[n_rest + 1] = its length */
} Blocks;

static int read_blocks(Py_buffer *view, Blocks *d) {
    const int64_t *v = view->buf;
    Py_ssize_t length = view->len / 8;
    if (length < 7) goto bad;
    d->J = (Py_ssize_t)v[0];
    d->K = (int)v[1];
    d->p = (int)v[2];
    d->n_rest = (int)v[3];
    d->q = (int)v[4];
    d->offsets = v + 5;
    d->qs = v + 6 + d->n_rest;
    d->t = d->K + d->p + 1;
    if (d->J < 1 || d->K < 1 || d->p < 1 || d->q < 1 || d->n_rest < 1 || d->n_rest > 63) goto bad;
    if (length != 5 + 2 * d->n_rest + 1 || d->offsets[0] != 0 || d->offsets[d->n_rest] != d->K) goto bad;
    d->lam_at[0] = 0;
    d->lam_at[1] = (Py_ssize_t)d->q * d->q;
    for (int r = 0; r < d->n_rest; r++) {
        int64_t width = d->offsets[r + 1] - d->offsets[r], qr = d->qs[r];
        if (qr < 1 || width <= 0 || width % qr) goto bad;
        d->lam_at[r + 2] = d->lam_at[r + 1] + qr * qr;
    }
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "crossed blocks: bad block dims");
    return -1;
}

/* M (rows x t, row stride t): the column blocks of the remaining factors' groups times Lambda_l (transpose: Lambda_l'),
 * the columns of X and y kept; ``cols`` limits the columns touched to the first ``cols``. */
static void right_lambda(const Blocks *d, const double *lam, double *M, int rows, int stride, int transpose,
                         double *scratch) {
    for (int r = 0; r < d->n_rest; r++) {
        int qr = (int)d->qs[r];
        const double *lr = lam + d->lam_at[r + 1];
        for (int64_t c0 = d->offsets[r]; c0 < d->offsets[r + 1]; c0 += qr)
            for (int i = 0; i < rows; i++) {
                double *row = M + (Py_ssize_t)i * stride + c0;
                for (int b = 0; b < qr; b++) {
                    double sum = 0.0;
                    for (int a = 0; a < qr; a++) sum += row[a] * (transpose ? lr[b * qr + a] : lr[a * qr + b]);
                    scratch[b] = sum;
                }
                memcpy(row, scratch, sizeof(double) * qr);
            }
    }
}

/* M (rows x cols with row stride ``stride``): the row blocks of the remaining factors' groups times Lambda_l'
 * from the left (transpose: Lambda_l), over the first ``cols`` columns. */
static void left_lambda(const Blocks *d, const double *lam, double *M, int cols, int stride, int transpose,
                        double *scratch) {
    for (int r = 0; r < d->n_rest; r++) {
        int qr = (int)d->qs[r];
        const double *lr = lam + d->lam_at[r + 1];
        for (int64_t r0 = d->offsets[r]; r0 < d->offsets[r + 1]; r0 += qr)
            for (int j = 0; j < cols; j++) {
                for (int a = 0; a < qr; a++) {
                    double sum = 0.0;
                    for (int b = 0; b < qr; b++)
                        sum += (transpose ? lr[a * qr + b] : lr[b * qr + a]) * M[(r0 + b) * stride + j];
                    scratch[a] = sum;
                }
                for (int a = 0; a < qr; a++) M[(r0 + a) * stride + j] = scratch[a];
            }
    }
}

/* The columns where any of the q rows of C_g (q x t) is nonzero. */
static int nonzero_columns(const double *Cg, int q, int t, int *at) {
    int count = 0;
    for (int j = 0; j < t; j++)
        for (int a = 0; a < q; a++)
            if (Cg[a * t + j] != 0.0) { at[count++] = j; break; }
    return count;
}

/* crossed_factorize_blocks(dims, C, D, A, lam, L_out, Linv_out, W_out, T_out, Lz_out, Rz_out, top_out) ->
 * log|L_theta|^2, NaN when a block is not positive definite. */
static PyObject *crossed_factorize_blocks(PyObject *self, PyObject *args) {
    Py_buffer v[12];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*w*w*w*w*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
                          &v[8], &v[9], &v[10], &v[11]))
        return NULL;
    Blocks d;
    double *work = NULL;
    int *nonzero = NULL;
    PyObject *result = NULL;
    if (read_blocks(&v[0], &d)) goto done;
    Py_ssize_t J = d.J;
    int K = d.K, p = d.p, t = d.t, P1 = p + 1, q = d.q;
    Py_ssize_t qq = (Py_ssize_t)q * q, tt = (Py_ssize_t)t * t;
    Py_ssize_t sizes[12] = {-1, J * q * t, J * qq, tt, d.lam_at[d.n_rest + 1], J * qq, J * qq, J * qq, tt,
                            (Py_ssize_t)K * K, (Py_ssize_t)K * P1, (Py_ssize_t)P1 * P1};
    if (check_sizes(v, sizes, 12)) goto done;
    const double *C = v[1].buf, *D = v[2].buf, *A = v[3].buf, *lam = v[4].buf;
    double *L = v[5].buf, *Linv = v[6].buf, *W = v[7].buf, *T = v[8].buf, *Lz = v[9].buf, *Rz = v[10].buf,
           *top = v[11].buf;
    work = calloc((size_t)(3 * tt + 2 * q * t + 4 * qq + t), sizeof(double));
    nonzero = malloc(sizeof(int) * (size_t)t);
    if (!work || !nonzero) { PyErr_NoMemory(); goto done; }
    double *N = work, *Ncomp = N + tt, *S = Ncomp + tt, *P = S + tt, *B = P + q * t, *M = B + q * t, *tmp = M + qq,
           *LamLinvT = tmp + qq, *scratch = LamLinvT + qq;
    const double *lam1 = lam;
    double logdet = 0.0, logdet_comp = 0.0;
    for (Py_ssize_t g = 0; g < J; g++) {
        const double *Dg = D + g * qq, *Cg = C + g * q * t;
        double *Lg = L + g * qq, *Linvg = Linv + g * qq, *Wg = W + g * qq;
        /* A_g = Lambda_1' D_g Lambda_1 + I and its Cholesky factor */
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += Dg[a * q + c] * lam1[c * q + b];
                tmp[a * q + b] = sum;
            }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = a == b ? 1.0 : 0.0;
                for (int c = 0; c < q; c++) sum += lam1[c * q + a] * tmp[c * q + b];
                M[a * q + b] = sum;
            }
        memset(Lg, 0, sizeof(double) * qq);
        for (int j = 0; j < q; j++) {
            double dj = minus_products(M[j * q + j], Lg + j * q, 1, Lg + j * q, 1, j);
            if (!(dj > 0.0)) { result = PyFloat_FromDouble(NAN); goto done; }
            Lg[j * q + j] = sqrt(dj);
            add_compensated(&logdet, &logdet_comp, log(Lg[j * q + j]));
            for (int i = j + 1; i < q; i++)
                Lg[i * q + j] = minus_products(M[i * q + j], Lg + i * q, 1, Lg + j * q, 1, j) / Lg[j * q + j];
        }
        /* L_g^{-1} (lower), W_g = (Lambda_1 L_g'^{-1})(Lambda_1 L_g'^{-1})' */
        memset(Linvg, 0, sizeof(double) * qq);
        for (int j = 0; j < q; j++) {
            Linvg[j * q + j] = 1.0 / Lg[j * q + j];
            for (int i = j + 1; i < q; i++) {
                double x = 0.0;
                for (int k = j; k < i; k++) x -= Lg[i * q + k] * Linvg[k * q + j];
                Linvg[i * q + j] = x / Lg[i * q + i];
            }
        }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += lam1[a * q + c] * Linvg[b * q + c];
                LamLinvT[a * q + b] = sum;
            }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += LamLinvT[a * q + c] * LamLinvT[b * q + c];
                Wg[a * q + b] = sum;
            }
        /* B_g = L_g^{-1} Lambda_1' C_g on the nonzero columns; N += B_g'B_g (compensated) */
        int count = nonzero_columns(Cg, q, t, nonzero);
        for (int a = 0; a < q; a++)
            for (int k = 0; k < count; k++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += lam1[c * q + a] * Cg[c * t + nonzero[k]];
                P[a * t + k] = sum;
            }
        for (int a = 0; a < q; a++)
            for (int k = 0; k < count; k++) {
                double sum = 0.0;
                for (int c = 0; c <= a; c++) sum += Linvg[a * q + c] * P[c * t + k];
                B[a * t + k] = sum;
            }
        for (int k = 0; k < count; k++) {
            Py_ssize_t row = (Py_ssize_t)nonzero[k] * t;
            for (int l = k; l < count; l++) {
                double sum = 0.0;
                for (int a = 0; a < q; a++) sum += B[a * t + k] * B[a * t + l];
                add_compensated(N + row + nonzero[l], Ncomp + row + nonzero[l], sum);
            }
        }
    }
    for (int i = 0; i < t; i++)
        for (int j = i; j < t; j++) {
            Py_ssize_t at = (Py_ssize_t)i * t + j;
            T[at] = A[at] - (N[at] + Ncomp[at]);
            T[(Py_ssize_t)j * t + i] = T[at];
        }
    /* S = Lambda~' T Lambda~ + [I 0; 0 0], its Z block factored as for one coefficient */
    memcpy(S, T, sizeof(double) * (size_t)tt);
    right_lambda(&d, lam, S, t, t, 0, scratch);
    left_lambda(&d, lam, S, t, t, 0, scratch);
    memset(Lz, 0, sizeof(double) * (size_t)K * K);
    for (int j = 0; j < K; j++) {
        double dj = minus_products(S[(Py_ssize_t)j * t + j] + 1.0, Lz + j * K, 1, Lz + j * K, 1, j);
        if (!(dj > 0.0)) { result = PyFloat_FromDouble(NAN); goto done; }
        double ljj = sqrt(dj);
        Lz[j * K + j] = ljj;
        add_compensated(&logdet, &logdet_comp, log(ljj));
        for (int i = j + 1; i < K; i++)
            Lz[i * K + j] = minus_products(S[(Py_ssize_t)i * t + j], Lz + i * K, 1, Lz + j * K, 1, j) / ljj;
    }
    for (int c = 0; c < P1; c++)
        for (int i = 0; i < K; i++)
            Rz[i * P1 + c] = minus_products(S[(Py_ssize_t)i * t + K + c], Lz + i * K, 1, Rz + c, P1, i) / Lz[i * K + i];
    for (int a = 0; a < P1; a++)
        for (int c = 0; c < P1; c++)
            top[a * P1 + c] = minus_products(S[(Py_ssize_t)(K + a) * t + K + c], Rz + a, P1, Rz + c, P1, K);
    result = PyFloat_FromDouble(2.0 * (logdet + logdet_comp));
done:
    free(work);
    free(nonzero);
    release(v, 12);
    return result;
}

/* crossed_gradient_blocks(dims, C, D, A, lam, Linv, W, T, Lz, Rz, RX, beta, reml, Q_out, G_out): Q and G of each
 * factor (q x q, row-major) concatenated in solver order, as lam. */
static PyObject *crossed_gradient_blocks(PyObject *self, PyObject *args) {
    Py_buffer v[14];
    int reml;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*pw*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                          &v[7], &v[8], &v[9], &v[10], &v[11], &reml, &v[12], &v[13]))
        return NULL;
    Blocks d;
    double *work = NULL;
    int *nonzero = NULL;
    PyObject *result = NULL;
    if (read_blocks(&v[0], &d)) goto done;
    Py_ssize_t J = d.J;
    int K = d.K, p = d.p, t = d.t, P1 = p + 1, q = d.q;
    int m = reml ? K + p : K;
    Py_ssize_t qq = (Py_ssize_t)q * q, nl = d.lam_at[d.n_rest + 1];
    Py_ssize_t sizes[14] = {-1, J * q * t, J * qq, (Py_ssize_t)t * t, nl, J * qq, J * qq, (Py_ssize_t)t * t,
                            (Py_ssize_t)K * K, (Py_ssize_t)K * P1, (Py_ssize_t)p * p, p, nl, nl};
    if (check_sizes(v, sizes, 14)) goto done;
    const double *C = v[1].buf, *D = v[2].buf, *A = v[3].buf, *lam = v[4].buf, *Linv = v[5].buf, *W = v[6].buf,
                 *T = v[7].buf, *Lz = v[8].buf, *Rz = v[9].buf, *RX = v[10].buf, *beta = v[11].buf;
    double *Q = v[12].buf, *G = v[13].buf;
    size_t mm = (size_t)m * m;
    work = calloc(4 * mm + (size_t)(2 * t + K + J * q + 6 * qq + 3 * q + t), sizeof(double));
    nonzero = malloc(sizeof(int) * (size_t)t);
    if (!work || !nonzero) { PyErr_NoMemory(); goto done; }
    double *F = work, *Finv = F + mm, *Sigma = Finv + mm, *Phi = Sigma + mm, *x = Phi + mm, *u_rest = x + t,
           *b_first = u_rest + K, *Ainv = b_first + J * q, *AinvLamT = Ainv + qq, *inner = AinvLamT + qq,
           *Y = inner + qq, *YW = Y + qq, *WD = YW + qq, *Cx = WD + qq, *vec = Cx + q, *u1 = vec + q,
           *scratch = u1 + q;
    const double *lam1 = lam;
    memset(Q, 0, sizeof(double) * nl);
    memset(G, 0, sizeof(double) * nl);
    /* Sigma, then Sigma Lambda~' (kept in Sigma) and Phi = Lambda~ Sigma Lambda~' */
    fixed_and_rest_inverse(K, p, m, Lz, Rz, RX, F, Finv, Sigma);
    right_lambda(&d, lam, Sigma, m, m, 1, scratch);
    memcpy(Phi, Sigma, sizeof(double) * mm);
    left_lambda(&d, lam, Phi, m, m, 1, scratch);
    /* Q_l = sum_h [Sigma Lambda~']_h T_h' over the groups h of each remaining factor */
    for (int r = 0; r < d.n_rest; r++) {
        int qr = (int)d.qs[r];
        double *Qr = Q + d.lam_at[r + 1];
        for (int64_t h0 = d.offsets[r]; h0 < d.offsets[r + 1]; h0 += qr)
            for (int a = 0; a < qr; a++)
                for (int b = 0; b < qr; b++) {
                    double sum = 0.0;
                    for (int j = 0; j < m; j++) sum += Sigma[(h0 + a) * m + j] * T[(h0 + b) * t + j];
                    Qr[a * qr + b] += sum;
                }
    }
    /* the modes of the remaining factors and x = [-Lambda~ u_rest, -beta, 1] */
    for (int k = K - 1; k >= 0; k--) {
        double r = Rz[k * P1 + p];
        for (int i = 0; i < p; i++) r -= Rz[k * P1 + i] * beta[i];
        for (int i = k + 1; i < K; i++) r -= Lz[i * K + k] * u_rest[i];
        u_rest[k] = r / Lz[k * K + k];
    }
    memcpy(x, u_rest, sizeof(double) * K);
    left_lambda(&d, lam, x, 1, 1, 1, scratch);
    for (int k = 0; k < K; k++) x[k] = -x[k];
    for (int i = 0; i < p; i++) x[K + i] = -beta[i];
    x[t - 1] = 1.0;
    for (Py_ssize_t g = 0; g < J; g++) {
        const double *Cg = C + g * q * t, *Dg = D + g * qq, *Linvg = Linv + g * qq, *Wg = W + g * qq;
        int count = nonzero_columns(Cg, q, t, nonzero), inside = 0;
        while (inside < count && nonzero[inside] < m) inside++;
        /* A_g^{-1} = L_g'^{-1} L_g^{-1} and A_g^{-1} Lambda_1' */
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += Linvg[c * q + a] * Linvg[c * q + b];
                Ainv[a * q + b] = sum;
            }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += Ainv[a * q + c] * lam1[b * q + c];
                AinvLamT[a * q + b] = sum;
            }
        /* Y_g = C_g Phi C_g' over the nonzero columns within Phi */
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int k = 0; k < inside; k++) {
                    double row = 0.0;
                    const double *phi = Phi + (Py_ssize_t)nonzero[k] * m;
                    for (int l = 0; l < inside; l++) row += phi[nonzero[l]] * Cg[b * t + nonzero[l]];
                    sum += Cg[a * t + nonzero[k]] * row;
                }
                Y[a * q + b] = sum;
            }
        /* Q_1 += A_g^{-1} Lambda_1' [D_g - Y_g (I - W_g D_g)] */
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = a == b ? 1.0 : 0.0;
                for (int c = 0; c < q; c++) sum -= Wg[a * q + c] * Dg[c * q + b];
                WD[a * q + b] = sum;
            }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += Y[a * q + c] * WD[c * q + b];
                YW[a * q + b] = sum;
            }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) inner[a * q + b] = Dg[a * q + b] - YW[a * q + b];
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += AinvLamT[a * q + c] * inner[c * q + b];
                Q[a * q + b] += sum;
            }
        /* C_g x, u_g = A_g^{-1} Lambda_1' C_g x, b_g = Lambda_1 u_g, G_1 += (C_g x - D_g b_g) u_g' */
        for (int a = 0; a < q; a++) {
            double sum = 0.0;
            for (int k = 0; k < count; k++) sum += Cg[a * t + nonzero[k]] * x[nonzero[k]];
            Cx[a] = sum;
        }
        for (int a = 0; a < q; a++) {
            double sum = 0.0;
            for (int c = 0; c < q; c++) sum += Cx[c] * lam1[c * q + a];
            vec[a] = sum;
        }
        for (int a = 0; a < q; a++) {
            double sum = 0.0;
            for (int c = 0; c < q; c++) sum += Ainv[a * q + c] * vec[c];
            u1[a] = sum;
        }
        double *bg = b_first + g * q;
        for (int a = 0; a < q; a++) {
            double sum = 0.0;
            for (int c = 0; c < q; c++) sum += u1[c] * lam1[a * q + c];
            bg[a] = sum;
        }
        for (int a = 0; a < q; a++) {
            double z = Cx[a];
            for (int c = 0; c < q; c++) z -= Dg[a * q + c] * bg[c];
            for (int b = 0; b < q; b++) G[a * q + b] += z * u1[b];
        }
    }
    /* Z_r'W e = A_r x - C_r' b_first, G_l = sum_h (Z_h'W e) u_h' */
    for (int r = 0; r < d.n_rest; r++) {
        int qr = (int)d.qs[r];
        double *Gr = G + d.lam_at[r + 1];
        for (int64_t h0 = d.offsets[r]; h0 < d.offsets[r + 1]; h0 += qr)
            for (int a = 0; a < qr; a++) {
                int64_t k = h0 + a;
                double z = 0.0;
                for (int j = 0; j < t; j++) z += A[k * t + j] * x[j];
                for (Py_ssize_t g = 0; g < J; g++)
                    for (int c = 0; c < q; c++) z -= C[(g * q + c) * t + k] * b_first[g * q + c];
                for (int b = 0; b < qr; b++) Gr[a * qr + b] += z * u_rest[h0 + b];
            }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    free(work);
    free(nonzero);
    release(v, 14);
    return result;
}

static PyMethodDef METHODS[] = {
    {"crossed_factorize", crossed_factorize, METH_VARARGS,
     "crossed_factorize(dims, C, D, A, lam, L, Linv, W, T, Lz, Rz, top) -> log|L_theta|^2 (NaN: not positive "
     "definite)"},
    {"crossed_gradient", crossed_gradient, METH_VARARGS,
     "crossed_gradient(dims, C, D, A, lam, Linv, W, T, Lz, Rz, RX, beta, reml, Q_out, G_out)"},
    {"crossed_factorize_blocks", crossed_factorize_blocks, METH_VARARGS,
     "crossed_factorize_blocks(dims, C, D, A, lam, L, Linv, W, T, Lz, Rz, top) -> log|L_theta|^2 (NaN: not positive "
     "definite)"},
    {"crossed_gradient_blocks", crossed_gradient_blocks, METH_VARARGS,
     "crossed_gradient_blocks(dims, C, D, A, lam, Linv, W, T, Lz, Rz, RX, beta, reml, Q_out, G_out)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_crossed_blocks",
                                    "One evaluation of the dense crossed REML / ML solver with one coefficient per "
                                    "factor (crossed.py).", -1, METHODS};

PyMODINIT_FUNC PyInit__crossed_blocks(void) {
    PyObject *module = PyModule_Create(&MODULE);
    if (module && PyModule_AddStringConstant(module, "LAYOUT", LAYOUT) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
