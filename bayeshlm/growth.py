"""Growth models (Raudenbush & Bryk 2002, ch. 6 and 8): codings of time, and growth-specific summaries.

Time codings add columns to a copy of the data frame, so the same columns serve the lme4-style formula
and the level equations:

>>> import bayeshlm as bh
>>> ox = bh.growth.polynomial_time(bh.datasets.load("oxboys"), "age", center=0.0, degree=2)
>>> model = bh.HLM("height ~ age_c + age_c2 + (age_c | Subject)", ox)

* :func:`polynomial_time` -- (a - L), (a - L)^2, ...: the intercept is status at age L, the linear
  coefficient the instantaneous growth rate at L, twice the quadratic one the acceleration
  (R&B 2002, eq. 6.11-6.14: rate at a = pi_1 + 2 pi_2 (a - L)).
* :func:`piecewise_time` -- the two-piece linear codings of R&B (2002) Table 6.9 (eq. 6.19-6.20).

:func:`covariance_structures` compares compound symmetry, AR(1), random-slope, heterogeneous-sigma^2 and
unrestricted covariance models by deviance (R&B 2002, Tables 6.11-6.12).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from .errors import DataError, OptionError

LOG_2PI = float(np.log(2.0 * np.pi))
PIECEWISE_SCHEMES = ("two_rate", "increment")


def _time_values(data: pd.DataFrame, time: str) -> np.ndarray:
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame; got {type(data).__name__}.")
    if time not in data.columns:
        from .errors import closest_names

        raise DataError(f"{time!r} is not a column.{closest_names(time, data.columns)} "
                        f"The data has columns: {', '.join(map(str, data.columns))}.")
    if not pd.api.types.is_numeric_dtype(data[time]) or pd.api.types.is_bool_dtype(data[time]):
        raise DataError(f"The time variable {time!r} must be numeric (ages, grades, occasions); "
                        f"its column has type {data[time].dtype}.")
    return data[time].to_numpy(dtype=float)


def _check_new_names(data: pd.DataFrame, names: tuple[str, ...], columns: dict[str, np.ndarray]) -> None:
    """Refuse repeated names (a piece would be lost) and names of existing columns holding other values (the
    outcome or the time would be overwritten); re-adding identical columns is allowed."""
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise OptionError(f"names={tuple(names)!r}: {', '.join(map(repr, repeated))} is given more than once, so "
                          "one coding would overwrite the other. Give each new column its own name.")
    for name, values in columns.items():
        if name in data.columns:
            old = pd.to_numeric(data[name], errors="coerce").to_numpy(dtype=float)
            if not np.allclose(old, values, rtol=0, atol=0, equal_nan=True):
                raise OptionError(f"names={tuple(names)!r}: the data already has a column {name!r} with other "
                                  "values, which the new coding would overwrite. Choose another name, or drop "
                                  "that column first.")


def _add_columns(data: pd.DataFrame, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    out = data.copy()
    for name, values in columns.items():
        out[name] = values
    return out


def polynomial_time(data: pd.DataFrame, time: str, *, center: float = 0.0, degree: int = 2,
                    names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Add the polynomial growth codings (a - L)^k, k = 1..degree, centred at age L = ``center``.

    With Y_ti = pi_0i + pi_1i (a_ti - L) + pi_2i (a_ti - L)^2 + e_ti (R&B 2002, eq. 6.11), pi_0i is person
    i's status at age L, pi_1i the instantaneous growth rate at L and 2 pi_2i the acceleration; the rate at
    age a is pi_1i + 2 pi_2i (a - L) (eq. 6.14). Default column names ``<time>_c``, ``<time>_c2``,
    ``<time>_c3``...; ``names`` overrides them (one per power). Returns a new frame.
    """
    a = _time_values(data, time)
    if int(degree) != degree or degree < 1:
        raise OptionError(f"degree={degree!r}: give a positive whole number (1 linear, 2 quadratic, ...).")
    degree = int(degree)
    if names is None:
        names = tuple(f"{time}_c" if k == 1 else f"{time}_c{k}" for k in range(1, degree + 1))
    if len(names) != degree:
        raise OptionError(f"names={names!r}: give one column name per power (degree={degree}).")
    centred = a - float(center)
    columns = {name: centred ** k for k, name in zip(range(1, degree + 1), names)}
    _check_new_names(data, tuple(names), columns)
    return _add_columns(data, columns)


