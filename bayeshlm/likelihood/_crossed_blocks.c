/* One REML / ML evaluation of bayeshlm/likelihood/crossed.py compiled (issue 27, "Small models"), for the dense
 * case (C kept as a J x t array) when every grouping factor has one coefficient (crossed random intercepts, such
 * as ScotsSec's primary x second schools). NumPy runs each evaluation as ~40 calls on arrays of a few hundred
 * numbers, whose per-call cost is most of the time; here it is two calls. The formulas are those of crossed.py
 * with q = 1 (every block a number), in another order (equal to rounding):
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
 * [lambda_1, lambda_2 .. lambda_{n_rest + 1}] in solver order. LAYOUT names this convention; the Python side
 * checks it before use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LAYOUT "dims=J,K,p,n_rest,offsets;C=J*t;D=J;A=t*t;lam=1+n_rest;v1"

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
static void fixed_and_rest_inverse(const Dims *d, int m, const double *Lz, const double *Rz, const double *RX,
                                   double *F, double *Finv, double *Sigma) {
    int K = d->K, p = d->p, P1 = p + 1;
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
    fixed_and_rest_inverse(&d, m, Lz, Rz, RX, F, Finv, Phi);
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

static PyMethodDef METHODS[] = {
    {"crossed_factorize", crossed_factorize, METH_VARARGS,
     "crossed_factorize(dims, C, D, A, lam, L, Linv, W, T, Lz, Rz, top) -> log|L_theta|^2 (NaN: not positive "
     "definite)"},
    {"crossed_gradient", crossed_gradient, METH_VARARGS,
     "crossed_gradient(dims, C, D, A, lam, Linv, W, T, Lz, Rz, RX, beta, reml, Q_out, G_out)"},
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
