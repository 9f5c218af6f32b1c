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

import numpy as np
import pandas as pd
from scipy import stats

from ..design import Design
from ..errors import OptionError
from ..families.outcome import GLMOutcome
from ..results.contract import RESIDUAL_FACTOR
from ..results.hlm_statistics import fixed_part
from .glmm_fit import _quantile, group_table

TOLERANCE = 1e-10


def fit_pql(design: Design, outcome: GLMOutcome, maxiter: int = 100) -> PQLFit:
    """Fit by PQL; see the module docstring."""
    from .fit import fit_likelihood

    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise OptionError(f"maxiter={maxiter!r}: give a positive whole number of PQL iterations (default 100).")
    family, y, size, offset = outcome.family, outcome.y, outcome.size, outcome.offset
    eta = _glm_eta(design, outcome)
    fit, converged, iterations = None, False, 0
    while not converged and iterations < maxiter:
        iterations += 1
        mu, dmu = family.link.inverse_and_derivative(eta)
        w = size * dmu ** 2 / np.maximum(family.variance(mu), np.finfo(float).tiny)
        working = eta - offset + (y - size * mu) / (size * dmu)
        linear = dataclasses.replace(design, y=working, known_variance=1.0 / w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the final fit's messages are reported by PQLFit
            fit = fit_likelihood(linear, method="reml")
        new_eta = offset + linear.X @ fit.fixed_effects["estimate"].to_numpy() + _random_part(fit, linear)
        converged = np.max(np.abs(new_eta - eta)) < TOLERANCE * (1.0 + np.max(np.abs(new_eta)))
        eta = new_eta
    return PQLFit(fit, family, iterations, converged)


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


def _random_part(fit, design: Design) -> np.ndarray:
    out = np.zeros(design.n_obs)
    for f in design.factors:
        modes = fit.conditional_modes(f.name).modes.to_numpy()
        out += np.einsum("ij,ij->i", f.Z, modes[f.codes])
    return out


class PQLFit:
    """A PQL fit: the last linear mixed model's estimates, read on the link scale (no likelihood)."""

    method = "pql"
    loglik = deviance = aic = bic = None  # PQL maximises no likelihood

    def __init__(self, linear_fit, family, iterations: int, converged: bool):
        self._fit = linear_fit
        self.design = linear_fit.design
        self.family = family
        self.iterations = iterations
        self.converged = converged

    @property
    def fixed_effects(self) -> pd.DataFrame:
        """estimate, se, 95% Wald interval, z, p (from the final working model; sigma^2 = 1)."""
        return self.fixed_effects_at(0.95)

    def fixed_effects_at(self, level: float = 0.95) -> pd.DataFrame:
        """``fixed_effects`` with ``level`` Wald intervals."""
        est = self._fit.fixed_effects["estimate"].to_numpy()
        se = np.sqrt(np.diag(self._fit.vcov.to_numpy()))
        z = est / se
        half = _quantile(level) * se
        return pd.DataFrame({"estimate": est, "se": se, "lower": est - half, "upper": est + half,
                             "z": z, "p": 2 * stats.norm.sf(np.abs(z))},
                            index=pd.Index(self.design.fixed_names, name="term"))

    @property
    def variance_components(self) -> pd.DataFrame:
        """The final working model's variances and covariances of the random effects (link scale)."""
        return self.variance_components_at(0.95)

    def variance_components_at(self, level: float = 0.95) -> pd.DataFrame:
        table = self._fit.variance_components_at(level)
        return table[table["factor"] != RESIDUAL_FACTOR].reset_index(drop=True)

    @property
    def tau(self) -> dict[str, pd.DataFrame]:
        return self._fit.tau

    def random_effects(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Conditional modes of the final working model (link scale) and their conditional SDs, as the
        contract's long table (group, term): estimate, se, lower, upper, n."""
        f, modes, sd = self._effects(factor)
        return group_table(f, modes, sd, level)

    def group_effects(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Each group's coefficients: the fixed part (R&B eq. 3.56) plus the conditional mode; se its SD."""
        f, modes, sd = self._effects(factor)
        fixed = fixed_part(self.design, self.fixed_effects["estimate"].to_numpy(), f)
        return group_table(f, fixed + modes, sd, level)

    def _effects(self, factor: str | None):
        f = self.design.factor(factor or self.design.factors[0].name)
        effects = self._fit.conditional_modes(f.name)
        sd = np.sqrt(np.diagonal(effects.condvar, axis1=1, axis2=2))
        return f, effects.modes.to_numpy(), sd

    @property
    def messages(self) -> list[str]:
        out = [] if self.converged else [f"PQL stopped after {self.iterations} iterations without eta settling; "
                                         "the estimates are not reliable (try fit(method='ml'))."]
        return out + [m for m in self._fit.messages if "sigma" not in m]

    def __repr__(self) -> str:
        return f"PQLFit({self.family.name}/{self.family.link.name}; {self.iterations} iterations)"
