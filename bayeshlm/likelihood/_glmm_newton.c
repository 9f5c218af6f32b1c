/* The per-group Newton iteration of bayeshlm/likelihood/glmm_kernel.py compiled ahead of time (issue 27: a first
 * fit of a large GLMM, ML or Bayesian, without the Numba compile). For one grouping factor with one scalar random
 * effect the penalised log-likelihood separates by group,
 *
 *   l_j(u_j) = sum_{i in j} log p(y_i | eta0_i + zl_i u_j) - u_j^2 / 2,
 *
 * and the conditional modes are found by Newton steps per group, u_j <- u_j + g_j / h_j with
 * g_j = sum_i zl_i s_i - u_j and h_j = 1 + sum_i w_i zl_i^2, a group's step halved while its l_j would fall
 * (glmm_kernel.py's module docstring). This file does what glmm_kernel.py's Numba ``scalar_modes`` does, with the
 * same floating-point operations in the same order; LAYOUT names the family codes and the arguments, and
 * glmm_kernel.py uses this extension only when they equal its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* No fused multiply-adds: Numba's LLVM does not contract a * b + c either, and the results must be Numba's. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

enum { LOGIT_BINOMIAL = 0, LOG_POISSON = 1 };
static const char *ARGUMENTS[] = {"code", "n", "J", "y", "size", "eta0", "zl", "codes", "u", "tolerance",
                                  "max_iterations"};
#define N_ARGUMENTS 11

/* numba's max(a, b): b if b > a, else a */
static double numba_max(double a, double b) { return b > a ? b : a; }

/* (log p without constants, score s = dlog p / deta, weight w = -ds/deta) of one row (glmm_kernel._row) */
static void row_terms(int64_t code, double y, double size, double eta, double *value, double *score,
                      double *weight) {
    if (code == LOGIT_BINOMIAL) {
        double e = exp(-fabs(eta));  /* one exponential for both log(1 + e^eta) and mu */
        double softplus = numba_max(eta, 0.0) + log1p(e);
        double mu = eta >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        *value = y * eta - size * softplus;
        *score = y - size * mu;
        *weight = size * mu * (1.0 - mu);
        return;
    }
    double mu = exp(eta);
    *value = y * eta - mu;
    *score = y - mu;
    *weight = mu;
}

/* every group's penalised log-likelihood l_j, gradient g_j and curvature h_j at u (glmm_kernel._group_pass) */
static void group_pass(int64_t code, int64_t n, int64_t J, const double *y, const double *size, const double *eta0,
                       const double *zl, const int64_t *codes, const double *u, double *objective,
                       double *gradient, double *curvature) {
    for (int64_t j = 0; j < J; j++) {
        objective[j] = -0.5 * u[j] * u[j];
        gradient[j] = -u[j];
        curvature[j] = 1.0;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t j = codes[i];
        double value, score, weight;
        row_terms(code, y[i], size[i], eta0[i] + zl[i] * u[j], &value, &score, &weight);
        objective[j] += value;
        gradient[j] += zl[i] * score;
        curvature[j] += weight * zl[i] * zl[i];
    }
}

/* max |values| as numpy's: NaN when any value is NaN */
static double largest_magnitude(const double *values, int64_t J) {
    double out = fabs(values[0]);
    for (int64_t j = 1; j < J; j++) {
        if (isnan(values[j]))
            return values[j];
        out = numba_max(out, fabs(values[j]));
    }
    return out;
}

/* The conditional modes by Newton steps per group from the start u, written over u (glmm_kernel.scalar_modes).
 * Returns 0, or -2 when out of memory (u unchanged). */
static int64_t scalar_modes(int64_t code, int64_t n, int64_t J, const double *y, const double *size,
                            const double *eta0, const double *zl, const int64_t *codes, double *u, double tolerance,
                            int64_t max_iterations) {
    if (J < 1)
        return 0;
    double *work = malloc((size_t)(8 * J) * sizeof(double));
    if (work == NULL)
        return -2;
    double *objective = work, *gradient = objective + J, *curvature = gradient + J, *step = curvature + J;
    double *new_u = step + J, *new_objective = new_u + J, *new_gradient = new_objective + J;
    double *new_curvature = new_gradient + J;
    group_pass(code, n, J, y, size, eta0, zl, codes, u, objective, gradient, curvature);
    for (int64_t iteration = 0; iteration < max_iterations; iteration++) {
        for (int64_t j = 0; j < J; j++) {
            step[j] = gradient[j] / curvature[j];
            new_u[j] = u[j] + step[j];
        }
        for (int halving = 0; halving < 30; halving++) {
            group_pass(code, n, J, y, size, eta0, zl, codes, new_u, new_objective, new_gradient, new_curvature);
            int any_worse = 0;
            for (int64_t j = 0; j < J; j++)
                if (new_objective[j] < objective[j] - 1e-12 * fabs(objective[j])) {
                    any_worse = 1;
                    step[j] *= 0.5;
                }
            if (!any_worse)
                break;
            for (int64_t j = 0; j < J; j++)
                new_u[j] = u[j] + step[j];
        }
        int done = largest_magnitude(step, J) < tolerance * (1.0 + largest_magnitude(u, J));
        for (int64_t j = 0; j < J; j++) {
            u[j] = new_u[j];
            objective[j] = new_objective[j];
            gradient[j] = new_gradient[j];
            curvature[j] = new_curvature[j];
        }
        if (done)
            break;
    }
    free(work);
    return 0;
}

static PyObject *newton_modes(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)scalar_modes);
}

static PyMethodDef METHODS[] = {
    {"newton_modes", newton_modes, METH_NOARGS,
     "The address of scalar_modes(code, n, J, y, size, eta0, zl, codes, u, tolerance, max_iterations)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_glmm_newton",
                                    "Per-group Newton conditional modes, compiled ahead of time (see glmm_kernel.py).",
                                    -1, METHODS};

PyMODINIT_FUNC PyInit__glmm_newton(void) {
    PyObject *module = PyModule_Create(&MODULE);
    if (module == NULL)
        return NULL;
    PyObject *arguments = PyTuple_New(N_ARGUMENTS);
    for (Py_ssize_t i = 0; arguments != NULL && i < N_ARGUMENTS; i++) {
        PyObject *name = PyUnicode_FromString(ARGUMENTS[i]);
        if (name == NULL) {
            Py_CLEAR(arguments);
            break;
        }
        PyTuple_SET_ITEM(arguments, i, name);
    }
    PyObject *layout = arguments == NULL ? NULL : Py_BuildValue("((si)(si)N)", "LOGIT_BINOMIAL", LOGIT_BINOMIAL,
                                                                "LOG_POISSON", LOG_POISSON, arguments);
    if (layout == NULL || PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
