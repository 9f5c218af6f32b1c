"""Inference on the variance parameters of a REML / ML fit: Satterthwaite df for fixed-effect contrasts,
asymptotic SEs of the variance components, profile-likelihood intervals (variance components; fixed effects
of ML fits) and the bootstrap's percentile intervals: the pieces :func:`bayeshlm.results.hypotheses.confint`
gathers for every parameter.

Everything works on the fit's standardised design (:mod:`bayeshlm.design.scaling`) and maps back exactly.
The variance parameters are lmerTest's varpar = (theta, sigma) (Kuznetsova, Brockhoff & Christensen 2017,
J. Stat. Softw. 82(13)); the criterion is the unprofiled -2 log-likelihood (restricted for REML)

    d(theta, sigma) = log|L_theta|^2 + r^2(theta) / sigma^2 + n log(2 pi sigma^2)
                      [REML: + log|R_X|^2 - p log(2 pi sigma^2)],

with r^2 the penalised residual sum of squares (Bates et al. 2015, eq. 34 and 41 before profiling sigma).
Its gradient is analytic (d log|Omega| and d r^2 from :meth:`Factorization.gradient_parts`; d/d sigma =
2m / sigma - 2 r^2 / sigma^3, m = n - p or n); the Hessian H is by central differences of the gradient and
A = 2 H^{-1} is the asymptotic covariance of varpar. With known level-1 variances varpar is theta alone.

Satterthwaite (lmerTest): for a contrast l, with C(varpar) = sigma^2 (R_X R_X')^{-1} = cov(beta) and g the
gradient of l'C l in varpar, df = 2 (l'C l)^2 / (g'A g). For q rows, lmerTest's F test takes the
eigen-decomposition L C L' = P D P', the df nu_m of each row of P'L, E = sum nu_m / (nu_m - 2) and
df = 2E / (E - q) (nu_m all equal: that value; any nu_m <= 2: 2).

Profile intervals (lme4's ``confint(method="profile")`` parameters: the SD of each random coefficient, the
correlations, sigma): for each, the criterion is minimised over the others with it held fixed, and the
interval ends are where the profile rises by chi2_1(level) above the minimum (Brent's method). A
parameter whose profile stays below that up to its bound (SD 0, correlation -1 or 1) gets the bound.
lme4 always profiles the ML deviance (``profile`` refits a REML fit by ML); here the fit's own criterion
is profiled, so intervals match lme4's for ML fits. The minimisation over the other parameters runs in psi
with bounds (L-BFGS-B) and is then polished in varpar with psi_k(varpar) fixed as a constraint (SLSQP): psi
-> varpar has kinks at SD 0 and correlations +-1, where L-BFGS-B alone can stall.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ..errors import OptionError
from .fit import single_threaded_blas

LOG_2PI = float(np.log(2.0 * np.pi))
STEP = 1e-5  # central-difference step for the Hessian and the Jacobian of cov(beta) (standardised scale)


class VarianceParameters:
    """lmerTest's varpar = (theta, sigma) of a fit, on its standardised design, with the criterion d,
    its gradient, Hessian and A = 2 H^{-1} (module docstring)."""

    def __init__(self, fit):
        if fit.design.residual is not None:
            raise OptionError("Satterthwaite df and variance-component intervals are not available yet for "
                              "models with a level-1 error structure (varIdent, log-linear variance, AR(1)). "
                              "Use df='book' or df='residual'.")
        self.fit = fit
        self.objective = fit.optimum.objective
        self.params = self.objective.params
        self.known = fit.design.known_variance is not None
        self.reml = self.objective.reml
        theta = fit.optimum.theta
        self.x = theta.copy() if self.known else np.append(theta, np.sqrt(fit.optimum.scale))

    def split(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        return (x, 1.0) if self.known else (x[:-1], float(x[-1]))

    def deviance(self, x: np.ndarray) -> float:
        theta, sigma = self.split(x)
        fac = self.objective.factorize(theta)
        if self.known:
            return float(self.objective.criterion(fac))
        return self._unprofiled(fac, sigma)

    def _unprofiled(self, fac, sigma: float) -> float:
        d = self.objective.design
        s2 = sigma ** 2
        m = d.n_obs - d.n_fixed if self.reml else d.n_obs
        value = fac.logdet_z + fac.r2 / s2 + m * (LOG_2PI + np.log(s2))
        return float(value + fac.logdet_x) if self.reml else float(value)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.value_and_gradient(x)[1]

    def value_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """d and its analytic gradient in varpar from one factorisation."""
        theta, sigma = self.split(x)
        fac = self.objective.factorize(theta)
        value = float(self.objective.criterion(fac)) if self.known else self._unprofiled(fac, sigma)
        Q, G = fac.gradient_parts(self.reml)
        out = np.empty(len(x))
        for k, i in enumerate(self.objective.position):
            fp = self.params.factors[i]
            log_det, rss = Q[k][fp.cols, fp.rows], G[k][fp.rows, fp.cols]
            out[fp.offset:fp.offset + fp.size] = 2.0 * log_det - 2.0 / sigma ** 2 * rss
        if not self.known:
            d = self.objective.design
            m = d.n_obs - d.n_fixed if self.reml else d.n_obs
            out[-1] = 2.0 * m / sigma - 2.0 * fac.r2 / sigma ** 3
        return value, out

    @cached_property
    def hessian(self) -> np.ndarray:
        k = len(self.x)
        H = np.empty((k, k))
        for j in range(k):
            e = np.zeros(k)
            e[j] = STEP
            H[:, j] = (self.gradient(self.x + e) - self.gradient(self.x - e)) / (2.0 * STEP)
        return 0.5 * (H + H.T)

    @cached_property
    def covariance(self) -> np.ndarray:
        """A = 2 H^{-1}, the asymptotic covariance of varpar (standardised scale)."""
        values, vectors = np.linalg.eigh(self.hessian)
        if values.min() <= 1e-8 * max(values.max(), 1e-300):
            raise OptionError("The Hessian of the criterion in the variance parameters is not positive definite "
                              "at the estimates (a variance at 0 or a correlation at +-1, or no convergence), so "
                              "Satterthwaite df and Wald SEs of the variance components are undefined. Simplify "
                              "the random part, or use df='book' and method='profile'.")
        return 2.0 * (vectors / values) @ vectors.T

    def fixed_cov(self, x: np.ndarray) -> np.ndarray:
        theta, sigma = self.split(x)
        return sigma ** 2 * self.objective.factorize(theta).fixed_cov_relative()

    @cached_property
    def fixed_cov_jacobian(self) -> np.ndarray:
        """d cov(beta*) / d varpar_k, (k, p, p), by central differences."""
        out = []
        for j in range(len(self.x)):
            e = np.zeros(len(self.x))
            e[j] = STEP
            out.append((self.fixed_cov(self.x + e) - self.fixed_cov(self.x - e)) / (2.0 * STEP))
        return np.array(out)

    @property
    def user_factor(self) -> np.ndarray:
        """varpar (user's units) = user_factor * varpar (standardised), elementwise."""
        scaling = self.fit.optimum.scaling
        ratio = scaling.y_scale ** 2 if self.known else 1.0
        theta = np.concatenate([np.sqrt(ratio) / scaling.z_scale[fp.factor.name][fp.rows]
                                for fp in self.params.factors])
        return theta if self.known else np.append(theta, scaling.y_scale)

    # --- Satterthwaite ----------------------------------------------------------------------------
    def _row_df(self, row: np.ndarray, A: np.ndarray) -> float:
        v = row @ self.fixed_cov(self.x) @ row
        g = np.einsum("p,kpq,q->k", row, self.fixed_cov_jacobian, row)
        denominator = g @ A @ g
        return float(2.0 * v ** 2 / denominator) if denominator > 0 else np.inf

    def satterthwaite(self, L: np.ndarray) -> np.ndarray:
        """df of each row of L (user's fixed effects) and of their joint F test (last entry)."""
        L_std = L @ self.fit.optimum.scaling.fixed_map  # l'beta = s_y (l'A) beta* + const: df does not depend on s_y
        A = self.covariance
        rows = [self._row_df(row, A) for row in L_std]
        if len(L_std) == 1:
            return np.array(rows + rows)
        values, vectors = np.linalg.eigh(L_std @ self.fixed_cov(self.x) @ L_std.T)
        keep = values > 1e-12 * values.max()
        nu = np.array([self._row_df(direction @ L_std, A) for direction in vectors[:, keep].T])
        return np.array(rows + [_f_test_df(nu)])


def _f_test_df(nu: np.ndarray) -> float:
    """lmerTest's denominator df of a q-df F test from the df of its q orthogonal directions."""
    if np.all(np.abs(nu - nu[0]) < 1e-8):
        return float(nu[0])
    if not np.all(np.isfinite(nu)):
        return np.inf
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - len(nu))


