"""Compiled conditional modes for one grouping factor with one random effect (the large two-level case).

With a single scalar random effect per group the penalised log-likelihood separates by group,
l_j(u_j) = sum_{i in j} log p(y_i | eta0_i + zl_i u_j) - u_j^2 / 2, so PIRLS is a Newton iteration per group:
u_j <- u_j + g_j / h_j with g_j = sum_i zl_i s_i - u_j and h_j = 1 + sum_i w_i zl_i^2 (for the canonical links
below the Fisher and observed weights coincide), a group's step halved while its l_j would fall. One compiled
pass over the rows gives every group's l_j, g_j and h_j at once (numpy needs a dozen passes), which is what a
1e6-row fit spends its time on. Row log-likelihoods here omit the constants (log-choose, log y!), which do
not move the mode; the engine adds them back when it evaluates the likelihood.

:func:`scalar_modes` runs ``_glmm_newton.c``, the same iteration with the same floating-point operations in the
same order compiled ahead of time by ``pip install`` (:func:`extension_modes`), so a first large fit compiles
nothing (the Numba version costs 4.4 CPU s to compile with an empty cache, benchmarks/results/bayes_glmm_aot.md);
without a C compiler at install, or when the extension's LAYOUT differs, the Numba version
(:func:`numba_scalar_modes`).

Imported only for large designs: numba is not loaded by ``import bayeshlm``.
"""

from __future__ import annotations

import ctypes
import functools
import math

import numba
import numpy as np

LOGIT_BINOMIAL, LOG_POISSON = 0, 1
# what the compiled extension must read: the family codes and scalar_modes's arguments, in order
LAYOUT = (("LOGIT_BINOMIAL", LOGIT_BINOMIAL), ("LOG_POISSON", LOG_POISSON),
          ("code", "n", "J", "y", "size", "eta0", "zl", "codes", "u", "tolerance", "max_iterations"))
_DOUBLE_PTR = ctypes.POINTER(ctypes.c_double)


def family_code(family) -> int | None:
    """The kernel's code of a family and link, or None when it has none (the numpy path is used)."""
    if family.name in ("binomial", "bernoulli") and family.link.name == "logit":
        return LOGIT_BINOMIAL
    if family.name == "poisson" and family.link.name == "log":
        return LOG_POISSON
    return None


@numba.njit(cache=True)
def _row(code, y, size, eta):
    """(log p without constants, score s = dlog p / deta, weight w = -ds/deta) of one row."""
    if code == LOGIT_BINOMIAL:
        e = math.exp(-abs(eta))  # one exponential for both log(1 + e^eta) and mu
        softplus = max(eta, 0.0) + math.log1p(e)
        mu = 1.0 / (1.0 + e) if eta >= 0 else e / (1.0 + e)
        return y * eta - size * softplus, y - size * mu, size * mu * (1.0 - mu)
    mu = math.exp(eta)
    return y * eta - mu, y - mu, mu


@numba.njit(cache=True)
def _group_pass(code, y, size, eta0, zl, codes, u):
    """Every group's penalised log-likelihood l_j, gradient g_j and curvature h_j at u."""
    objective = -0.5 * u * u
    gradient = -u.copy()
    curvature = np.ones(len(u))
    for i in range(len(y)):
        j = codes[i]
        value, score, weight = _row(code, y[i], size[i], eta0[i] + zl[i] * u[j])
        objective[j] += value
        gradient[j] += zl[i] * score
        curvature[j] += weight * zl[i] * zl[i]
    return objective, gradient, curvature


def scalar_modes(code: int, y, size, eta0, zl, codes, u, tolerance: float, max_iterations: int) -> np.ndarray:
    """The conditional modes u_j by Newton steps per group (see the module docstring), from the start ``u``
    (``codes``: each row's group, 0 <= codes < len(u)): by the compiled extension when it is installed, else
    by Numba; the same numbers either way."""
    compiled = extension_modes()
    if compiled is None:
        return numba_scalar_modes(code, y, size, eta0, zl, codes, u, tolerance, max_iterations)
    y, size, eta0, zl = (np.ascontiguousarray(a, dtype=np.float64) for a in (y, size, eta0, zl))
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    out = np.array(u, dtype=np.float64)
    n, J = len(y), len(out)
    if not len(size) == len(eta0) == len(zl) == len(codes) == n:
        raise ValueError("y, size, eta0, zl and codes must have one entry per row.")
    if n and (codes.min() < 0 or codes.max() >= J):
        raise ValueError(f"codes must lie in [0, {J}) (one start value per group).")
    pointers = [a.ctypes.data_as(_DOUBLE_PTR) for a in (y, size, eta0, zl)]
    status = compiled(int(code), n, J, *pointers, codes.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                      out.ctypes.data_as(_DOUBLE_PTR), float(tolerance), int(max_iterations))
    if status != 0:
        raise MemoryError("Out of memory in the compiled conditional modes.")
    return out


@functools.cache
def extension_modes():
    """``_glmm_newton.c``'s scalar_modes as a ctypes function (built by ``pip install``), or None when the
    extension is not installed or its LAYOUT is not this module's."""
    try:
        from . import _glmm_newton
    except ImportError:
        return None
    if _glmm_newton.LAYOUT != LAYOUT:
        return None
    signature = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, *[_DOUBLE_PTR] * 4,
                                 ctypes.POINTER(ctypes.c_int64), _DOUBLE_PTR, ctypes.c_double, ctypes.c_int64)
    return signature(_glmm_newton.newton_modes())


@numba.njit(cache=True)
def numba_scalar_modes(code, y, size, eta0, zl, codes, u, tolerance, max_iterations):
    """:func:`scalar_modes` compiled by Numba (on first use; then loaded from its on-disk cache)."""
    u = u.copy()
    objective, gradient, curvature = _group_pass(code, y, size, eta0, zl, codes, u)
    for _ in range(max_iterations):
        step = gradient / curvature
        new_u = u + step
        for _ in range(30):
            new_objective, new_gradient, new_curvature = _group_pass(code, y, size, eta0, zl, codes, new_u)
            worse = new_objective < objective - 1e-12 * np.abs(objective)
            if not worse.any():
                break
            step[worse] *= 0.5
            new_u = u + step
        done = np.max(np.abs(step)) < tolerance * (1.0 + np.max(np.abs(u)))
        u, objective, gradient, curvature = new_u, new_objective, new_gradient, new_curvature
        if done:
            break
    return u
