/* One REML / ML evaluation of bayeshlm/likelihood/crossed.py compiled (issue 27, "Small models"), for the dense
 * case (C kept as a J x q_1 x t array). NumPy runs each evaluation as ~40 calls on arrays of a few hundred numbers,
 * whose per-call cost is most of the time; here it is two calls, for factors with any number of coefficients q (one:
 * crossed random intercepts such as ScotsSec's primary x second schools, every block a number; several: random
 * slopes). The formulas of crossed.py, group by group (equal to rounding):
 *
 * crossed_factorize  (CrossedSolver.factorize): A_g = Lambda_1'D_g Lambda_1 + I = L_g L_g',
 *     W_g = Lambda_1 A_g^{-1} Lambda_1', B_g = L_g^{-1} Lambda_1' C_g, T = A - sum_g B_g'B_g,
 *     S = Lambda~' T Lambda~ + [I 0; 0 0] (Lambda~ = blockdiag(Lambda_r, I)), Lz Lz' = S_ZZ, Rz = Lz^{-1} S_Z[X y],
 *     log|L_theta|^2 = 2 (sum_g log|L_g| + sum log diag Lz),  top = S_[X y][X y] - Rz'Rz.
 * crossed_gradient  (CrossedFactorization.gradient_parts): Sigma = (F F')^{-1} with F = [Lz 0; Rz_X' R_X]
 *     (REML) or Lz (ML), Phi = Lambda~ Sigma Lambda~', Y_g = C_g Phi C_g',
 *     Q_1 = sum_g A_g^{-1} Lambda_1' [D_g - Y_g (I - W_g D_g)],  Q_l = sum over the groups h of l of
 *     [Sigma Lambda~']_h T_h', the modes u_rest = Lz'^{-1} (Rz_y - Rz_X beta), x = [-Lambda~ u_rest, -beta, 1],
 *     u_g = A_g^{-1} Lambda_1' C_g x,  b_g = Lambda_1 u_g,  G_1 = sum_g (C_g x - D_g b_g) u_g',
 *     G_l = sum_h (A_h x - sum_g C_gh' b_g) u_h'.
 *
 * Arrays are C-ordered float64 (int64 for dims) passed by the buffer protocol: dims = [J, K, p, n_rest, q_1,
 * offsets of the remaining factors' columns 0 .. K, q_2 .. q_{n_rest + 1}], C (J, q_1, t) with t = K + p + 1,
 * D (J, q_1, q_1), A (t, t), lam = each factor's q x q Lambda (lower, row-major) concatenated in solver order; Q and
 * G come back in lam's layout. LAYOUT names these conventions; the Python side checks it before use. Sums over
 * the groups run over each group's nonzero columns of C_g only (a group of the first factor meets few groups of
 * the others), and the sums that decide the criterion are Neumaier-compensated, so it is as smooth near the
 * optimum as NumPy's. The per-group work is written once for any q and compiled twice (SPECIALISED below): with
 * q = 1 a constant its q x q loops vanish, so one-coefficient designs keep most of the speed of the scalar
 * functions this replaced (ScotsSec's value + gradient 5-8% slower, see the commit); the arithmetic is the same
 * either way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LAYOUT "dims=J,K,p,n_rest,q1,offsets,q_rest;C=J*q1*t;D=J*q1*q1;A=t*t;lam=q*q per factor;v3"

/* Inlined into each caller, so a call with a constant block size compiles to code for that size. */
#if defined(_MSC_VER)
#define SPECIALISED static __forceinline
#else
#define SPECIALISED static inline __attribute__((always_inline))
#endif

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

/* Cholesky factor L (n x n, lower, row stride n) of M (row stride ``stride``) + shift I, the dot products
 * compensated; adds sum log diag L to logdet. -1 when M + shift I is not positive definite. */
SPECIALISED int cholesky_compensated(const double *M, int stride, int n, double shift, double *L, double *logdet,
                                     double *logdet_comp) {
    memset(L, 0, sizeof(double) * (size_t)n * n);
    for (int j = 0; j < n; j++) {
        double dj = minus_products(M[(Py_ssize_t)j * stride + j] + shift, L + j * n, 1, L + j * n, 1, j);
        if (!(dj > 0.0)) return -1;
        double ljj = sqrt(dj);
        L[j * n + j] = ljj;
        add_compensated(logdet, logdet_comp, log(ljj));
        for (int i = j + 1; i < n; i++)
            L[i * n + j] = minus_products(M[(Py_ssize_t)i * stride + j], L + i * n, 1, L + j * n, 1, j) / ljj;
    }
    return 0;
}

