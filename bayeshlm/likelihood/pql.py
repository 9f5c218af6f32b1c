"""Penalised quasi-likelihood (PQL; Breslow & Clayton 1993), HLM's historical estimator for HGLMs.

Each iteration linearises the model at the current eta = X beta + Z b + offset: the working outcome
z = eta - offset + (y - n mu) / (n dmu/deta) has known sampling variances 1 / w, w = n (dmu/deta)^2 / V(mu)
(R&B 2002, eqs. 10.27-10.30), and the Gaussian engine fits the linear mixed model to z with these variances
known (sigma^2 = 1, the V-known model of R&B ch. 7) by REML. The fixed effects, variance components and
conditional modes of that fit give the next eta; the loop stops when eta changes by less than 1e-10.

PQL is an approximation without a likelihood: no log-likelihood, deviance or information criteria are
reported. For binary outcomes with few rows per group its variance components and, less so, its fixed
effects are biased toward 0 (Breslow & Lin 1995; R&B 2002, section 10.7): it is provided so that the book's
and HLM's numbers can be set beside the Laplace and quadrature fits.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from ..design import Design
from ..errors import OptionError
from ..families.outcome import GLMOutcome
from .fit import optimise_likelihood
from .optimum import LikelihoodOptimum

TOLERANCE = 1e-10


@dataclass(frozen=True)
class PQLOptimum:
    """Where PQL stopped: the optimum of the last working linear model (REML, level-1 variances known) and the
    iteration record; :class:`bayeshlm.results.PQLFit` reads the tables from it."""

    linear: LikelihoodOptimum
    family: object
    iterations: int
    converged: bool


def fit_pql(design: Design, outcome: GLMOutcome, maxiter: int = 100) -> PQLOptimum:
    """Fit by PQL; see the module docstring."""
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise OptionError(f"maxiter={maxiter!r}: give a positive whole number of PQL iterations (default 100).")
    family, y, size, offset = outcome.family, outcome.y, outcome.size, outcome.offset
    eta = _glm_eta(design, outcome)
    optimum, converged, iterations = None, False, 0
    while not converged and iterations < maxiter:
        iterations += 1
        mu, dmu = family.link.inverse_and_derivative(eta)
        w = size * dmu ** 2 / np.maximum(family.variance(mu), np.finfo(float).tiny)
        working = eta - offset + (y - size * mu) / (size * dmu)
        linear = dataclasses.replace(design, y=working, known_variance=1.0 / w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the final fit's messages are reported by PQLFit
            optimum = optimise_likelihood(linear, method="reml")
        new_eta = offset + linear.X @ optimum.gamma + _random_part(optimum, linear)
        converged = np.max(np.abs(new_eta - eta)) < TOLERANCE * (1.0 + np.max(np.abs(new_eta)))
        eta = new_eta
    return PQLOptimum(optimum, family, iterations, converged)


def _glm_eta(design: Design, outcome: GLMOutcome) -> np.ndarray:
    """eta of the GLM without random effects (IRLS), where PQL starts."""
    family, X = outcome.family, design.X
    beta = np.zeros(X.shape[1])
    for _ in range(50):
        eta = X @ beta + outcome.offset
        w, s = family.working(outcome.y, eta, outcome.size)
        step = np.linalg.lstsq(X.T @ (w[:, None] * X), X.T @ s, rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return X @ beta + outcome.offset


def _random_part(optimum: LikelihoodOptimum, design: Design) -> np.ndarray:
    """Z b at the conditional modes b of every factor, in the working model's units."""
    modes = optimum.conditional_modes()
    out = np.zeros(design.n_obs)
    for f in design.factors:
        out += np.einsum("ij,ij->i", f.Z, optimum.scaling.effects(f.name, modes[f.name])[f.codes])
    return out