def piecewise_time(data: pd.DataFrame, time: str, *, knot: float, origin: float | None = None,
                   scheme: str = "two_rate", names: tuple[str, str] = ("a1", "a2")) -> pd.DataFrame:
    """Add the two-piece linear codings a1, a2 of R&B (2002) Table 6.9 for a change of slope at ``knot``.

    Y_ti = pi_0i + pi_1i a1_ti + pi_2i a2_ti + e_ti (eq. 6.19-6.20); pi_0i is status at time ``origin``
    (default: the earliest time in the data). With k the knot and o the origin:

    * ``scheme="two_rate"`` (Table 6.9 a): a1 = min(a, k) - min(o, k), a2 = max(0, a - k) - max(0, o - k);
      pi_1 is the growth rate before the knot and pi_2 the rate after it.
    * ``scheme="increment"`` (Table 6.9 b): a1 = a - o, a2 as above; pi_1 is the base rate and pi_2 the
      increment to it after the knot (the rate after the knot is pi_1 + pi_2).

    Grades 1-6 with the knot at grade 3 give, for ``two_rate`` and origin 1, a1 = 0 1 2 2 2 2 and
    a2 = 0 0 0 1 2 3; with origin 3, a1 = -2 -1 0 0 0 0. Returns a new frame.
    """
    if scheme not in PIECEWISE_SCHEMES:
        raise OptionError(f"scheme={scheme!r}: use 'two_rate' (separate rates before and after the knot) or "
                          "'increment' (a base rate and its increment after the knot).")
    if len(names) != 2:
        raise OptionError(f"names={names!r}: give two column names (first and second piece).")
    a = _time_values(data, time)
    o = float(np.nanmin(a)) if origin is None else float(origin)
    k = float(knot)
    if not np.nanmin(a) < k < np.nanmax(a):
        raise OptionError(f"knot={knot!r} is not inside the observed range of {time!r} "
                          f"({np.nanmin(a):g} to {np.nanmax(a):g}): each piece needs observations.")
    second = np.maximum(0.0, a - k) - max(0.0, o - k)
    first = np.minimum(a, k) - min(o, k) if scheme == "two_rate" else a - o
    columns = {names[0]: first, names[1]: second}
    _check_new_names(data, tuple(names), columns)
    return _add_columns(data, columns)


# --- covariance structures for time-structured data (HMLM) ---------------------------------------------

def _occasions(data: pd.DataFrame, time: str) -> tuple[np.ndarray, np.ndarray]:
    """Distinct times (sorted) and each row's occasion index into them."""
    values = _time_values(data, time)
    occasions, index = np.unique(values, return_inverse=True)
    return occasions, index


