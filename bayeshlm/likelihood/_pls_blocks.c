/* The per-group block operations of bayeshlm/likelihood/nested.py compiled (issue 27, "Small models"): one REML /
 * ML evaluation of a nested chain is a few small dense operations per group, which NumPy runs as ~40 batched
 * calls whose per-call overhead dominates on small designs. The same formulas as nested.py, group by group:
 *
 * nested_factorize  (NestedSolver.factorize): per level l from the innermost, per group g,
 *     M_g = Lambda_l' S_g blockdiag(Lambda_l, ..., Lambda_top, I) + [I 0] - U_g,   L_g L_g' = M_g[:, :q],
 *     R_g = L_g^{-1} M_g[:, q:],   log|L_theta|^2 += 2 sum log diag L_g,
 *     U_parent(g) += R_g'R_g + U_g[q:, q:]   (the top level's sum is taken off [X y]'W[X y]).
 * nested_gradient  (NestedFactorization.gradient_parts): the conditional modes by back-substitution from the
 *     top down, Takahashi's selected inversion Sigma_ga = -L_g'^{-1} R_g Sigma_a,
 *     Sigma_gg = (L_g'^{-1} - Sigma_ga R_a') L_g^{-1}, and the sums Q_l, G_l (formulas in nested.py).
 *
 *
 * Arrays are C-ordered float64 (int64 for dims and parents) passed by the buffer protocol; dims =
 * [levels, p, q_0 .. q_{n-1}, J_0 .. J_{n-1}], parents = the parent maps of levels 0 .. n-2 concatenated, stats
 * = each level's (J, q, width) statistics concatenated, lam = each level's q x q Lambda concatenated. The
 * floating-point operations are those of nested.py in another order (equal to rounding).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS 16

typedef struct {
    int n, p, Qtot;
    int q[MAX_LEVELS];
    Py_ssize_t J[MAX_LEVELS];
    int off[MAX_LEVELS + 1];  /* column of each level's block in the Z ordering */
    int width[MAX_LEVELS];    /* columns of the level's statistics: Z_l .. Z_top, X, y */
    Py_ssize_t stats_at[MAX_LEVELS], lam_at[MAX_LEVELS], L_at[MAX_LEVELS], R_at[MAX_LEVELS], parent_at[MAX_LEVELS];
} Layout;

static int read_layout(const int64_t *dims, Py_ssize_t length, Layout *s) {
    if (length < 2) goto bad;
    s->n = (int)dims[0];
    s->p = (int)dims[1];
    if (s->n < 1 || s->n > MAX_LEVELS || length != 2 + 2 * s->n) goto bad;
    s->off[0] = 0;
    for (int l = 0; l < s->n; l++) {
        s->q[l] = (int)dims[2 + l];
        s->J[l] = (Py_ssize_t)dims[2 + s->n + l];
        s->off[l + 1] = s->off[l] + s->q[l];
    }
    s->Qtot = s->off[s->n];
    Py_ssize_t stats = 0, lam = 0, L = 0, R = 0, parent = 0;
    for (int l = 0; l < s->n; l++) {
        s->width[l] = s->Qtot - s->off[l] + s->p + 1;
        s->stats_at[l] = stats; s->lam_at[l] = lam; s->L_at[l] = L; s->R_at[l] = R; s->parent_at[l] = parent;
        stats += s->J[l] * s->q[l] * s->width[l];
        lam += s->q[l] * s->q[l];
        L += s->J[l] * s->q[l] * s->q[l];
        R += s->J[l] * s->q[l] * (s->width[l] - s->q[l]);
        if (l + 1 < s->n) parent += s->J[l];
    }
    s->stats_at[s->n] = stats; s->lam_at[s->n] = lam; s->L_at[s->n] = L; s->R_at[s->n] = R;
    s->parent_at[s->n] = parent;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "pls blocks: bad dims");
    return -1;
}

