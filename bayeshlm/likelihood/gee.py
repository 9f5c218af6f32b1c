"""Population-average (marginal) coefficients of a hierarchical GLM (R&B 2002, section 10.4, eqs. 10.14-10.19).

The unit-specific coefficients gamma of an HGLM describe a group with given random effects; the
population-average coefficients gamma* describe the mean over all groups, g(E[y | x]) = x' gamma*. With a
non-linear link the two differ (gamma* is attenuated toward 0). Two estimators are provided beside the ML fit:

``integrated_coefficients`` -- what the fitted HGLM implies. Each row's marginal mean averages the inverse link
over the random effects, mu*_i = E_u[g^-1(eta_i + z_i'u)] = int g^-1(eta_i + s_i t) phi(t) dt with
s_i^2 = sum_f z_fi' T_f z_fi (z'u is normal, however many random coefficients), by Gauss-Hermite quadrature;
gamma* is then the GLM fitted to these means (IRLS with the outcome n mu*): the coefficients a marginal
analysis of data drawn from the fitted model at these covariates would estimate. With random intercepts only
this is exactly b / sqrt(1 + tau) for the probit link and intercept + tau / 2 for the log link; random
slopes are allowed.

``gee_coefficients`` -- HLM's population-average estimator (Zeger, Liang & Albert 1988; R&B eqs. 10.17-10.19):
the generalised estimating equations sum_j D_j' V_j^-1 (y_j - n mu*_j) = 0 of the marginal model, with the
working covariance taken from the fitted random effects. On the linearised scale
z = eta* - offset + (y - n mu*) / (n dmu/deta) at eta* = X gamma* + offset, Var(z_j) is taken as
Sigma_j = W_j^-1 + Z_j T Z_j' (W = n (dmu/deta)^2 / V(mu); T the ML estimate, held fixed), and
gamma* <- (sum_j X_j' Sigma_j^-1 X_j)^-1 sum_j X_j' Sigma_j^-1 z_j is iterated until gamma* settles. Standard
errors: model-based A^-1 with A = sum_j X_j' Sigma_j^-1 X_j, and robust (sandwich, R&B eq. 9.24)
A^-1 [sum_j X_j' Sigma_j^-1 e_j e_j' Sigma_j^-1 X_j] A^-1 with e_j = z_j - X_j gamma*, which stays consistent
as the number of groups grows even when Sigma_j is not the true covariance. Sigma_j^-1 is applied by the
Woodbury identity with Lambda (T = Lambda Lambda'): Sigma^-1 = W - W U H^-1 U' W, U = Z Lambda,
H = I + U' W U (the Laplace engine's matrix), so no T^-1 is needed (a variance at 0 is fine).
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError

QUADRATURE_NODES = 40
TOLERANCE = 1e-10


def marginal_means(family, eta: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """E[g^-1(eta + s t)], t ~ N(0, 1), per row (Gauss-Hermite with QUADRATURE_NODES nodes)."""
    nodes, weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    values = family.mean(eta[:, None] + np.sqrt(2.0) * spread[:, None] * nodes[None, :])
    return values @ weights / np.sqrt(np.pi)


def random_spread(design, taus: dict[str, np.ndarray]) -> np.ndarray:
    """s_i = sqrt(sum_f z_fi' T_f z_fi): the SD of row i's random part z_i'u."""
    variance = np.zeros(design.n_obs)
    for f in design.factors:
        variance += np.einsum("ia,ab,ib->i", f.Z, taus[f.name], f.Z)
    return np.sqrt(variance)


def glm_fit(family, X: np.ndarray, y: np.ndarray, size: np.ndarray, offset: np.ndarray,
            start: np.ndarray) -> np.ndarray:
    """GLM coefficients by IRLS (Fisher scoring) from ``start``; y may be any mean-scale value in range."""
    beta = start.astype(float).copy()
    for _ in range(100):
        w, s = family.working(y, X @ beta + offset, size)
        step = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ s)
        beta += step
        if np.max(np.abs(step)) < TOLERANCE * (1.0 + np.max(np.abs(beta))):
            return beta
    raise OptionError("The population-average GLM did not settle in 100 scoring steps; the marginal means are too "
                      "close to 0 or 1 for the link. Report the unit-specific coefficients instead.")