def variance_parameters(fit) -> VarianceParameters:
    """The fit's :class:`VarianceParameters`, made once per fit."""
    if fit.method == "bayes":
        raise OptionError("Satterthwaite df and likelihood intervals of the variance components apply to REML / "
                          "ML fits. A Bayesian fit's posterior intervals are in fit.variance_components (and "
                          "fit.test / fit.contrast give the posterior of fixed-effect combinations).")
    if fit.method not in ("reml", "ml") or not hasattr(fit, "_objective"):
        raise OptionError(f"This needs a REML or ML fit of a linear model; got method={fit.method!r}.")
    cached = fit.__dict__.get("_variance_parameters")
    if cached is None:
        cached = fit.__dict__["_variance_parameters"] = VarianceParameters(fit)
    return cached


def satterthwaite(fit, L: np.ndarray) -> np.ndarray:
    """Satterthwaite df of each row of L and of the joint F test (last entry); see the module docstring."""
    return variance_parameters(fit).satterthwaite(np.atleast_2d(L))


# --- variance components: SD / correlation parameters -------------------------------------------------

class ComponentMap:
    """lme4's profile parameters psi = (SD of each random coefficient, correlations, sigma) <-> varpar,
    on the standardised scale: T = sigma^2 Lambda Lambda', Lambda = chol(T) / sigma."""

    def __init__(self, vp: VarianceParameters):
        self.vp = vp
        self.entries = [(i, int(r), int(c)) for i, fp in enumerate(vp.params.factors)
                        for r, c in zip(fp.rows, fp.cols)]

    def psi(self, x: np.ndarray) -> np.ndarray:
        theta, sigma = self.vp.split(x)
        out = []
        for i, lam in enumerate(self.vp.params.lambdas(theta)):
            T = sigma ** 2 * lam @ lam.T
            sd = np.sqrt(np.diag(T))
            fp = self.vp.params.factors[i]
            for r, c in zip(fp.rows, fp.cols):
                out.append(sd[r] if r == c else (T[r, c] / (sd[r] * sd[c]) if sd[r] * sd[c] > 0 else 0.0))
        return np.array(out if self.vp.known else out + [sigma])

    def varpar(self, psi: np.ndarray) -> np.ndarray:
        sigma = 1.0 if self.vp.known else float(psi[-1])
        theta = np.empty(self.vp.params.size)
        for fp in self.vp.params.factors:
            block = psi[fp.offset:fp.offset + fp.size]
            q = fp.factor.n_coef
            sd = np.zeros(q)
            diagonal = fp.rows == fp.cols
            sd[fp.rows[diagonal]] = block[diagonal]
            T = np.diag(sd ** 2)
            for (r, c), value in zip(zip(fp.rows[~diagonal], fp.cols[~diagonal]), block[~diagonal]):
                T[r, c] = T[c, r] = value * sd[r] * sd[c]
            lam = _cholesky(T) / sigma
            theta[fp.offset:fp.offset + fp.size] = lam[fp.rows, fp.cols]
        return theta if self.vp.known else np.append(theta, sigma)

    def bounds(self) -> list[tuple[float | None, float | None]]:
        out = [(0.0, None) if r == c else (-1.0, 1.0) for _, r, c in self.entries]
        return out if self.vp.known else out + [(1e-10, None)]

    def user_factor(self) -> np.ndarray:
        """psi (user's units) = user_factor * psi (standardised)."""
        scaling = self.vp.fit.optimum.scaling
        out = [scaling.y_scale / scaling.z_scale[self.vp.params.factors[i].factor.name][r] if r == c else 1.0
               for i, r, c in self.entries]
        return np.array(out if self.vp.known else out + [scaling.y_scale])