/* A = S_g blockdiag(Lambda_l, ..., Lambda_top, I) over the first ``cols`` columns (q x cols, row stride cols). */
static void right_product(const Layout *s, int l, const double *S, const double *lam, int cols, double *A) {
    int q = s->q[l], w = s->width[l];
    for (int a = 0; a < q; a++) {
        const double *row = S + a * w;
        double *out = A + a * cols;
        int c = 0;
        for (int k = l; k < s->n && c < cols; k++) {
            const double *lk = lam + s->lam_at[k];
            int qk = s->q[k];
            for (int j = 0; j < qk; j++) {
                double sum = 0.0;
                for (int d = 0; d < qk; d++) sum += row[c + d] * lk[d * qk + j];
                out[c + j] = sum;
            }
            c += qk;
        }
        for (; c < cols; c++) out[c] = row[c];
    }
}

/* Neumaier's compensated sum: adds x to *sum, carrying the rounding error in *carry (the log-determinant sums
 * thousands of terms; NumPy's pairwise sum is as accurate, a plain running sum is not). */
static void add_compensated(double *sum, double *carry, double x) {
    double t = *sum + x;
    *carry += fabs(*sum) >= fabs(x) ? (*sum - t) + x : (x - t) + *sum;
    *sum = t;
}

/* The group of level ``to`` that holds group g of level ``from`` (from <= to). */
static Py_ssize_t ancestor(const Layout *s, const int64_t *parents, int from, int to, Py_ssize_t g) {
    for (int k = from; k < to; k++) g = (Py_ssize_t)parents[s->parent_at[k] + g];
    return g;
}

static int get_buffers(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++) {
        if (!PyBuffer_IsContiguous(&views[i], 'C')) {
            PyErr_SetString(PyExc_ValueError, "pls blocks: arrays must be C-contiguous");
            return -1;
        }
    }
    return 0;
}

static void release(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++) PyBuffer_Release(&views[i]);
}

static int check_sizes(Py_buffer *views, const Py_ssize_t *doubles, int count) {
    for (int i = 0; i < count; i++) {
        if (doubles[i] >= 0 && views[i].len != doubles[i] * (Py_ssize_t)sizeof(double)) {
            PyErr_Format(PyExc_ValueError, "pls blocks: array %d has %zd bytes, expected %zd", i, views[i].len,
                         doubles[i] * (Py_ssize_t)sizeof(double));
            return -1;
        }
    }
    return 0;
}