/* Finv = F^{-1} (n x n, lower) column by column: F Finv[:, j] = e_j. */
SPECIALISED void lower_inverse(const double *F, int n, double *Finv) {
    memset(Finv, 0, sizeof(double) * (size_t)n * n);
    for (int j = 0; j < n; j++) {
        Finv[j * n + j] = 1.0 / F[j * n + j];
        for (int i = j + 1; i < n; i++) {
            double x = 0.0;
            for (int k = j; k < i; k++) x -= F[i * n + k] * Finv[k * n + j];
            Finv[i * n + j] = x / F[i * n + i];
        }
    }
}

/* out = X Y (transpose_y: X Y'), q x q, row-major. */
SPECIALISED void square_product(const double *X, const double *Y, int q, int transpose_y, double *out) {
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++) {
            double sum = 0.0;
            for (int c = 0; c < q; c++) sum += X[a * q + c] * (transpose_y ? Y[b * q + c] : Y[c * q + b]);
            out[a * q + b] = sum;
        }
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
    lower_inverse(F, m, Finv);
    for (int i = 0; i < m; i++)
        for (int j = 0; j <= i; j++) {
            double x = 0.0;
            for (int k = i; k < m; k++) x += Finv[k * m + i] * Finv[k * m + j];
            Sigma[i * m + j] = x;
            Sigma[j * m + i] = x;
        }
}

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

/* The groups' q x q blocks of columns [from, to) of M (rows x ..., row stride ``stride``) times lr (transpose:
 * lr'). */
SPECIALISED void right_lambda_factor(double *M, int rows, int stride, int64_t from, int64_t to, int q,
                                     const double *lr, int transpose, double *scratch) {
    for (int i = 0; i < rows; i++)
        for (int64_t c0 = from; c0 < to; c0 += q) {
            double *row = M + (Py_ssize_t)i * stride + c0;
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int a = 0; a < q; a++) sum += row[a] * (transpose ? lr[b * q + a] : lr[a * q + b]);
                scratch[b] = sum;
            }
            memcpy(row, scratch, sizeof(double) * q);
        }
}

/* The groups' q x q blocks of rows [from, to) of M (first ``cols`` columns, row stride ``stride``) times lr' from
 * the left (transpose: lr). */
SPECIALISED void left_lambda_factor(double *M, int cols, int stride, int64_t from, int64_t to, int q,
                                    const double *lr, int transpose, double *scratch) {
    for (int64_t r0 = from; r0 < to; r0 += q)
        for (int j = 0; j < cols; j++) {
            for (int a = 0; a < q; a++) {
                double sum = 0.0;
                for (int b = 0; b < q; b++)
                    sum += (transpose ? lr[a * q + b] : lr[b * q + a]) * M[(r0 + b) * stride + j];
                scratch[a] = sum;
            }
            for (int a = 0; a < q; a++) M[(r0 + a) * stride + j] = scratch[a];
        }
}

enum side { LEFT, RIGHT };

/* M Lambda~ (side RIGHT; transpose: M Lambda~') on the remaining factors' columns of M's first ``count`` rows, or
 * Lambda~' M (side LEFT; transpose: Lambda~ M) on their rows over M's first ``count`` columns; row stride
 * ``stride``, the columns (rows) of X and y kept. */
static void apply_lambda(const Blocks *d, const double *lam, double *M, int count, int stride, enum side side,
                         int transpose, double *scratch) {
    for (int r = 0; r < d->n_rest; r++) {
        int qr = (int)d->qs[r];
        const double *lr = lam + d->lam_at[r + 1];
        int64_t from = d->offsets[r], to = d->offsets[r + 1];
        if (side == RIGHT && qr == 1)
            right_lambda_factor(M, count, stride, from, to, 1, lr, transpose, scratch);
        else if (side == RIGHT)
            right_lambda_factor(M, count, stride, from, to, qr, lr, transpose, scratch);
        else if (qr == 1)
            left_lambda_factor(M, count, stride, from, to, 1, lr, transpose, scratch);
        else
            left_lambda_factor(M, count, stride, from, to, qr, lr, transpose, scratch);
    }
}

/* The columns where any of the q rows of C_g (q x t) is nonzero. */
SPECIALISED int nonzero_columns(const double *Cg, int q, int t, int *at) {
    int count = 0;
    for (int j = 0; j < t; j++)
        for (int a = 0; a < q; a++)
            if (Cg[a * t + j] != 0.0) { at[count++] = j; break; }
    return count;
}

/* Every group g of the first factor (block size q): L_g, L_g^{-1}, W_g, and N += B_g'B_g (upper triangle,
 * compensated) over the nonzero columns of C_g; sum_g log|L_g| into logdet. work: 2 q t + 3 q^2. -1 when an A_g is
 * not positive definite. */
