/* Per-group sums of products of columns in one pass over the rows (design.group_sums, issue 27).

   group_sums(codes, A, B, out): out[j, a, b] += A[i, a] * B[i, b] for every row i with codes[i] = j, in row order,
   with out (J, a, b) C-contiguous and zero on entry. Row by row in the order of the rows, each cell's sum is the
   same sequence of additions as NumPy's bincount(codes, weights=A[:, a] * B[:, b]) makes, so both give the same
   numbers to the last bit; the product is therefore never fused with the addition (no FMA contraction).
   A and B may have any strides (C- or Fortran-ordered, column slices); codes are 64-bit integers. */

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int is_doubles(const Py_buffer *v, int ndim) {
    return v->ndim == ndim && v->itemsize == 8 && v->format != NULL && strcmp(v->format, "d") == 0;
}

static int is_int64(const Py_buffer *v) {
    return v->ndim == 1 && v->itemsize == 8 && v->format != NULL &&
           (strcmp(v->format, "q") == 0 || strcmp(v->format, "l") == 0);
}

/* The sums themselves, once the buffers are checked; -1 (with the row) when a code is outside 0..J-1. */
static Py_ssize_t accumulate(const Py_buffer *codes, const Py_buffer *A, const Py_buffer *B, double *out,
                             Py_ssize_t n_groups) {
    Py_ssize_t n = codes->shape[0], na = A->shape[1], nb = B->shape[1];
    const char *c = codes->buf, *a_row = A->buf, *b_row = B->buf;
    Py_ssize_t a_col = A->strides[1], b_col = B->strides[1];
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t j = *(const int64_t *)(c + i * codes->strides[0]);
        if (j < 0 || j >= n_groups) return i;
        double *cell = out + j * na * nb;
        const char *ai = a_row + i * A->strides[0], *bi = b_row + i * B->strides[0];
        for (Py_ssize_t a = 0; a < na; a++) {
            double x = *(const double *)(ai + a * a_col);
            for (Py_ssize_t b = 0; b < nb; b++) cell[a * nb + b] += x * *(const double *)(bi + b * b_col);
        }
    }
    return -1;
}

static PyObject *group_sums(PyObject *self, PyObject *args) {
    PyObject *objects[4];
    Py_buffer v[4];
    int got = 0;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "OOOO", &objects[0], &objects[1], &objects[2], &objects[3])) return NULL;
    for (; got < 3; got++)
        if (PyObject_GetBuffer(objects[got], &v[got], PyBUF_RECORDS_RO) < 0) goto done;
    if (PyObject_GetBuffer(objects[3], &v[3], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto done;
    got = 4;
    if (!is_int64(&v[0]) || !is_doubles(&v[1], 2) || !is_doubles(&v[2], 2) || !is_doubles(&v[3], 3)) {
        PyErr_SetString(PyExc_ValueError, "group_sums: codes int64 (n,), A and B float64 (n, a), (n, b), out (J, a, b)");
        goto done;
    }
    Py_ssize_t n = v[0].shape[0];
    if (v[1].shape[0] != n || v[2].shape[0] != n || v[3].shape[1] != v[1].shape[1] ||
        v[3].shape[2] != v[2].shape[1]) {
        PyErr_SetString(PyExc_ValueError, "group_sums: shapes of codes, A, B and out do not match");
        goto done;
    }
    Py_ssize_t bad = accumulate(&v[0], &v[1], &v[2], (double *)v[3].buf, v[3].shape[0]);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "group_sums: code of row %zd is outside 0..%zd", bad, v[3].shape[0] - 1);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
    return result;
}

static PyMethodDef METHODS[] = {
    {"group_sums", group_sums, METH_VARARGS,
     "group_sums(codes, A, B, out): out[j, a, b] += sum over rows i of group j of A[i, a] * B[i, b]"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_group_sums",
                                    "Per-group sums of column products in one pass over the rows (design.py).", -1,
                                    METHODS};

PyMODINIT_FUNC PyInit__group_sums(void) { return PyModule_Create(&MODULE); }