/* nested_factorize(dims, stats, parents, top, lam, L_out, R_out, top_out) -> log|L_theta|^2 */
static PyObject *nested_factorize(PyObject *self, PyObject *args) {
    Py_buffer v[8];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]))
        return NULL;
    Layout s;
    double *work = NULL;
    PyObject *result = NULL;
    if (get_buffers(v, 8) || read_layout((const int64_t *)v[0].buf, v[0].len / 8, &s)) goto done;
    int P1 = s.p + 1;
    Py_ssize_t sizes[8] = {-1, s.stats_at[s.n], -1, P1 * P1, s.lam_at[s.n], s.L_at[s.n], s.R_at[s.n], P1 * P1};
    if (check_sizes(v, sizes, 8)) goto done;
    if (v[2].len != s.parent_at[s.n] * 8) { PyErr_SetString(PyExc_ValueError, "pls blocks: parents"); goto done; }
    const double *stats = v[1].buf, *top = v[3].buf, *lam = v[4].buf;
    const int64_t *parents = v[2].buf;
    double *Lout = v[5].buf, *Rout = v[6].buf, *top_out = v[7].buf;
    /* update buffers of two consecutive levels ((J_l, width_l, width_l) each), one group's q x width products
     * S_g blockdiag(Lambda, ..., I) and M_g, and the top level's (p+1)^2 sum */
    Py_ssize_t most = 0;
    int qmax = 0, wmax = s.width[0];
    for (int l = 0; l < s.n; l++) {
        Py_ssize_t size = l > 0 ? s.J[l] * s.width[l] * s.width[l] : 0;  /* the innermost level has no update */
        if (size > most) most = size;
        if (s.q[l] > qmax) qmax = s.q[l];
    }
    work = calloc((size_t)(2 * most + 2 * qmax * wmax + P1 * P1), sizeof(double));
    if (!work) { PyErr_NoMemory(); goto done; }
    double *U = work, *Unext = work + most, *A = work + 2 * most, *M = A + qmax * wmax, *topsum = M + qmax * wmax;
    double logdet = 0.0, carry = 0.0;
    for (int l = 0; l < s.n; l++) {
        int q = s.q[l], w = s.width[l], t = w - q;
        const double *lamq = lam + s.lam_at[l];
        int last = l + 1 == s.n;
        if (!last) memset(Unext, 0, sizeof(double) * (size_t)(s.J[l + 1] * t * t));
        for (Py_ssize_t g = 0; g < s.J[l]; g++) {
            const double *S = stats + s.stats_at[l] + g * q * w;
            right_product(&s, l, S, lam, w, A);
            for (int a = 0; a < q; a++)
                for (int c = 0; c < w; c++) {
                    double sum = 0.0;
                    for (int b = 0; b < q; b++) sum += lamq[b * q + a] * A[b * w + c];
                    M[a * w + c] = sum;
                }
            for (int a = 0; a < q; a++) M[a * w + a] += 1.0;
            const double *Ug = U + g * w * w;
            if (l > 0)
                for (int a = 0; a < q; a++)
                    for (int c = 0; c < w; c++) M[a * w + c] -= Ug[a * w + c];
            double *Lg = Lout + s.L_at[l] + g * q * q, *Rg = Rout + s.R_at[l] + g * q * t;
            memset(Lg, 0, sizeof(double) * q * q);
            for (int k = 0; k < q; k++) {
                double d = M[k * w + k];
                for (int m = 0; m < k; m++) d -= Lg[k * q + m] * Lg[k * q + m];
                double lkk = sqrt(d);
                Lg[k * q + k] = lkk;
                for (int i = k + 1; i < q; i++) {
                    double x = M[i * w + k];
                    for (int m = 0; m < k; m++) x -= Lg[i * q + m] * Lg[k * q + m];
                    Lg[i * q + k] = x / lkk;
                }
                for (int c = 0; c < t; c++) {
                    double x = M[k * w + q + c];
                    for (int m = 0; m < k; m++) x -= Lg[k * q + m] * Rg[m * t + c];
                    Rg[k * t + c] = x / lkk;
                }
                add_compensated(&logdet, &carry, 2.0 * log(lkk));
            }
            double *dest = last ? topsum : Unext + ancestor(&s, parents, l, l + 1, g) * t * t;
            for (int i = 0; i < t; i++)
                for (int j = 0; j < t; j++) {
                    double sum = l > 0 ? Ug[(q + i) * w + q + j] : 0.0;
                    for (int a = 0; a < q; a++) sum += Rg[a * t + i] * Rg[a * t + j];
                    dest[i * t + j] += sum;
                }
        }
        double *swap = U; U = Unext; Unext = swap;
    }
    for (int i = 0; i < P1 * P1; i++) top_out[i] = top[i] - topsum[i];
    result = PyFloat_FromDouble(logdet + carry);
done:
    free(work);
    release(v, 8);
    return result;
}

/* Lower-triangular inverse of the q x q factor L (row-major), into Linv. */
static void lower_inverse(const double *L, int q, double *Linv) {
    for (int j = 0; j < q; j++) {
        for (int i = 0; i < q; i++) Linv[i * q + j] = 0.0;
        Linv[j * q + j] = 1.0 / L[j * q + j];
        for (int i = j + 1; i < q; i++) {
            double x = 0.0;
            for (int m = j; m < i; m++) x -= L[i * q + m] * Linv[m * q + j];
            Linv[i * q + j] = x / L[i * q + i];
        }
    }
}