class UnrestrictedFit:
    """ML / REML fit of the unrestricted multivariate repeated-measures model (R&B 2002, eq. 14.53-14.67).

    Each person's observed outcomes are y_i = M_i y*_i with y*_i ~ N(X*_i beta, Sigma) over the T occasions
    of the design and M_i selecting the occasions person i has (missing occasions handled per person).
    Sigma = L L' is unrestricted (T(T+1)/2 parameters, L lower triangular); beta by GLS. The criterion

        ML:   D = sum_i [log|V_i| + e_i'V_i^{-1}e_i] + n log(2 pi),       V_i = M_i Sigma M_i'
        REML: D + log|X'V^{-1}X| - p log(2 pi)

    has gradient dD/dSigma = sum_i M_i'[V_i^{-1} - V_i^{-1}e_i e_i'V_i^{-1} (- V_i^{-1}X_i A^{-1}X_i'V_i^{-1})]M_i
    (A = X'V^{-1}X; beta's own variation drops out at the GLS estimate), and dD/dL = 2 (dD/dSigma) L,
    which L-BFGS-B uses.
    The fit runs on the standardised design (:func:`bayeshlm.design.scaling.standardise`), so it does not depend
    on the units of the outcome or the predictors; Sigma = s_y^2 Sigma*, beta, its covariance and D are mapped
    back exactly.
    """

    def __init__(self, data: pd.DataFrame, outcome: str, time: str, person: str, fixed: str, method: str):
        from .design import build_design
        from .design.scaling import standardise
        from .likelihood.marginal import Batch, gather, group_batches
        from .spec import parse_formula

        self.method = method
        self.occasions, occasion = _occasions(data, time)
        design = build_design(parse_formula(f"{outcome} {fixed} + (1 | {person})"), data)
        occasion = occasion[data.index.get_indexer(design.row_labels)]
        unit = design.factors[0]
        self.design = design
        self._standard, scaling = standardise(design)
        X, y = self._standard.X, self._standard.y
        self._batches = [Batch(rows=rows, valid=rows >= 0, X=gather(X, rows), y=gather(y, rows),
                               Z=(), same=(), codes=()) for rows in group_batches(unit.codes, unit.n_groups)]
        self._index = [gather(occasion, b.rows, 0) for b in self._batches]
        T = len(self.occasions)
        self._tril = np.tril_indices(T)
        self.n_params = design.n_fixed + T * (T + 1) // 2
        result = minimize(self._value_and_gradient, self._start(occasion), jac=True, method="L-BFGS-B",
                          options={"ftol": 1e-15, "gtol": 1e-7, "maxiter": 5000, "maxls": 50})
        self.converged = bool(result.success) or result.status == 2
        self.deviance = scaling.deviance(float(result.fun), design.n_obs, design.n_fixed, method == "reml")
        L = self._cholesky(result.x)
        names = [f"{o:g}" for o in self.occasions]
        self.sigma = pd.DataFrame(scaling.variance_factor * (L @ L.T), index=names, columns=names)
        fac = self._factorize(L)
        self.fixed_effects = pd.DataFrame(
            {"estimate": scaling.fixed(fac.beta), "se": np.sqrt(np.diag(scaling.fixed_cov(fac.fixed_cov_relative())))},
            index=pd.Index(design.fixed_names, name="term"))

    def _cholesky(self, x: np.ndarray) -> np.ndarray:
        T = len(self.occasions)
        L = np.zeros((T, T))
        L[self._tril] = x
        return L

    def _factorize(self, L: np.ndarray):
        from .likelihood.marginal import MarginalFactorization

        sigma = L @ L.T
        covariances = []
        for b, idx in zip(self._batches, self._index):
            both = b.valid[:, :, None] & b.valid[:, None, :]
            V = np.where(both, sigma[idx[:, :, None], idx[:, None, :]], 0.0)
            s = idx.shape[1]
            V[:, np.arange(s), np.arange(s)] += ~b.valid
            covariances.append(V)
        return MarginalFactorization(self._batches, covariances, self.design.n_fixed)

    def _value_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        L = self._cholesky(x)
        try:
            fac = self._factorize(L)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros_like(x)
        n, p = self.design.n_obs, self.design.n_fixed
        reml = self.method == "reml"
        value = fac.logdet_z + fac.r2 + n * LOG_2PI + (fac.logdet_x - p * LOG_2PI if reml else 0.0)
        A_inv = fac.fixed_cov_relative()
        T = len(self.occasions)
        G = np.zeros((T, T))
        for b, idx, chol_inv in zip(self._batches, self._index, fac.chol_inv):
            V_inv = chol_inv.swapaxes(1, 2) @ chol_inv  # V^-1 = L^-T L^-1
            u = np.einsum("gij,gj->gi", V_inv, b.y - b.X @ fac.beta)
            P = V_inv - u[:, :, None] * u[:, None, :]
            if reml:
                K = V_inv @ b.X
                P -= K @ A_inv @ K.swapaxes(1, 2)
            both = b.valid[:, :, None] & b.valid[:, None, :]
            np.add.at(G, (np.broadcast_to(idx[:, :, None], P.shape)[both],
                          np.broadcast_to(idx[:, None, :], P.shape)[both]), P[both])
        return float(value), (2.0 * G @ L)[self._tril]

    def _start(self, occasion: np.ndarray) -> np.ndarray:
        """Cholesky factor of the pairwise covariance of OLS residuals by occasion (a diagonal if not PD)."""
        d = self._standard
        residual = d.y - d.X @ np.linalg.lstsq(d.X, d.y, rcond=None)[0]
        wide = pd.DataFrame({"unit": d.factors[0].codes, "t": occasion, "e": residual}).pivot(
            index="unit", columns="t", values="e")
        S = wide.cov().to_numpy()
        try:
            L = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            L = np.diag(np.sqrt(np.nanmax([np.diag(S), np.full(len(S), residual.var())], axis=0)))
        return L[self._tril]