SPECIALISED int first_factor_schur(const Blocks *d, int q, const double *C, const double *D, const double *lam1,
                                   double *L, double *Linv, double *W, double *N, double *Ncomp, double *work,
                                   int *nonzero, double *logdet, double *logdet_comp) {
    int t = d->t;
    Py_ssize_t qq = (Py_ssize_t)q * q;
    double *P = work, *B = P + q * t, *M = B + q * t, *tmp = M + qq, *LamLinvT = tmp + qq;
    for (Py_ssize_t g = 0; g < d->J; g++) {
        const double *Dg = D + g * qq, *Cg = C + g * q * t;
        double *Lg = L + g * qq, *Linvg = Linv + g * qq, *Wg = W + g * qq;
        /* A_g = Lambda_1' D_g Lambda_1 + I, its Cholesky factor and L_g^{-1} */
        square_product(Dg, lam1, q, 0, tmp);
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = a == b ? 1.0 : 0.0;
                for (int c = 0; c < q; c++) sum += lam1[c * q + a] * tmp[c * q + b];
                M[a * q + b] = sum;
            }
        if (cholesky_compensated(M, q, q, 0.0, Lg, logdet, logdet_comp)) return -1;
        lower_inverse(Lg, q, Linvg);
        /* W_g = (Lambda_1 L_g'^{-1})(Lambda_1 L_g'^{-1})' */
        square_product(lam1, Linvg, q, 1, LamLinvT);
        square_product(LamLinvT, LamLinvT, q, 1, Wg);
        /* B_g = L_g^{-1} Lambda_1' C_g on the nonzero columns; N += B_g'B_g */
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
    return 0;
}

/* crossed_factorize(dims, C, D, A, lam, L_out, Linv_out, W_out, T_out, Lz_out, Rz_out, top_out) -> log|L_theta|^2,
 * NaN when a block is not positive definite. */
static PyObject *crossed_factorize(PyObject *self, PyObject *args) {
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
    work = calloc((size_t)(3 * tt + 2 * q * t + 3 * qq + t), sizeof(double));
    nonzero = malloc(sizeof(int) * (size_t)t);
    if (!work || !nonzero) { PyErr_NoMemory(); goto done; }
    double *N = work, *Ncomp = N + tt, *S = Ncomp + tt, *first_work = S + tt,
           *scratch = first_work + 2 * q * t + 3 * qq;
    double logdet = 0.0, logdet_comp = 0.0;
    int failed = q == 1 ? first_factor_schur(&d, 1, C, D, lam, L, Linv, W, N, Ncomp, first_work, nonzero, &logdet,
                                             &logdet_comp)
                        : first_factor_schur(&d, q, C, D, lam, L, Linv, W, N, Ncomp, first_work, nonzero, &logdet,
                                             &logdet_comp);
    if (failed) { result = PyFloat_FromDouble(NAN); goto done; }
    for (int i = 0; i < t; i++)
        for (int j = i; j < t; j++) {
            Py_ssize_t at = (Py_ssize_t)i * t + j;
            T[at] = A[at] - (N[at] + Ncomp[at]);
            T[(Py_ssize_t)j * t + i] = T[at];
        }
    /* S = Lambda~' T Lambda~ + [I 0; 0 0]: Lz from its Z block, Rz = Lz^{-1} S_Z[X y], top = S_[X y] - Rz'Rz */
    memcpy(S, T, sizeof(double) * (size_t)tt);
    apply_lambda(&d, lam, S, t, t, RIGHT, 0, scratch);
    apply_lambda(&d, lam, S, t, t, LEFT, 0, scratch);
    if (cholesky_compensated(S, t, K, 1.0, Lz, &logdet, &logdet_comp)) { result = PyFloat_FromDouble(NAN); goto done; }
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

/* Every group g of the first factor (block size q): Q_1 += A_g^{-1} Lambda_1' [D_g - Y_g (I - W_g D_g)] with
 * Y_g = C_g Phi C_g' (Phi m x m), and from C_g x: u_g = A_g^{-1} Lambda_1' C_g x, b_g = Lambda_1 u_g (into b_first),
 * G_1 += (C_g x - D_g b_g) u_g', over the nonzero columns of C_g. work: 6 q^2 + 3 q. */
SPECIALISED void first_factor_gradient(const Blocks *d, int q, int m, const double *C, const double *D,
                                       const double *lam1, const double *Linv, const double *W, const double *Phi,
                                       const double *x, double *b_first, double *Q, double *G, double *work,
                                       int *nonzero) {
    int t = d->t;
    Py_ssize_t qq = (Py_ssize_t)q * q;
    double *Ainv = work, *AinvLamT = Ainv + qq, *inner = AinvLamT + qq, *Y = inner + qq, *YW = Y + qq, *WD = YW + qq,
           *Cx = WD + qq, *vec = Cx + q, *u1 = vec + q;
    for (Py_ssize_t g = 0; g < d->J; g++) {
        const double *Cg = C + g * q * t, *Dg = D + g * qq, *Linvg = Linv + g * qq, *Wg = W + g * qq;
        int count = nonzero_columns(Cg, q, t, nonzero), inside = 0;
        while (inside < count && nonzero[inside] < m) inside++;  /* the nonzero columns within Phi's m */
        /* A_g^{-1} = L_g'^{-1} L_g^{-1} and A_g^{-1} Lambda_1' */
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += Linvg[c * q + a] * Linvg[c * q + b];
                Ainv[a * q + b] = sum;
            }
        square_product(Ainv, lam1, q, 1, AinvLamT);
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
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = a == b ? 1.0 : 0.0;
                for (int c = 0; c < q; c++) sum -= Wg[a * q + c] * Dg[c * q + b];
                WD[a * q + b] = sum;
            }
        square_product(Y, WD, q, 0, YW);
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) inner[a * q + b] = Dg[a * q + b] - YW[a * q + b];
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double sum = 0.0;
                for (int c = 0; c < q; c++) sum += AinvLamT[a * q + c] * inner[c * q + b];
                Q[a * q + b] += sum;
            }
        /* C_g x, u_g, b_g and G_1 */
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
}