typedef struct {
    const Layout *s;
    const double *stats, *lam, *L, *R, *beta, *fixed_cov;
    const int64_t *parents;
    int reml;
    double **u, **b, **zwe, **joint;
    double *Q, *G;
} Gradient;

/* u_g = L_g'^{-1} (R_g[:, -1] - R_g[:, :-1] [u of the ancestors, beta]) for every level, top level first. */
static void modes(Gradient *gr, double *tail) {
    const Layout *s = gr->s;
    for (int l = s->n - 1; l >= 0; l--) {
        int q = s->q[l], t = s->width[l] - q;
        for (Py_ssize_t g = 0; g < s->J[l]; g++) {
            int c = 0;
            for (int k = l + 1; k < s->n; k++) {
                const double *uk = gr->u[k] + ancestor(s, gr->parents, l, k, g) * s->q[k];
                for (int d = 0; d < s->q[k]; d++) tail[c++] = uk[d];
            }
            for (int d = 0; d < s->p; d++) tail[c++] = gr->beta[d];
            const double *Rg = gr->R + s->R_at[l] + g * q * t, *Lg = gr->L + s->L_at[l] + g * q * q;
            double *ug = gr->u[l] + g * q;
            for (int a = 0; a < q; a++) {
                double x = Rg[a * t + t - 1];
                for (int k = 0; k < t - 1; k++) x -= Rg[a * t + k] * tail[k];
                ug[a] = x;
            }
            for (int a = q - 1; a >= 0; a--) {
                double x = ug[a];
                for (int m = a + 1; m < q; m++) x -= Lg[m * q + a] * ug[m];
                ug[a] = x / Lg[a * q + a];
            }
            const double *lamq = gr->lam + s->lam_at[l];
            double *bg = gr->b[l] + g * q;
            for (int i = 0; i < q; i++) {
                double x = 0.0;
                for (int j = 0; j < q; j++) x += ug[j] * lamq[i * q + j];
                bg[i] = x;
            }
        }
    }
}

/* Group g of level l: its rows (own | cross) of the selected inverse, kept as the joint block of [u_g, its
 * ancestors' effects (, beta)] for the level below, and its terms of Q and of Z'W e. ``work`` holds
 * 3 q^2 + 3 q width doubles. */