def covariance_structures(data: pd.DataFrame, outcome: str, time: str, person: str, *, fixed: str | None = None,
                          method: str = "ml") -> pd.DataFrame:
    """Deviance comparison of level-1 / level-2 covariance structures for time-structured data (R&B 2002,
    Tables 6.11-6.12; HLM's HMLM).

    Models (the fixed part ``fixed``, default ``"~ <time>"``, is the same in all of them):

    1. random intercept, compound symmetry: delta_t^2 = tau_00 + sigma^2, delta_tt' = tau_00 (eq. 6.30);
    2. random intercept, AR(1) errors over occasion number: delta_tt' = tau_00 + sigma^2 phi^|t - t'| (eq. 6.31);
    3. random intercept and slope in time, homogeneous sigma^2 (eq. 6.25);
    4. random intercept and slope, sigma^2_t per occasion;
    5. random intercept and slope, log-linear sigma^2: ln sigma^2_t = alpha_0 + alpha_1 a_t (eq. 6.32);
    6. unrestricted Sigma, T(T+1)/2 parameters (missing occasions handled per person; see UnrestrictedFit).

    Returns one row per model: deviance (-2 log L; REML criterion if ``method="reml"``), number of
    parameters (fixed effects included), AIC, BIC (log of the number of persons), and the likelihood-ratio
    test against the unrestricted model (chi-square, df, p). Models 1-5 are nested in model 6 only when
    the fixed part is the same, as here.
    """
    from scipy import stats

    from .errors import OptionError
    from .model import HLM

    if method not in ("ml", "reml"):
        raise OptionError(f"method={method!r}: covariance structures are compared by 'ml' (default) or 'reml'.")
    fixed = fixed if fixed is not None else f"~ {time}"
    if not str(fixed).strip().startswith("~"):
        raise OptionError(f"fixed={fixed!r}: give the right-hand side of the fixed part, e.g. '~ {time}'.")
    rhs = str(fixed).strip()[1:]
    occasions, index = _occasions(data, time)
    frame = data.assign(occasion_index=index)
    formula_int = f"{outcome} ~ {rhs} + (1 | {person})"
    formula_slope = f"{outcome} ~ {rhs} + ({time} | {person})"
    models = {
        "random intercept, compound symmetry": (formula_int, {}),
        "random intercept, AR(1)": (formula_int, {"correlation": "ar1", "time": "occasion_index"}),
        "random slope, homogeneous sigma^2": (formula_slope, {}),
        "random slope, sigma^2 per occasion": (formula_slope, {"level1_variance": "occasion_index"}),
        f"random slope, log-linear sigma^2 in {time}": (formula_slope, {"level1_variance": f"~ {time}"}),
    }
    rows = {}
    for name, (formula, options) in models.items():
        fit = HLM(formula, frame, **options).fit(method)
        rows[name] = (fit.deviance, fit.n_params, fit.converged)
    unrestricted = UnrestrictedFit(frame, outcome, time, person, fixed, method)
    rows["unrestricted"] = (unrestricted.deviance, unrestricted.n_params, unrestricted.converged)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["deviance", "n_params", "converged"])
    n_persons = unrestricted.design.factors[0].n_groups
    table["aic"] = table["deviance"] + 2 * table["n_params"]
    table["bic"] = table["deviance"] + np.log(n_persons) * table["n_params"]
    full = table.loc["unrestricted"]
    table["lrt_vs_unrestricted"] = table["deviance"] - full["deviance"]
    table["df"] = full["n_params"] - table["n_params"]
    table["p"] = np.where(table["df"] > 0, stats.chi2.sf(table["lrt_vs_unrestricted"], table["df"].clip(lower=1)),
                          np.nan)
    table.loc["unrestricted", ["lrt_vs_unrestricted", "df"]] = np.nan
    table.index.name = "model"
    return table[["deviance", "n_params", "aic", "bic", "lrt_vs_unrestricted", "df", "p", "converged"]]


# --- three-level growth -------------------------------------------------------------------------------

def variance_decomposition(fit, inner: str, outer: str) -> pd.DataFrame:
    """Share of each growth parameter's variance that lies between ``outer`` units (R&B 2002, eq. 8.18).

    In a three-level growth model (occasions in children in schools, e.g.
    ``math ~ year + (year | childid) + (year | schoolid)``) a child's growth parameter pi_p varies around its
    school's mean beta_p with variance tau_pi,pp, and school means vary with variance tau_beta,pp. The share
    between schools is tau_beta,pp / (tau_beta,pp + tau_pi,pp). Rows: the random coefficients of both factors;
    columns ``tau_<inner>``, ``tau_<outer>``, ``share_between`` (the share of ``outer``).
    """
    from .errors import OptionError

    for name in (inner, outer):
        fit.design.factor(name)
    if fit.design.nesting.get(inner) != outer:
        raise OptionError(f"{inner!r} is not nested in {outer!r} in this model; give the inner factor first "
                          f"(e.g. inner='childid', outer='schoolid').")
    tau_in, tau_out = fit.tau[inner], fit.tau[outer]
    common = [c for c in tau_in.index if c in tau_out.index]
    if not common:
        raise OptionError(f"{inner!r} and {outer!r} share no random coefficient; give both the same growth "
                          "parameters (e.g. (year | childid) + (year | schoolid)).")
    within = np.array([tau_in.loc[c, c] for c in common])
    between = np.array([tau_out.loc[c, c] for c in common])
    return pd.DataFrame({f"tau_{inner}": within, f"tau_{outer}": between,
                         "share_between": between / (between + within)}, index=pd.Index(common, name="coefficient"))
