"""Internal standardisation of a Design, so the likelihood fit does not depend on the units of the data.

:func:`standardise` rewrites a design as an exact reparameterisation on unit scales,

    y* = (y - m_y) / s_y,   X* = X A,   Z*_f = Z_f / s_f,   C* = (C - c) / s_C,   t* = t / k,

and :class:`Scaling` maps every estimate of the standardised fit back to the user's units:

    beta = s_y A beta* + m_y e_0         cov(beta) = s_y^2 A cov(beta*) A'
    T_f = s_y^2 S_f^-1 T*_f S_f^-1       b_f = s_y S_f^-1 b*_f        sigma^2 = s_y^2 sigma*^2
    alpha_m = alpha*_m / s_Cm            alpha_0 = alpha*_0 + log s_y^2 - sum_m alpha*_m c_m / s_Cm
    phi = phi*^(1/k)

with e_0 the intercept column (A centres and scales every other column of X: x*_c = (x_c - m_c) / s_c).
Centring y and X needs an intercept in X (else only scales change). Random-effect columns are only scaled,
by their root mean square: centring a random slope would change the model (its covariance with the random
intercept). For AR(1)/CAR(1) errors k is the time step (the greatest common divisor of the within-unit lags
for AR(1), their median for CAR(1)), so the correlation parameter is estimated per step and its start is not
the stationary point phi = 0 of phi^|t - t'| at lags above 1. AR(1) with an even step k only sees phi^k >= 0:
it is fitted as CAR(1) on t / k (0 < phi* < 1) and phi = phi*^(1/k) >= 0 is reported (the sign of phi is not
identified by such data).

The log-likelihood changes by the Jacobian of y -> y* (and, for REML, of beta -> beta*):

    ML:   -2 log L(y)   = -2 log L*(y*)   + n log s_y^2
    REML: -2 log L_R(y) = -2 log L_R*(y*) + (n - p) log s_y^2 - 2 log|det A|

since L_R(y) = integral of p(y | beta) d beta, p(y | beta) = p*(y* | beta*) s_y^-n and
d beta = s_y^p |det A| d beta* (lme4's REML criterion, which omits log|X'X|, changes the same way: its
log|R_X|^2 term carries the -2 log|det A| - p log s_y^2 of X'V^-1 X). Known sampling variances are divided by
s_y^2 with y, which leaves the model unchanged and the same Jacobian.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import PrecisionWarning
from .design import ChainCrossproducts, ColumnSummary, Design, ResidualDesign


@dataclass(frozen=True, eq=False)
class Scaling:
    """The map from a standardised design's estimates back to the user's units (see the module docstring)."""

    y_centre: float
    y_scale: float
    intercept: int | None  # column of X holding the intercept (None: y and X not centred)
    fixed_map: np.ndarray  # A (p, p): X* = X A
    z_scale: dict[str, np.ndarray]  # factor -> (q,) column scales s_f
    c_centre: np.ndarray | None = None  # (m,) log-linear variance predictors
    c_scale: np.ndarray | None = None
    time_step: float = 1.0  # k: t* = t / k
    correlation: str | None = None  # the user's 'ar1' / 'car1'

    # --- fixed effects -----------------------------------------------------------------------------
    def fixed(self, beta: np.ndarray) -> np.ndarray:
        out = self.y_scale * (self.fixed_map @ beta)
        if self.intercept is not None:
            out[self.intercept] += self.y_centre
        return out

    def fixed_cov(self, cov: np.ndarray) -> np.ndarray:
        A = self.fixed_map
        return self.y_scale ** 2 * (A @ cov @ A.T)

    # --- random effects ----------------------------------------------------------------------------
    def covariance(self, factor: str, T: np.ndarray) -> np.ndarray:
        """T = s_y^2 S^-1 T* S^-1, for one (q, q) matrix or a stack (J, q, q)."""
        s = self.z_scale[factor]
        return self.y_scale ** 2 * T / (s[:, None] * s[None, :])

    def effects(self, factor: str, b: np.ndarray) -> np.ndarray:
        """b = s_y S^-1 b* for (J, q) conditional modes."""
        return self.y_scale * b / self.z_scale[factor]

    # --- level-1 variance and correlation ---------------------------------------------------------------
    @property
    def variance_factor(self) -> float:
        return self.y_scale ** 2

    def phi(self, phi: float) -> float:
        """phi per unit of the user's time from phi* per step k."""
        if self.time_step == 1.0:
            return float(phi)
        return float(np.sign(phi) * np.abs(phi) ** (1.0 / self.time_step))

    def phi_to_standard(self, phi: float) -> float:
        return float(np.sign(phi) * np.abs(phi) ** self.time_step)

    # --- likelihood ---------------------------------------------------------------------------------
    def deviance(self, value: float, n: int, p: int, reml: bool) -> float:
        """-2 log L on the user's scale from the standardised fit's (module docstring)."""
        if not reml:
            return value + n * np.log(self.y_scale ** 2)
        _, logdet_a = np.linalg.slogdet(self.fixed_map)
        return value + (n - p) * np.log(self.y_scale ** 2) - 2.0 * logdet_a