static void group_terms(Gradient *gr, int l, Py_ssize_t g, double *work) {
    const Layout *s = gr->s;
    int q = s->q[l], w = s->width[l], t = w - q;
    int ta = s->Qtot - s->off[l + 1] + (gr->reml ? s->p : 0), cols = q + ta;
    const double *Rg = gr->R + s->R_at[l] + g * q * t, *Lg = gr->L + s->L_at[l] + g * q * q;
    const double *S = gr->stats + s->stats_at[l] + g * q * w;
    const double *sigma_a;  /* ta x ta joint covariance of the ancestors' effects (and beta) */
    int last = l + 1 == s->n;
    if (last) sigma_a = gr->fixed_cov;
    else sigma_a = gr->joint[l + 1] + ancestor(s, gr->parents, l, l + 1, g) * ta * ta;
    double *Linv = work, *own = work + q * q, *cross = work + 2 * q * q, *RS = cross + q * cols,
           *V = RS + q * cols;
    lower_inverse(Lg, q, Linv);
    /* RS = R_a Sigma_a, cross = -L'^{-1} RS, own = (L'^{-1} - cross R_a') L^{-1} */
    for (int a = 0; a < q; a++)
        for (int j = 0; j < ta; j++) {
            double x = 0.0;
            for (int k = 0; k < ta; k++) x += Rg[a * t + k] * sigma_a[k * ta + j];
            RS[a * ta + j] = x;
        }
    for (int i = 0; i < q; i++)
        for (int j = 0; j < ta; j++) {
            double x = 0.0;
            for (int a = i; a < q; a++) x -= Linv[a * q + i] * RS[a * ta + j];
            cross[i * ta + j] = x;
        }
    for (int i = 0; i < q; i++)
        for (int j = 0; j < q; j++) {
            double x = 0.0;
            for (int m = 0; m < q; m++) {
                double left = Linv[m * q + i];  /* (L'^{-1})_im */
                for (int k = 0; k < ta; k++) left -= cross[i * ta + k] * Rg[m * t + k];
                x += left * Linv[m * q + j];  /* (L^{-1})_mj */
            }
            own[i * q + j] = x;
        }
    if (l > 0) {  /* the joint block [[own, cross], [cross', Sigma_a]] for the level below */
        double *Jg = gr->joint[l] + g * cols * cols;
        for (int i = 0; i < q; i++) {
            for (int j = 0; j < q; j++) Jg[i * cols + j] = own[i * q + j];
            for (int j = 0; j < ta; j++) Jg[i * cols + q + j] = Jg[(q + j) * cols + i] = cross[i * ta + j];
        }
        for (int i = 0; i < ta; i++)
            for (int j = 0; j < ta; j++) Jg[(q + i) * cols + q + j] = sigma_a[i * ta + j];
    }
    /* Q_l += [own cross] V',  V = S_g blockdiag(Lambda ..., I) over the first q + ta columns */
    right_product(s, l, S, gr->lam, cols, V);
    double *Ql = gr->Q + s->lam_at[l];
    for (int a = 0; a < q; a++)
        for (int c = 0; c < q; c++) {
            double x = 0.0;
            for (int k = 0; k < q; k++) x += own[a * q + k] * V[c * cols + k];
            for (int k = 0; k < ta; k++) x += cross[a * ta + k] * V[c * cols + q + k];
            Ql[a * q + c] += x;
        }
    /* Z_g'W e from the group's own rows: S_g [-b_g, -b_ancestors, -beta, 1] */
    const double *lamq = gr->lam + s->lam_at[l];
    double *z = gr->zwe[l] + g * q;
    const double *bg = gr->b[l] + g * q;
    for (int a = 0; a < q; a++) {
        const double *row = S + a * w;
        double x = row[w - 1];
        for (int k = 0; k < q; k++) x -= row[k] * bg[k];
        int c = q;
        for (int m = l + 1; m < s->n; m++) {
            const double *bm = gr->b[m] + ancestor(s, gr->parents, l, m, g) * s->q[m];
            for (int d = 0; d < s->q[m]; d++) x -= row[c + d] * bm[d];
            c += s->q[m];
        }
        for (int d = 0; d < s->p; d++) x -= row[c + d] * gr->beta[d];
        z[a] += x;
    }
    /* the ancestors' terms: Q_m += (Lambda_l Sigma_ga)' S_ga and Z_a'W e -= (b_g' S_ga)' for each ancestor a */
    int c = q;
    for (int m = l + 1; m < s->n; m++) {
        int qm = s->q[m];
        double *Qm = gr->Q + s->lam_at[m];
        double *za = gr->zwe[m] + ancestor(s, gr->parents, l, m, g) * qm;
        for (int i = 0; i < qm; i++) {
            double contrib = 0.0;
            for (int a = 0; a < q; a++) contrib += bg[a] * S[a * w + c + i];
            za[i] -= contrib;
        }
        for (int i = 0; i < qm; i++) {
            for (int k = 0; k < qm; k++) {
                double x = 0.0;
                for (int a = 0; a < q; a++) {
                    double lc = 0.0;  /* (Lambda_l cross)[a, cols of m] */
                    for (int e = 0; e < q; e++) lc += lamq[a * q + e] * cross[e * ta + c - q + i];
                    x += lc * S[a * w + c + k];
                }
                Qm[i * qm + k] += x;
            }
        }
        c += qm;
    }
}