def integrated_coefficients(design, outcome, family, gamma: np.ndarray, taus: dict[str, np.ndarray]) -> np.ndarray:
    """gamma* of the GLM fitted to the marginal means the HGLM implies (see the module docstring)."""
    eta = design.X @ gamma + outcome.offset
    means = marginal_means(family, eta, random_spread(design, taus))
    return glm_fit(family, design.X, outcome.size * means, outcome.size, outcome.offset, gamma)


class GEEResult:
    """gamma*, its model-based and robust covariances and the iterations of :func:`gee_coefficients`."""

    def __init__(self, estimate, model_cov, robust_cov, iterations, converged):
        self.estimate, self.model_cov, self.robust_cov = estimate, model_cov, robust_cov
        self.iterations, self.converged = iterations, converged


def cluster_factor(design):
    """The factor whose groups are the independent clusters: the only one, or the top of a nested chain."""
    if len(design.factors) == 1:
        return design.factors[0]
    if design.chain:
        return design.chain[-1]
    names = ", ".join(f.name for f in design.factors)
    raise OptionError(f"The population-average GEE needs independent clusters: one grouping factor, or factors "
                      f"nested in one top factor; this model's factors ({names}) are crossed. Use "
                      "population_average(method='integrate'), which takes any grouping structure.")


def gee_coefficients(objective, theta: np.ndarray, start: np.ndarray, maxiter: int = 100) -> GEEResult:
    """HLM's population-average GEE with working covariance W^-1 + U U', U = Z Lambda (module docstring), for
    the model of ``objective`` (a :class:`~bayeshlm.likelihood.glmm.GLMMObjective`) at its ``theta``, from the
    first gamma* ``start``. The clusters of the sandwich are the groups of :func:`cluster_factor`.

    Sigma^-1 = W - W U H^-1 U' W with H = U' W U + I (the Laplace engine's matrix and factorisation, for any
    nesting); within a nested chain H is block-diagonal over the clusters, so cluster c's score is
    sum_{i in c} x_i W_i (e_i - (U H^-1 U' W e)_i)."""
    design, outcome, family = objective.design, objective.outcome, objective.family
    clusters = cluster_factor(design)
    X, y, size, offset = design.X, outcome.y, outcome.size, outcome.offset
    ZL = objective._ZL(theta)

    def smoothed(fac, w, v):  # U H^-1 U' W v for each column of v
        return np.column_stack([objective._times_u(ZL, objective._solve(fac, objective._transpose_times(ZL, w * c)))
                                for c in v.T])

    gamma, converged, iterations = np.asarray(start, float).copy(), False, 0
    while iterations < maxiter:
        iterations += 1
        eta = X @ gamma + offset
        mu, dmu = family.link.inverse_and_derivative(eta)
        w = size * dmu ** 2 / np.maximum(family.variance(mu), np.finfo(float).tiny)
        z = eta - offset + (y - size * mu) / (size * dmu)
        fac = objective._factorize(ZL, w)
        both = np.column_stack([X, z])
        residual = both - smoothed(fac, w, both)  # Sigma^-1 [X z] = W (I - U H^-1 U' W) [X z]
        A = X.T @ (w[:, None] * residual[:, :-1])
        new_gamma = np.linalg.solve(0.5 * (A + A.T), X.T @ (w * residual[:, -1]))
        step = np.max(np.abs(new_gamma - gamma))
        gamma = new_gamma
        if step < TOLERANCE * (1.0 + np.max(np.abs(gamma))):
            converged = True
            break
    e = z - X @ gamma
    weighted = (w * (e - smoothed(fac, w, e[:, None])[:, 0]))[:, None] * X
    scores = np.column_stack([np.bincount(clusters.codes, weighted[:, c], minlength=clusters.n_groups)
                              for c in range(X.shape[1])])
    bread = np.linalg.inv(0.5 * (A + A.T))
    return GEEResult(gamma, bread, bread @ (scores.T @ scores) @ bread, iterations, converged)
