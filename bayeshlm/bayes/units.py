"""The Bayesian engine samples on a standardised outcome and reports in the user's units.

``fit_bayes`` samples the posterior of the user's model rewritten for

    y* = (y - c) / s,   V* = V / s^2   (known sampling variances)

with c = mean(y) when X has an intercept column (a column of ones; else c = 0, since no coefficient could
absorb the shift) and s = sd(y). This is the same model in other units, so each draw maps back exactly:

    beta = s beta* + c e_0 (e_0 the intercept)    sigma, tau, u = s (sigma*, tau*, u*)
    sigma^2, tau^2, T = s^2 (...)*                 b_j = s b*_j + c for group coefficients centred on e_0
    alpha_0 = alpha*_0 + log s^2                   phi, correlations, z, nu, w (t effects): unchanged

Why: the marginal route reads sums such as y'y and Z_j'y, which for y + 1e8 hold values near 1e16 whose
differences carry the posterior; in float64 they lost its last digits (the log posterior was off by 100 to
1,000 at y + 1e8, 0.04 to 0.25 at y + 1e6). On y* every sum is of order n.

The predictors are left in their units: rescaling a column only rescales its coefficient (exact already), and
centring the predictors would turn independent priors on the coefficients into correlated ones. A predictor
far from zero relative to its SD still costs digits; :func:`offset_predictor_notes` says so in ``fit.messages``.

Priors are given (and reported, ``fit.priors``) in the user's units, defaults included, and rewritten exactly
for y*: a parameter theta* = (theta - shift) / k (k = s, or s^2 for a prior ``on='variance'``; the shift is c for
the intercept, else 0) has the prior of the same family with location parameters (mu, lower, ...) mapped
the same way, scale parameters divided by k, rate parameters multiplied by k and precisions by k^2
(:data:`PARAMETER_ROLES`). A prior of a family without such a rule (or, on the intercept, of a family that is
not a location family, such as HalfNormal) cannot be rewritten: the fit then keeps that part of the
standardisation off (s = 1, or c = 0 for the intercept alone) and says so in ``fit.messages``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..design import Design
from ..design.scaling import column_scale, intercept_column
from .priors import Prior, PriorSet

# role of each parameter of the families whose rewriting under theta* = (theta - shift) / k is exact
LOCATION, SCALE, RATE, PRECISION, LOG_LOCATION, SHAPE = "location", "scale", "rate", "precision", "log", "shape"
PARAMETER_ROLES: dict[str, dict[str, str]] = {
    # location-scale families (any real shift)
    "Flat": {},
    "Normal": {"mu": LOCATION, "sigma": SCALE, "tau": PRECISION},
    "StudentT": {"nu": SHAPE, "mu": LOCATION, "sigma": SCALE, "lam": PRECISION},
    "Cauchy": {"alpha": LOCATION, "beta": SCALE},
    "Laplace": {"mu": LOCATION, "b": SCALE},
    "Logistic": {"mu": LOCATION, "s": SCALE},
    "Gumbel": {"mu": LOCATION, "beta": SCALE},
    "Moyal": {"mu": LOCATION, "sigma": SCALE},
    "SkewNormal": {"alpha": SHAPE, "mu": LOCATION, "sigma": SCALE, "tau": PRECISION},
    "ExGaussian": {"mu": LOCATION, "sigma": SCALE, "nu": SCALE},
    "Uniform": {"lower": LOCATION, "upper": LOCATION},
    "TruncatedNormal": {"mu": LOCATION, "sigma": SCALE, "tau": PRECISION, "lower": LOCATION, "upper": LOCATION},
    # scale families on (0, inf): rescaled, never shifted
    "HalfFlat": {},
    "HalfNormal": {"sigma": SCALE, "tau": PRECISION},
    "HalfCauchy": {"beta": SCALE},
    "HalfStudentT": {"nu": SHAPE, "sigma": SCALE, "lam": PRECISION},
    "Exponential": {"lam": RATE, "scale": SCALE},
    "Gamma": {"alpha": SHAPE, "beta": RATE, "mu": SCALE, "sigma": SCALE},
    "InverseGamma": {"alpha": SHAPE, "beta": SCALE, "mu": SCALE, "sigma": SCALE},
    "LogNormal": {"mu": LOG_LOCATION, "sigma": SHAPE, "tau": SHAPE},
    "Weibull": {"alpha": SHAPE, "beta": SCALE},
    "Pareto": {"alpha": SHAPE, "m": SCALE},
}
LOCATION_FAMILIES = ("Flat", "Normal", "StudentT", "Cauchy", "Laplace", "Logistic", "Gumbel", "Moyal", "SkewNormal",
                     "ExGaussian", "Uniform", "TruncatedNormal")


def rewritten_prior(prior: Prior, shift: float, k: float) -> Prior:
    """The prior of theta* = (theta - shift) / k when theta ~ ``prior`` (module docstring)."""
    if shift == 0.0 and k == 1.0:
        return prior
    roles = PARAMETER_ROLES[prior.dist]
    params = {}
    for name, value in prior.params.items():
        role = roles[name]
        params[name] = {LOCATION: (value - shift) / k, SCALE: value / k, RATE: value * k,
                        PRECISION: value * k**2, LOG_LOCATION: value - np.log(k), SHAPE: value}[role]
    return Prior(prior.dist, on=prior.on, **params)


def _rewritable(prior: Prior, shifted: bool) -> bool:
    return prior.dist in PARAMETER_ROLES and (not shifted or prior.dist in LOCATION_FAMILIES)


@dataclass(frozen=True)
class OutcomeUnits:
    """y* = (y - centre) / scale; ``intercept`` is the column of X holding the intercept (None: no shift)."""

    centre: float = 0.0
    scale: float = 1.0
    intercept: int | None = None

    @classmethod
    def of(cls, design: Design, priors: PriorSet) -> tuple[OutcomeUnits, list[str]]:
        """The units to sample in, and notes on any part of the standardisation ``priors`` do not allow."""
        summary = design.column_summary()
        intercept = intercept_column(summary.X_ptp, summary.X_first)
        mean, sd = summary.y_mean, summary.y_sd
        scale = column_scale(sd, abs(mean))
        notes = []
        scale_priors = {f"{name} ({p.dist})": p for name, p in priors.fixed.items()}
        if priors.sigma is not None:
            scale_priors[f"sigma ({priors.sigma.dist})"] = priors.sigma
        scale_priors |= {f"tau_{f} ({p.dist})": p for f, p in priors.tau.items()}
        fixed = [k for k, p in scale_priors.items() if not _rewritable(p, False)]
        if fixed and scale != 1.0:
            notes.append(f"The outcome was not rescaled for sampling: no exact rule rewrites the prior(s) "
                         f"{', '.join(fixed)} for y / sd(y). Sums of squares of y lose precision when y is very "
                         f"large or small; use a family of bayeshlm.bayes.units.PARAMETER_ROLES to avoid this.")
            scale = 1.0
        if intercept is not None:
            name = design.fixed_names[intercept]
            prior = priors.fixed[name]
            if not _rewritable(prior, True) and mean != 0:
                notes.append(f"The outcome was not centred for sampling: a {prior.dist} prior on {name!r} is not a "
                             f"location family (e.g. Normal, StudentT, Flat). Sums of squares of y lose precision "
                             f"when mean(y) is far from 0 relative to sd(y).")
                intercept = None
        centre = float(mean) if intercept is not None else 0.0
        return cls(centre, float(scale), intercept), notes

    @property
    def identity(self) -> bool:
        return self.centre == 0.0 and self.scale == 1.0

    # --- into the sampled units ----------------------------------------------------------------------
    def design(self, design: Design) -> Design:
        """``design`` with y* = (y - c) / s and V* = V / s^2 (chain sums Z'y, X'y, y'y likewise for a design
        built from sums, read from its shifted sums when it has them)."""
        if self.identity:
            return design
        c, s = self.centre, self.scale
        if design.rows_available:
            known = None if design.known_variance is None else design.known_variance / s**2
            return dataclasses.replace(design, y=(design.y - c) / s, known_variance=known)
        return self._aggregate(design)

    def _aggregate(self, design: Design) -> Design:
        """Sums of [Z.., X, y*] = sums of [Z.., X, y] B (or of the shifted [Z.., X - x, y - y_0] B)."""
        from ..design.design import ChainCrossproducts

        c, s, p = self.centre, self.scale, design.n_fixed
        chain = [design.factor(name) for name in design.chain_names]
        shifted = getattr(design, "shifted", None)
        B = np.eye(p + 1)
        B[p, p] = 1.0 / s
        if shifted is not None and self.intercept is not None and shifted.intercept == self.intercept:
            sums, start = shifted.stats, float(shifted.y)
            B[self.intercept, :p] += shifted.x  # X = (X - x) + 1 x'
        else:
            sums, start = design.chain_crossproducts(chain), 0.0
        if self.intercept is not None:
            B[self.intercept, p] = -(c - start) / s  # y* = (y - start) / s - (c - start) / s
        stats = [np.concatenate([S[:, :, :S.shape[2] - p - 1], S[:, :, S.shape[2] - p - 1:] @ B], axis=2)
                 for S in sums.stats]
        summary = design.column_summary()
        standard = dataclasses.replace(summary, y_mean=(summary.y_mean - c) / s, y_sd=summary.y_sd / s)
        return design.rescaled(ChainCrossproducts(stats=stats, top=B.T @ sums.top @ B, parents=sums.parents),
                               standard)

    def priors(self, priors: PriorSet, design: Design) -> PriorSet:
        """The priors of the parameters in the sampled units (module docstring)."""
        if self.identity:
            return priors
        s = self.scale
        shift_name = None if self.intercept is None else design.fixed_names[self.intercept]

        def sd_or_variance(prior: Prior) -> Prior:
            return rewritten_prior(prior, 0.0, s**2 if prior.on == "variance" else s)

        fixed = {name: rewritten_prior(p, self.centre if name == shift_name else 0.0, s)
                 for name, p in priors.fixed.items()}
        sigma = None if priors.sigma is None else sd_or_variance(priors.sigma)
        tau = {f: sd_or_variance(p) for f, p in priors.tau.items()}
        return dataclasses.replace(priors, fixed=fixed, sigma=sigma, tau=tau)

    # --- back to the user's units --------------------------------------------------------------------
    def draws(self, post: xr.Dataset, design: Design, centred_on: dict[str, list[int]]) -> xr.Dataset:
        """Draws (of the posterior or the prior) in the user's units. ``centred_on[f]`` gives, per coefficient
        of a centred sampled factor f, the fixed effect its ``coef_f`` draws are centred on (or -1)."""
        if self.identity:
            return post
        c, s = self.centre, self.scale
        out = post.copy()
        for name, values in post.data_vars.items():
            if name == "beta":
                shift = np.zeros(design.n_fixed)
                if self.intercept is not None:
                    shift[self.intercept] = c
                out[name] = s * values + xr.DataArray(shift, dims="fixed")
            elif name.startswith("beta["):
                on_intercept = self.intercept is not None and name == f"beta[{design.fixed_names[self.intercept]}]"
                out[name] = s * values + (c if on_intercept else 0.0)
            elif name in ("sigma", "sigma_strata") or name.startswith(("tau_", "u_")):
                out[name] = s * values
            elif name in ("sigma2", "sigma2_strata") or name.startswith(("tau2_", "T_")):
                out[name] = s**2 * values
            elif name == "alpha":  # log-linear level-1 variance: alpha_0 carries log s^2
                out[name] = values + xr.DataArray(np.eye(values.sizes["variance_term"])[0] * np.log(s**2),
                                                  dims="variance_term")
            elif name.startswith("coef_"):
                on = np.asarray(centred_on[name[5:]])
                shift = np.where(on == self.intercept, c, 0.0) if self.intercept is not None else np.zeros(len(on))
                out[name] = s * values + xr.DataArray(shift, dims=values.dims[-1])
            elif name not in ("phi", "nu") and not name.startswith(("corr_", "z_", "w_")):
                raise NotImplementedError(f"No rule maps the posterior variable {name!r} to the user's units.")
        return out


FAR_FROM_ZERO = 1e5  # |mean| / sd of a predictor beyond which its sums of squares cost the log posterior ~1e-2


def offset_predictor_notes(design: Design) -> list[str]:
    """Notes naming the predictors whose mean lies more than :data:`FAR_FROM_ZERO` SDs from zero.

    Predictors are not centred for sampling: centring x_k moves the intercept to beta_0 + mean(x_k) beta_k,
    and independent priors on beta_0 and beta_k would become a joint prior the compiled kernel does not take.
    Their sums X'X then lose digits to the offset (with a flat prior, the log posterior at x + 1e6 was off by
    0.6, at x + 1e8 by 1,400; rescaling alone is exact)."""
    summary = design.column_summary()
    far = [name for name, mean, sd, ptp in zip(design.fixed_names, summary.X_mean, summary.X_sd, summary.X_ptp)
           if ptp > 0 and abs(mean) > FAR_FROM_ZERO * sd]
    if not far:
        return []
    return [f"The predictor(s) {', '.join(repr(n) for n in far)} have a mean more than {FAR_FROM_ZERO:.0e} SDs from "
            "zero: the Bayesian engine's sums of squares lose digits to that offset, so the posterior is inexact. "
            "Centre them (e.g. center={'<column>': 'grand'}) or subtract a round number before fitting."]


def centred_outcome(design: Design, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y - c, beta - c e_0) with c = mean(y) when X has an intercept column e_0 (else c = 0): the same residuals
    y - X beta, whose sums of squares per group then hold values of size sd(y)^2 instead of mean(y)^2 (for
    likelihoods computed from group sums after the fit; ``beta`` holds draws along its last axis)."""
    X = design.X
    intercept = intercept_column(np.ptp(X, axis=0), X[0])
    if intercept is None:
        return design.y, beta
    c = float(np.mean(design.y))
    beta = beta.copy()
    beta[..., intercept] -= c
    return design.y - c, beta