/* nested_gradient(dims, stats, parents, lam, L, R, beta, fixed_cov, reml, Q_out, G_out) */
static PyObject *nested_gradient(PyObject *self, PyObject *args) {
    Py_buffer v[10];
    int reml;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*pw*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
                          &reml, &v[8], &v[9]))
        return NULL;
    Layout s;
    double *work = NULL;
    PyObject *result = NULL;
    if (get_buffers(v, 10) || read_layout((const int64_t *)v[0].buf, v[0].len / 8, &s)) goto done;
    Py_ssize_t pf = reml ? s.p * s.p : 0;
    Py_ssize_t sizes[10] = {-1, s.stats_at[s.n], -1, s.lam_at[s.n], s.L_at[s.n], s.R_at[s.n], s.p, pf,
                            s.lam_at[s.n], s.lam_at[s.n]};
    if (check_sizes(v, sizes, 10)) goto done;
    if (v[2].len != s.parent_at[s.n] * 8) { PyErr_SetString(PyExc_ValueError, "pls blocks: parents"); goto done; }
    /* workspace: u, b, Z'We per level (J q each), joint blocks per level above the first, one group's scratch */
    Py_ssize_t total = 0;
    for (int l = 0; l < s.n; l++) {
        int cols = s.Qtot - s.off[l] + (reml ? s.p : 0);
        total += 3 * s.J[l] * s.q[l] + (l > 0 ? s.J[l] * cols * cols : 0);
    }
    int qmax = 0;
    for (int l = 0; l < s.n; l++) if (s.q[l] > qmax) qmax = s.q[l];
    Py_ssize_t scratch = 3 * qmax * qmax + 3 * qmax * (s.width[0] + s.p) + s.width[0] + s.p + 8;
    work = calloc((size_t)(total + scratch), sizeof(double));
    if (!work) { PyErr_NoMemory(); goto done; }
    double *u[MAX_LEVELS], *b[MAX_LEVELS], *zwe[MAX_LEVELS], *joint[MAX_LEVELS];
    double *at = work;
    for (int l = 0; l < s.n; l++) {
        int cols = s.Qtot - s.off[l] + (reml ? s.p : 0);
        u[l] = at; at += s.J[l] * s.q[l];
        b[l] = at; at += s.J[l] * s.q[l];
        zwe[l] = at; at += s.J[l] * s.q[l];
        joint[l] = at; at += l > 0 ? s.J[l] * cols * cols : 0;
    }
    Gradient gr = {&s, v[1].buf, v[3].buf, v[4].buf, v[5].buf, v[6].buf, v[7].buf, v[2].buf, reml,
                   u, b, zwe, joint, v[8].buf, v[9].buf};
    memset(gr.Q, 0, sizeof(double) * s.lam_at[s.n]);
    memset(gr.G, 0, sizeof(double) * s.lam_at[s.n]);
    modes(&gr, at);
    for (int l = s.n - 1; l >= 0; l--)
        for (Py_ssize_t g = 0; g < s.J[l]; g++) group_terms(&gr, l, g, at);
    for (int l = 0; l < s.n; l++) {  /* G_l = sum_g (Z_g'W e) u_g' */
        int q = s.q[l];
        double *Gl = gr.G + s.lam_at[l];
        for (Py_ssize_t g = 0; g < s.J[l]; g++)
            for (int i = 0; i < q; i++)
                for (int j = 0; j < q; j++) Gl[i * q + j] += zwe[l][g * q + i] * u[l][g * q + j];
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    free(work);
    release(v, 10);
    return result;
}

static PyMethodDef METHODS[] = {
    {"nested_factorize", nested_factorize, METH_VARARGS,
     "nested_factorize(dims, stats, parents, top, lam, L_out, R_out, top_out) -> log|L_theta|^2"},
    {"nested_gradient", nested_gradient, METH_VARARGS,
     "nested_gradient(dims, stats, parents, lam, L, R, beta, fixed_cov, reml, Q_out, G_out)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_pls_blocks",
                                    "Per-group block operations of the nested REML / ML solver (nested.py).", -1,
                                    METHODS};

PyMODINIT_FUNC PyInit__pls_blocks(void) { return PyModule_Create(&MODULE); }