def _cholesky(T: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a positive semi-definite T (a zero pivot gives a zero column)."""
    q = len(T)
    L = np.zeros_like(T)
    for j in range(q):
        L[j, j] = np.sqrt(max(T[j, j] - L[j, :j] @ L[j, :j], 0.0))
        for i in range(j + 1, q):
            L[i, j] = (T[i, j] - L[i, :j] @ L[j, :j]) / L[j, j] if L[j, j] > 0 else 0.0
    return L


def _components(cmap: ComponentMap) -> list[dict]:
    """Rows of the interval table: SD-scale parameters (lme4's) then the variance scale."""
    names = {fp.factor.name: fp.factor.coef_names for fp in cmap.vp.params.factors}
    rows = []
    for k, (i, r, c) in enumerate(cmap.entries):
        factor = cmap.vp.params.factors[i].factor.name
        coef = names[factor]
        rows.append({"factor": factor, "term": coef[c], "term2": "" if r == c else coef[r],
                     "parameter": "sd" if r == c else "corr", "psi": k})
    if not cmap.vp.known:
        rows.append({"factor": "Residual", "term": "", "term2": "", "parameter": "sigma", "psi": len(cmap.entries)})
    squared = {"sd": "variance", "corr": "covariance", "sigma": "sigma2"}
    return rows + [{**row, "parameter": squared[row["parameter"]]} for row in rows]


def _component_values(cmap: ComponentMap, psi: np.ndarray, rows: list[dict]) -> np.ndarray:
    """Each row's value (standardised scale) from psi."""
    out = []
    for row in rows:
        k = row["psi"]
        kind = row["parameter"]
        if kind in ("sd", "corr", "sigma"):
            out.append(psi[k])
        elif kind in ("variance", "sigma2"):
            out.append(psi[k] ** 2)
        else:  # covariance = corr * sd_r * sd_c
            i, r, c = cmap.entries[k]
            sd = {cmap.entries[m][1]: psi[m] for m in range(len(cmap.entries))
                  if cmap.entries[m][0] == i and cmap.entries[m][1] == cmap.entries[m][2]}
            out.append(psi[k] * sd[r] * sd[c])
    return np.array(out)


def _row_factors(cmap: ComponentMap, rows: list[dict]) -> np.ndarray:
    """user value = factor * standardised value, per row."""
    unit = cmap.user_factor()
    out = []
    for row in rows:
        k, kind = row["psi"], row["parameter"]
        if kind in ("sd", "corr", "sigma"):
            out.append(unit[k])
        elif kind in ("variance", "sigma2"):
            out.append(unit[k] ** 2)
        else:
            i, r, c = cmap.entries[k]
            diag = {cmap.entries[m][1]: unit[m] for m in range(len(cmap.entries))
                    if cmap.entries[m][0] == i and cmap.entries[m][1] == cmap.entries[m][2]}
            out.append(diag[r] * diag[c])
    return np.array(out)


def variance_intervals(fit, method: str = "wald", level: float = 0.95) -> pd.DataFrame:
    """SEs and intervals of every variance-component parameter (see the module docstring).

    Rows: the SD of each random coefficient, each correlation and sigma (lme4's profile parameters), then
    the same on the variance scale (variances, covariances, sigma^2). ``se`` is the delta-method SE from
    A = 2 H^{-1} (observed information of the fit's criterion). ``method="wald"``: estimate -+ z se,
    clipped to the parameter's range (SDs and variances >= 0, correlations in [-1, 1]).
    ``method="profile"``: profile-likelihood ends for the SD-scale rows; a variance's ends are its SD's
    squared, a covariance gets NaN (it is not one parameter of the profile).
    """
    if method not in ("wald", "profile"):
        raise OptionError(f"method={method!r}: choose 'wald' (estimate -+ z SE) or 'profile' "
                          "(profile-likelihood interval).")
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1 (e.g. 0.95).")
    vp = variance_parameters(fit)
    cmap = ComponentMap(vp)
    rows = _components(cmap)
    psi = cmap.psi(vp.x)
    values = _component_values(cmap, psi, rows)
    jac = np.empty((len(rows), len(vp.x)))
    for j in range(len(vp.x)):
        e = np.zeros(len(vp.x))
        e[j] = 1e-6
        jac[:, j] = (_component_values(cmap, cmap.psi(vp.x + e), rows)
                     - _component_values(cmap, cmap.psi(vp.x - e), rows)) / 2e-6
    try:
        se = np.sqrt(np.maximum(np.einsum("rk,kl,rl->r", jac, vp.covariance, jac), 0.0))
    except OptionError:
        if method == "wald":
            raise
        se = np.full(len(rows), np.nan)
    factor = _row_factors(cmap, rows)
    z = stats.norm.ppf(0.5 + level / 2.0)
    if method == "wald":
        lower, upper = values - z * se, values + z * se
    else:
        with single_threaded_blas():  # many tiny products: threads only add synchronisation (as the fit)
            lower, upper = _profile_table(vp, cmap, rows, psi, se[:len(psi)], stats.chi2.ppf(level, 1))
    table = pd.DataFrame(rows).drop(columns="psi")
    table["estimate"] = factor * values
    table["se"] = np.abs(factor) * se
    table["lower"] = factor * lower
    table["upper"] = factor * upper
    low_bound = table["parameter"].isin(["sd", "sigma", "variance", "sigma2"])
    table.loc[low_bound, "lower"] = table.loc[low_bound, "lower"].clip(lower=0.0)
    corr = table["parameter"] == "corr"
    table.loc[corr, ["lower", "upper"]] = table.loc[corr, ["lower", "upper"]].clip(-1.0, 1.0)
    table.attrs["method"] = method
    table.attrs["level"] = level
    table.attrs["criterion"] = "REML" if vp.reml else "ML"
    return table


# --- profile ---------------------------------------------------------------------------------------------

class _Profile:
    """The fit's criterion minimised over psi with one entry held fixed (warm-started)."""

    def __init__(self, vp: VarianceParameters, cmap: ComponentMap, psi_hat: np.ndarray, k: int):
        self.vp, self.cmap, self.k = vp, cmap, k
        self.others = np.array([j for j in range(len(psi_hat)) if j != k], dtype=int)
        self.bounds = [cmap.bounds()[j] for j in self.others]
        self.psi_hat = psi_hat
        self.start = psi_hat[self.others].copy()
        self.minimum = vp.deviance(vp.x)

    def criterion(self, psi: np.ndarray) -> float:
        try:
            return self.vp.deviance(self.cmap.varpar(psi))
        except np.linalg.LinAlgError:  # so far out that X'V^{-1}X is numerically singular
            return np.inf

    def value_and_gradient(self, psi: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its gradient in the free entries of psi: the analytic gradient in varpar times
        d varpar / d psi (one-sided differences of the map, stepping away from the nearest bound)."""
        x = self.cmap.varpar(psi)
        try:
            value, gradient = self.vp.value_and_gradient(x)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros(len(self.others))
        out = np.empty(len(self.others))
        bounds = self.cmap.bounds()
        for n, j in enumerate(self.others):
            low, high = bounds[j]
            h = 1e-7 * max(abs(psi[j]), 1.0)
            if high is not None and psi[j] + h > high:
                h = -h
            moved = psi.copy()
            moved[j] += h
            out[n] = gradient @ (self.cmap.varpar(moved) - x) / h
        return value, out

    def rise(self, value: float) -> float:
        """Profile criterion at psi_k = value minus the minimum: the lower of two minimisations over the other
        parameters: in psi with bounds, warm-started from the previous solution (reaches SD 0 and correlations
        +-1, but psi -> varpar has kinks there), then, inside the bounds, from its end point in varpar with
        psi_k(varpar) = value as a constraint (SLSQP; smooth where the SDs are not 0)."""
        psi = self.psi_hat.copy()
        psi[self.k] = value
        if not len(self.others):
            return self.criterion(psi) - self.minimum

        def objective(free):
            psi[self.others] = free
            return self.value_and_gradient(psi)

        result = optimize.minimize(objective, self.start, method="L-BFGS-B", jac=True, bounds=self.bounds,
                                   options={"ftol": 1e-14, "gtol": 1e-8, "maxiter": 500})
        self.start = result.x
        psi[self.others] = result.x
        best = self.criterion(psi)
        low, high = self.cmap.bounds()[self.k]
        if value != low and value != high:
            x, constrained = self._constrained(value, self.cmap.varpar(psi))
            if constrained < best:
                best = constrained
                self.start = self.cmap.psi(x)[self.others]
        return best - self.minimum

    def _constrained(self, value: float, start: np.ndarray) -> tuple[np.ndarray, float]:
        """min d(varpar) subject to psi_k(varpar) = value, by SLSQP from ``start``."""
        def constraint(x):
            return self.cmap.psi(x)[self.k] - value

        def constraint_gradient(x):
            out = np.empty(len(x))
            for j in range(len(x)):
                e = np.zeros(len(x))
                e[j] = 1e-7
                out[j] = (constraint(x + e) - constraint(x - e)) / 2e-7
            return out

        def objective(x):
            try:
                return self.vp.value_and_gradient(x)
            except np.linalg.LinAlgError:
                return np.inf, np.zeros(len(x))

        result = optimize.minimize(objective, start, jac=True, method="SLSQP",
                                   constraints=[{"type": "eq", "fun": constraint, "jac": constraint_gradient}],
                                   options={"ftol": 1e-13, "maxiter": 300})
        if not np.all(np.isfinite(result.x)) or abs(constraint(result.x)) > 1e-9 * max(abs(value), 1.0):
            return result.x, np.inf
        return result.x, float(self.vp.deviance(result.x))

    def end(self, side: int, cutoff: float, scale: float) -> float:
        """Where the profile rises by ``cutoff`` above (side=1) or below (side=-1) the estimate."""
        low, high = self.cmap.bounds()[self.k]
        bound = (high if side > 0 else low)
        estimate = self.psi_hat[self.k]
        self.start = self.psi_hat[self.others].copy()
        inside, step = estimate, scale
        for _ in range(60):
            trial = estimate + side * step
            if bound is not None and side * (trial - bound) >= 0:
                trial = bound
            value = self.rise(trial) - cutoff
            if value > 0:
                return optimize.brentq(lambda v: self.rise(v) - cutoff, min(inside, trial), max(inside, trial),
                                       xtol=1e-8 * max(abs(estimate), 1e-3), rtol=1e-10)
            if bound is not None and trial == bound:
                return float(bound)
            inside, step = trial, 2.0 * step
        return side * np.inf


def _profile_table(vp: VarianceParameters, cmap: ComponentMap, rows: list[dict], psi: np.ndarray,
                   se: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Profile ends of each psi (first steps of one Wald SE, else 10% of the estimate) for the table's rows."""
    ends = {}
    for k in range(len(psi)):
        profile = _Profile(vp, cmap, psi, k)
        scale = se[k] if np.isfinite(se[k]) and se[k] > 0 else 0.1 * max(abs(psi[k]), 0.1)
        ends[k] = (profile.end(-1, cutoff, scale), profile.end(1, cutoff, scale))
    lower, upper = [], []
    for row in rows:
        lo, hi = ends[row["psi"]]
        kind = row["parameter"]
        if kind in ("sd", "corr", "sigma"):
            lower.append(lo)
            upper.append(hi)
        elif kind in ("variance", "sigma2"):
            lower.append(lo ** 2)
            upper.append(hi ** 2)
        else:
            lower.append(np.nan)
            upper.append(np.nan)
    return np.array(lower), np.array(upper)


# --- fixed effects: profile (ML) -------------------------------------------------------------------------------

class _FixedProfile:
    """The ML criterion with the user's fixed effect k held at b, minimised over the others and theta.

    On the standardised design beta_k = s_y (A beta*)_k (+ m_y for the intercept) is l'beta* = c. For given
    theta the penalised RSS at beta* is r^2 + (beta* - beta^)'(R_X R_X')(beta* - beta^) (Bates et al. 2015,
    eq. 16-18), whose minimum under l'beta* = c is r^2 + (c - l'beta^)^2 / (l'C l), C = (R_X R_X')^{-1};
    sigma^2 is then profiled as in the fit (module docstring), leaving a minimisation over theta.
    """

    def __init__(self, vp: VarianceParameters, k: int):
        self.vp = vp
        scaling = vp.fit.optimum.scaling
        self.l = scaling.y_scale * scaling.fixed_map[k]
        self.shift = scaling.y_centre if scaling.intercept == k else 0.0
        self.theta_hat = vp.fit.optimum.theta
        self.start = self.theta_hat.copy()
        self.minimum = float(vp.objective.criterion(vp.fit.optimum.factorization))

    def criterion(self, theta: np.ndarray, b: float) -> float:
        objective = self.vp.objective
        try:
            fac = objective.factorize(theta)
        except np.linalg.LinAlgError:
            return np.inf
        C = fac.fixed_cov_relative()
        gap = (b - self.shift - self.l @ fac.beta) ** 2 / (self.l @ C @ self.l)
        n = objective.design.n_obs
        if self.vp.known:
            return float(fac.logdet_z + fac.r2 + gap + n * LOG_2PI + objective.sum_log_v)
        return float(fac.logdet_z + n * (1.0 + LOG_2PI + np.log((fac.r2 + gap) / n)))

    def rise(self, b: float) -> float:
        result = optimize.minimize(self.criterion, self.start, args=(b,), method="L-BFGS-B", jac="3-point",
                                   options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 500})
        self.start = result.x
        return min(result.fun, self.criterion(self.theta_hat, b)) - self.minimum

    def end(self, side: int, cutoff: float, estimate: float, se: float) -> float:
        self.start = self.theta_hat.copy()
        inside, step = estimate, se
        for _ in range(60):
            trial = estimate + side * step
            if self.rise(trial) > cutoff:
                return optimize.brentq(lambda b: self.rise(b) - cutoff, min(inside, trial), max(inside, trial),
                                       xtol=1e-9 * max(abs(estimate), se), rtol=1e-12)
            inside, step = trial, 2.0 * step
        return side * np.inf


def fixed_profile_intervals(fit, estimate: np.ndarray, se: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Profile-likelihood interval of each fixed effect of an ML fit (lme4's ``confint(method="profile")``): the
    ends where the ML criterion, minimised over the other parameters, rises by chi2_1(level) above its minimum.
    ``estimate`` and ``se`` (in ``fit.fixed_effects`` order) start the search for each end."""
    vp = variance_parameters(fit)
    cutoff = stats.chi2.ppf(level, 1)
    lower, upper = np.empty(len(estimate)), np.empty(len(estimate))
    with single_threaded_blas():
        for k in range(len(estimate)):
            profile = _FixedProfile(vp, k)
            lower[k] = profile.end(-1, cutoff, estimate[k], se[k])
            upper[k] = profile.end(1, cutoff, estimate[k], se[k])
    return lower, upper


def bootstrap_intervals(fit, level: float, n_boot: int | None, random_seed: int | None, workers: int | None,
                        progress: bool) -> pd.DataFrame:
    """Percentile intervals of every fixed effect and variance-component parameter from a seeded parametric
    bootstrap (``n_boot`` refits, default 1000), in the layout of :func:`bayeshlm.results.hypotheses.confint`."""
    from .bootstrap import parametric_bootstrap

    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1 (e.g. 0.95).")
    n_boot = 1000 if n_boot is None else n_boot
    result = parametric_bootstrap(fit, n_boot, random_seed=random_seed, workers=workers, progress=progress)
    summary = result.summary(level)
    table = summary.reset_index()[["factor", "term", "term2", "parameter", "estimate", "se", "lower", "upper"]]
    table["method"] = f"bootstrap ({n_boot - result.n_failed} of {n_boot} refits, percentile)"
    table.attrs.update({"method": "bootstrap", "level": level, "criterion": fit.method.upper(),
                        "n_failed": result.n_failed, "random_seed": random_seed})
    return table