def column_scale(*candidates: float) -> float:
    """The first finite positive candidate (a spread, else a size), else 1."""
    for s in candidates:
        if np.isfinite(s) and s > 0:
            return float(s)
    return 1.0


def intercept_column(ptp: np.ndarray, first: np.ndarray) -> int | None:
    """The first column of X that is 1 on every row (range ``ptp`` 0, first value 1), or None."""
    ones = np.flatnonzero((ptp == 0) & (first == 1.0))
    return int(ones[0]) if len(ones) else None


def _fixed_map(centre: np.ndarray, scale: np.ndarray, intercept: int | None) -> np.ndarray:
    """A with X* = X A: x*_c = (x_c - centre_c) / scale_c, the intercept column kept."""
    A = np.diag(1.0 / scale)
    if intercept is not None:
        A[intercept] = -centre / scale
        A[intercept, intercept] = 1.0
    return A


def _z_scales(design: Design) -> dict[str, np.ndarray]:
    """Root mean square of each random-effect column, from the rows or from the sums Z'Z of a chain."""
    if design.rows_available:
        rms = {f.name: np.sqrt(np.einsum("nq,nq->q", f.Z, f.Z) / len(f.Z)) for f in design.factors}
    else:
        chain = design.chain
        stats = design.chain_crossproducts(chain).stats
        rms = {f.name: np.sqrt(np.einsum("jkk->k", S[:, :, :f.n_coef]) / design.n_obs) for f, S in zip(chain, stats)}
    return {name: np.array([column_scale(r) for r in values]) for name, values in rms.items()}


def _time_step(residual: ResidualDesign, design: Design) -> float:
    """The step k of the standardised time from the positive within-unit lags (the correlation structure's
    rule: their greatest common divisor for AR(1), their median for CAR(1)); 1 without lags."""
    unit = design.factor(residual.unit)
    order = np.lexsort((residual.time, unit.codes))
    t, codes = residual.time[order], unit.codes[order]
    lags = np.diff(t)[np.diff(codes) == 0]
    lags = lags[lags > 0]
    if not len(lags):
        return 1.0
    return residual.errors.correlation.time_step(lags)


def standardise(design: Design) -> tuple[Design, Scaling]:
    """The design on unit scales and the :class:`Scaling` back to the user's units (module docstring).

    Designs built from per-group sums (Dask input) are centred at the shift their sums were accumulated
    with (``design.shifted``), so no sum of squares of large values is ever differenced.
    """
    p = design.n_fixed
    shifted = getattr(design, "shifted", None)
    if design.rows_available:
        columns, y = np.ascontiguousarray(design.X.T), design.y  # rows of columns: fast reductions
        x_mean, x_sd = columns.mean(axis=1), columns.std(axis=1)
        x_rms = np.sqrt(np.einsum("pn,pn->p", columns, columns) / len(y))
        intercept = intercept_column(np.ptp(columns, axis=1), columns[:, 0])
        y_mean, y_sd = float(np.mean(y)), float(np.std(y))
    else:
        summary = design.column_summary()
        x_mean, x_sd, y_mean, y_sd = summary.X_mean, summary.X_sd, summary.y_mean, summary.y_sd
        x_rms = np.sqrt(x_sd ** 2 + x_mean ** 2)
        intercept = intercept_column(summary.X_ptp, summary.X_first)
        if shifted is not None and shifted.intercept != intercept:
            shifted = None
    if intercept is None:
        x_centre, y_centre = np.zeros(p), 0.0
        x_scale = np.array([column_scale(r) for r in x_rms])
    else:
        x_centre, y_centre = (shifted.x, shifted.y) if shifted is not None else (x_mean, y_mean)
        x_centre = np.where(np.arange(p) == intercept, 0.0, x_centre)
        x_scale = np.array([1.0 if c == intercept else column_scale(s, r)
                            for c, (s, r) in enumerate(zip(x_sd, x_rms))])
    y_scale = column_scale(y_sd, abs(y_mean))
    _warn_where_digits_are_lost(design, [y_mean, *x_mean], [y_sd, *x_sd])
    scaling = Scaling(y_centre=float(y_centre), y_scale=y_scale, intercept=intercept,
                      fixed_map=_fixed_map(x_centre, x_scale, intercept), z_scale=_z_scales(design))
    if not design.rows_available:
        return _standardise_sums(design, scaling, shifted, x_scale), scaling
    residual = design.residual
    if residual is not None:
        residual, scaling = _standardise_residual(design, residual, scaling)
    X = (design.X - x_centre) / x_scale  # = X A, without the cancellation of X A's two terms
    factors = tuple(dataclasses.replace(f, Z=f.Z / scaling.z_scale[f.name]) for f in design.factors)
    known = None if design.known_variance is None else design.known_variance / y_scale ** 2
    out = dataclasses.replace(design, y=(design.y - y_centre) / y_scale, X=X, factors=factors,
                              known_variance=known, residual=residual)
    return out, scaling