/* crossed_gradient(dims, C, D, A, lam, Linv, W, T, Lz, Rz, RX, beta, reml, Q_out, G_out): Q and G of each factor
 * (q x q, row-major) concatenated in solver order, as lam. */
static PyObject *crossed_gradient(PyObject *self, PyObject *args) {
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
           *b_first = u_rest + K, *first_work = b_first + J * q, *scratch = first_work + 6 * qq + 3 * q;
    memset(Q, 0, sizeof(double) * nl);
    memset(G, 0, sizeof(double) * nl);
    /* Sigma, then Sigma Lambda~' (kept in Sigma) and Phi = Lambda~ Sigma Lambda~' */
    fixed_and_rest_inverse(K, p, m, Lz, Rz, RX, F, Finv, Sigma);
    apply_lambda(&d, lam, Sigma, m, m, RIGHT, 1, scratch);
    memcpy(Phi, Sigma, sizeof(double) * mm);
    apply_lambda(&d, lam, Phi, m, m, LEFT, 1, scratch);
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
    /* the modes of the remaining factors: Lz' u_rest = Rz_y - Rz_X beta, then x = [-Lambda~ u_rest, -beta, 1] */
    for (int k = K - 1; k >= 0; k--) {
        double r = Rz[k * P1 + p];
        for (int i = 0; i < p; i++) r -= Rz[k * P1 + i] * beta[i];
        for (int i = k + 1; i < K; i++) r -= Lz[i * K + k] * u_rest[i];
        u_rest[k] = r / Lz[k * K + k];
    }
    memcpy(x, u_rest, sizeof(double) * K);
    apply_lambda(&d, lam, x, 1, 1, LEFT, 1, scratch);
    for (int k = 0; k < K; k++) x[k] = -x[k];
    for (int i = 0; i < p; i++) x[K + i] = -beta[i];
    x[t - 1] = 1.0;
    if (q == 1)
        first_factor_gradient(&d, 1, m, C, D, lam, Linv, W, Phi, x, b_first, Q, G, first_work, nonzero);
    else
        first_factor_gradient(&d, q, m, C, D, lam, Linv, W, Phi, x, b_first, Q, G, first_work, nonzero);
    /* Z_r'W e = A_r x - C_r' b_first, G_l = sum_h (Z_h'W e) u_h' */
    for (int r = 0; r < d.n_rest; r++) {
        int qr = (int)d.qs[r];
        double *Gr = G + d.lam_at[r + 1];
        for (int64_t h0 = d.offsets[r]; h0 < d.offsets[r + 1]; h0 += qr)
            for (int a = 0; a < qr; a++) {
                int64_t k = h0 + a;
                double z = 0.0;
                for (int j = 0; j < t; j++) z += A[k * t + j] * x[j];
                for (Py_ssize_t e = 0; e < J * q; e++) z -= C[e * t + k] * b_first[e];
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
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_crossed_blocks",
                                    "One evaluation of the dense crossed REML / ML solver (crossed.py), q x q blocks "
                                    "per factor.", -1, METHODS};

PyMODINIT_FUNC PyInit__crossed_blocks(void) {
    PyObject *module = PyModule_Create(&MODULE);
    if (module && PyModule_AddStringConstant(module, "LAYOUT", LAYOUT) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
