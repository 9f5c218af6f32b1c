"""Compiled conditional modes for one grouping factor with one random effect (the large two-level case).

With a single scalar random effect per group the penalised log-likelihood separates by group,
l_j(u_j) = sum_{i in j} log p(y_i | eta0_i + zl_i u_j) - u_j^2 / 2, so PIRLS is a Newton iteration per group:
u_j <- u_j + g_j / h_j with g_j = sum_i zl_i s_i - u_j and h_j = 1 + sum_i w_i zl_i^2 (for the canonical links
below the Fisher and observed weights coincide), a group's step halved while its l_j would fall. One compiled
pass over the rows gives every group's l_j, g_j and h_j at once (numpy needs a dozen passes), which is what a
1e6-row fit spends its time on. Row log-likelihoods here omit the constants (log-choose, log y!), which do
not move the mode; the engine adds them back when it evaluates the likelihood.

Imported only for large designs: numba is not loaded by ``import bayeshlm``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

LOGIT_BINOMIAL, LOG_POISSON = 0, 1


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


@numba.njit(cache=True)
def scalar_modes(code, y, size, eta0, zl, codes, u, tolerance, max_iterations):
    """The conditional modes u_j by Newton steps per group (see the module docstring), from the start ``u``."""
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