# |mean| / SD above which fewer than ~7 of double precision's ~16 significant digits describe the variation
DIGITS_LOST_RATIO = 1e9


def _warn_where_digits_are_lost(design: Design, means, sds) -> None:
    """Centring is exact from here on, but the data arrived with their variation in the last digits only."""
    names = [design.outcome_name, *design.fixed_names]
    for name, mean, sd in zip(names, means, sds):
        if sd > 0 and abs(mean) > DIGITS_LOST_RATIO * sd:
            kept = max(0, int(np.floor(15.9 - np.log10(abs(mean) / sd))))
            warnings.warn(
                f"{name!r} has mean {mean:.6g} but varies only by about {sd:.3g}: double precision keeps about "
                f"{kept} significant digits of that variation, so estimates involving it are precise to about that "
                "many digits. Subtract a constant near its mean from the data column before fitting.",
                PrecisionWarning, stacklevel=4)


def _standardise_residual(design: Design, residual: ResidualDesign, scaling: Scaling):
    """The variance function's own change of scale (log-linear: centred and scaled predictors); time in steps
    of k, with the correlation structure that holds on that scale (module docstring)."""
    errors = residual.errors
    changes, extra = errors.variance.standardised(residual)
    if errors.correlation is not None:
        step = _time_step(residual, design)
        changes["time"] = residual.time / step
        extra |= {"time_step": step, "correlation": errors.correlation.name}
        standard = errors.correlation.standardised(step)
        if standard != errors.correlation.name:
            changes["structure"] = dataclasses.replace(residual.structure, correlation=standard)
    return dataclasses.replace(residual, **changes), dataclasses.replace(scaling, **extra)


def _standardise_sums(design: Design, scaling: Scaling, shifted, x_scale: np.ndarray) -> Design:
    """Transform a chain's sums: Z_l'[Z.., X, y] -> S_l^-1 Z_l'[Z.., X, y] B and [X y]'[X y] -> B'[X y]'[X y] B,
    with [X* y*] = [X y] B (or = [X - shift, y - shift] diag(1 / scale) from the shifted sums)."""
    p = design.n_fixed
    chain = design.chain
    if shifted is not None and scaling.intercept is not None:
        cp = shifted.stats
        B = np.diag(np.concatenate([1.0 / x_scale, [1.0 / scaling.y_scale]]))
    else:
        cp = design.chain_crossproducts(chain)
        B = np.zeros((p + 1, p + 1))
        B[:p, :p] = scaling.fixed_map
        B[p, p] = 1.0 / scaling.y_scale
        if scaling.intercept is not None:
            B[scaling.intercept, p] = -scaling.y_centre / scaling.y_scale
    inverse_z = [1.0 / scaling.z_scale[f.name] for f in chain]
    stats = []
    for level, S in enumerate(cp.stats):
        right = np.concatenate(inverse_z[level:])
        S = S * inverse_z[level][None, :, None]
        z = S[:, :, :len(right)] * right
        stats.append(np.concatenate([z, S[:, :, len(right):] @ B], axis=2))
    sums = ChainCrossproducts(stats=stats, top=B.T @ cp.top @ B, parents=cp.parents)
    summary = design.column_summary()
    A = scaling.fixed_map
    mean_star = summary.X_mean @ A
    if scaling.intercept is not None:
        mean_star[scaling.intercept] = 1.0
    standard = ColumnSummary(
        y_mean=(summary.y_mean - scaling.y_centre) / scaling.y_scale, y_sd=summary.y_sd / scaling.y_scale,
        X_mean=mean_star, X_sd=summary.X_sd * np.abs(np.diag(A)), X_ptp=summary.X_ptp * np.abs(np.diag(A)),
        X_first=summary.X_first @ A,
        Z_sd={k: v / scaling.z_scale[k] for k, v in summary.Z_sd.items()},
        Z_ptp={k: v / scaling.z_scale[k] for k, v in summary.Z_ptp.items()})
    return design.rescaled(chain_stats=sums, summary_stats=standard)
