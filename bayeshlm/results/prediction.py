"""Predictions, fitted values and residuals for Gaussian models, both engines (``fit.predict``, ``fit.fitted``,
``fit.residuals``).

The linear predictor of row i is x_i' gamma + sum_f z_fi' u_f[j_f(i)] (R&B 2002, eq. 2.22 in combined form).
For new data, X and each factor's Z are built with the fit's own column coding
(:func:`bayeshlm.design.prediction_rows.prediction_rows`).
Each grouping factor is matched on its own: a row's group is *known* when its label is among the fitted groups,
else *new*; a new group has no estimated effect, so it gets the population part (u = 0), and for prediction
intervals and predictive draws its effect varies as N(0, T) -- as lme4's ``allow.new.levels=TRUE`` and
brms' ``sample_new_levels="gaussian"``.

Likelihood fits (REML/ML), after lme4's ``predict``: ``kind="mean"`` gives x'gamma + z'u with the standard error
of its prediction error from Henderson's mixed-model equations (:func:`prediction_error_variance`: the
uncertainty of gamma-hat, of the known groups' u-hat, and how u-hat moves with gamma-hat). It holds the
variance parameters at their estimates and ignores their uncertainty, as lme4-style predictions do, so it
is somewhat too small when groups are few. ``kind="interval"``: the prediction interval for a new observation,
which adds sigma^2 (the row's category's variance under ``level1_variance="<column>"``; the known V_i of the
fitted rows) and, for a new group, z' T z. Intervals use normal quantiles. Other level-1 error structures
(log-linear variances, AR(1)) give the estimates with NaN SEs for now.

Bayesian fits: one linear predictor per posterior draw (known groups from their posterior draws of u);
``kind="mean"`` summarises it (posterior mean, SD, equal-tailed interval; a new group at u = 0);
``kind="interval"`` and ``kind="draws"`` add a new group's effect drawn from N(0, T_draw) (one draw per new
group label, shared by its rows) and the level-1 error N(0, sigma_draw^2).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from ..design.prediction_rows import PredictionRows, prediction_rows
from ..errors import DataError, OptionError, closest_names
from ..level1 import ByStratum
from .contract import equal_tailed_interval, wide

KINDS = ("mean", "interval", "draws")
DENSE_INVERSE_LIMIT = 6000  # group-effect columns up to which M^-1 is formed densely (6000^2 doubles: 288 MB)
GROUPS = ("conditional", "population")


def check_options(groups: str, kind: str, level: float) -> None:
    if groups not in GROUPS:
        raise OptionError(f"groups={groups!r} is not an option.{closest_names(str(groups), GROUPS)} Use "
                          "'conditional' (each known group's own effects; new groups get the population part) "
                          "or 'population' (every group treated as new: the fixed part only).")
    if kind not in KINDS:
        raise OptionError(f"kind={kind!r} is not an option.{closest_names(str(kind), KINDS)} Use 'mean' (the "
                          "expected outcome with its interval), 'interval' (a prediction interval for a new "
                          "observation) or 'draws' (posterior predictive draws; Bayesian fits).")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1, "
                          "e.g. level=0.95.")


# --- likelihood fits -----------------------------------------------------------------------------------

def predict_likelihood(fit, newdata, groups: str, kind: str, level: float, with_se: bool = True) -> pd.DataFrame:
    """lme4-style predictions of a REML / ML fit (see the module docstring for the formulas)."""
    check_options(groups, kind, level)
    if kind == "draws":
        raise OptionError("kind='draws' gives posterior predictive draws, which a likelihood fit does not have; use "
                          "kind='interval' for a prediction interval, or fit with method='bayes'.")
    rows = prediction_rows(fit.design, newdata)
    known = {f.name: (rows.codes[f.name] >= 0) & (groups == "conditional") for f in fit.design.factors}
    estimate = rows.X @ fit.fixed_effects["estimate"].to_numpy()
    for f in fit.design.factors:
        k = known[f.name]
        if k.any():
            modes = fit.conditional_modes(f.name).modes.to_numpy()
            estimate[k] += np.einsum("nq,nq->n", rows.Z[f.name][k], modes[rows.codes[f.name][k]])
    if not with_se:
        return pd.DataFrame({"estimate": estimate}, index=rows.index)
    if not _stratified_only(fit.design) and fit.design.residual is not None:
        if kind == "interval":
            _level1_variance(fit, newdata)  # refuses in words
        warnings.warn(f"Standard errors of predictions for a model with level-1 errors "
                      f"'{fit.design.error_structure.describe()}' are not implemented yet: se, lower and upper "
                      "are NaN; the estimates are the model's predictions.", UserWarning, stacklevel=3)
        return _table(rows, estimate, np.full(rows.n, np.nan), level)
    variance = prediction_error_variance(fit, rows, known)
    if kind == "interval":
        for f in fit.design.factors:
            new = ~known[f.name]
            Z = rows.Z[f.name][new]
            variance[new] += np.einsum("nq,qr,nr->n", Z, fit.tau[f.name].to_numpy(), Z)
        variance = variance + _level1_variance(fit, newdata)
    return _table(rows, estimate, np.sqrt(variance), level)


def prediction_error_variance(fit, rows: PredictionRows, known: dict[str, np.ndarray],
                              chunk: int = 2048) -> np.ndarray:
    """Var(x'gamma-hat + z'u-hat - x'gamma - z'u) per row, the variance parameters held at their estimates, from
    Henderson's mixed-model equations (the known groups' effects only; a new group's z'u is not predicted).

    With every group's effects u = L v (T = LL' per factor, any square root), v ~ N(0, I), weights W (1/V for
    known variances, else sigma^2 = s2 and W = I) and M = I + L'Z'WZL / s2:
    u-hat(gamma) - u has covariance L M^-1 L' and is uncorrelated with gamma-hat - gamma, and u-hat moves with
    gamma-hat by -L M^-1 L'Z'WX / s2, so the variance is x_e' V x_e + z'L M^-1 L'z with
    x_e = x - X'WZL M^-1 L'z / s2 and V = vcov(gamma). (lme4's condVar alone, z'L M^-1 L'z without the
    x_e correction, overstates it: 11.5 against 7.7 for a sleepstudy subject at Days = 4, where 400 parametric
    simulations give 8.3 -- the rest is the variance parameters' uncertainty, which neither counts.)"""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    from ..design.design import indicator_matrix

    design = fit.design
    V = fit.vcov.to_numpy()
    variance = np.einsum("np,pr,nr->n", rows.X, V, rows.X)
    if not any(k.any() for k in known.values()):
        return variance
    w = 1.0 / _level1_variance(fit, None)  # W = R^-1 (diagonal); then s2 = 1 in the formulas above
    s2 = 1.0
    blocks, roots = [], []
    for f in design.factors:
        root = _square_root(fit.tau[f.name].to_numpy())
        roots.append(root)
        blocks.append(indicator_matrix(f.codes, f.Z @ root, f.n_groups))
    ZL = sparse.hstack(blocks).tocsr()
    WZL = ZL.multiply(w[:, None]).tocsr()
    M = sparse.identity(ZL.shape[1], format="csc") + (ZL.T @ WZL).tocsc() / s2
    solver = splu(M)
    B = np.asarray(WZL.T @ design.X) / s2  # (K, p) = L'Z'WX / s2
    # each row's L'z: at most sum_f q_f nonzero entries, at these positions (0 with value 0 for a new group)
    offsets = np.cumsum([0] + [f.n_groups * f.n_coef for f in design.factors])
    positions = np.zeros((rows.n, sum(f.n_coef for f in design.factors)), dtype=np.int64)
    values = np.zeros(positions.shape)
    column = 0
    for f, root, offset in zip(design.factors, roots, offsets):
        k = np.flatnonzero(known[f.name])
        span = slice(column, column + f.n_coef)
        positions[k, span] = offset + rows.codes[f.name][k, None] * f.n_coef + np.arange(f.n_coef)
        values[k, span] = rows.Z[f.name][k] @ root
        column += f.n_coef
    if M.shape[0] <= DENSE_INVERSE_LIMIT:  # M^-1 once (LAPACK), then each row reads its few entries
        M_inv = np.linalg.inv(M.toarray())
        M_inv_B = M_inv @ B
        for start in range(0, rows.n, chunk):
            part = slice(start, min(start + chunk, rows.n))
            pos, val = positions[part], values[part]
            quad = np.einsum("nq,nqr,nr->n", val, M_inv[pos[:, :, None], pos[:, None, :]], val)
            x_e = rows.X[part] - np.einsum("nq,nqp->np", val, M_inv_B[pos])
            variance[part] = np.einsum("np,pr,nr->n", x_e, V, x_e) + quad
        return variance
    solver = splu(M)
    for start in range(0, rows.n, chunk):
        part = slice(start, min(start + chunk, rows.n))
        Lz = np.zeros((M.shape[0], part.stop - start))
        np.add.at(Lz, (positions[part], np.arange(part.stop - start)[:, None]), values[part])
        S = solver.solve(Lz)
        x_e = rows.X[part] - (B.T @ S).T
        variance[part] = np.einsum("np,pr,nr->n", x_e, V, x_e) + np.einsum("kn,kn->n", Lz, S)
    return variance


def _square_root(T: np.ndarray) -> np.ndarray:
    """A matrix L with LL' = T for a symmetric T >= 0 (also singular: a variance estimated at 0)."""
    values, vectors = np.linalg.eigh(T)
    return vectors * np.sqrt(np.clip(values, 0.0, None))


def _stratified_only(design) -> bool:
    """True for a level-1 variance per category (nlme varIdent) and no other error structure."""
    errors = design.error_structure
    return isinstance(errors.variance, ByStratum) and errors.correlation is None


def _level1_variance(fit, newdata) -> np.ndarray:
    """Each row's level-1 variance (the fitted rows for ``newdata=None``): sigma^2, the known V_i, or the
    variance of the row's category (varIdent); other error structures are refused."""
    design = fit.design
    n = design.n_obs if newdata is None else len(newdata)
    if design.residual is not None and not _stratified_only(design):
        raise OptionError(f"kind='interval' for a model with level-1 errors '{design.error_structure.describe()}' "
                          "is not implemented yet: the interval needs each new row's error variance. kind='mean' "
                          "works.")
    if design.residual is not None:
        r = design.residual
        column = r.strata_levels.name
        per_stratum = np.array([fit.residual_parameters[f"sigma2 {column}={level}"] for level in r.strata_levels])
        if newdata is None:
            return per_stratum[r.strata]
        if column not in newdata.columns:
            raise DataError(f"newdata lacks the column {column!r}, which sets each row's level-1 variance "
                            f"(level1_variance={column!r}).{closest_names(column, newdata.columns)}")
        labels = newdata[column].astype(str).to_numpy()
        codes = r.strata_levels.get_indexer(labels)
        if (codes < 0).any():
            unseen = sorted(set(labels[codes < 0]))
            raise DataError(f"newdata's {column!r} has {', '.join(map(repr, unseen))}, not among the fitted "
                            f"categories {', '.join(map(repr, r.strata_levels))}: the model has no level-1 variance "
                            "for it.")
        return per_stratum[codes]
    if design.known_variance is not None:
        if newdata is not None:
            raise OptionError("kind='interval' with newdata for a model with known level-1 variances: the new rows' "
                              "sampling variances are unknown. Use kind='mean'.")
        return design.known_variance
    return np.full(n, fit.sigma2)


def _table(rows: PredictionRows, estimate, se, level: float) -> pd.DataFrame:
    z = stats.norm.ppf(0.5 + level / 2)
    return pd.DataFrame({"estimate": estimate, "se": se, "lower": estimate - z * se, "upper": estimate + z * se,
                         "new_groups": rows.new_groups()}, index=rows.index)


# --- Bayesian fits -------------------------------------------------------------------------------------

def level1_sd_draws(fit, newdata) -> np.ndarray:
    """(chain, draw, 1) or (chain, draw, m) draws of the level-1 SD of each row (independent errors only)."""
    design = fit.design
    if design.residual is not None:
        raise OptionError(f"Predictive draws for a model with level-1 errors '{design.error_structure.describe()}' "
                          "are not implemented yet (each row's error variance and correlation would be needed); "
                          "kind='mean' works.")
    if design.known_variance is not None:
        if newdata is not None:
            raise OptionError("Predictive draws with newdata for a model with known level-1 variances: the new rows' "
                              "sampling variances are unknown. Use kind='mean'.")
        return np.sqrt(design.known_variance)[None, None, :]
    return fit.draws("sigma").transpose("chain", "draw").values[..., None]


def predict_bayes(fit, newdata, groups: str, kind: str, level: float, random_seed=None):
    """Posterior summaries or draws of predictions of a Bayesian fit (see the module docstring)."""
    from ..bayes.predictive_data import linear_predictor_draws, seeded_rng

    check_options(groups, kind, level)
    rows = prediction_rows(fit.design, newdata)
    rng = seeded_rng(fit, random_seed, 3)
    eta = linear_predictor_draws(fit, rows, groups, new_effects=kind != "mean", rng=rng)
    if kind != "mean":
        eta += level1_sd_draws(fit, newdata) * rng.standard_normal(eta.shape)
    if kind == "draws":
        beta = fit.draws("beta")
        coords = {"chain": beta.chain.values, "draw": beta.draw.values, "obs": np.asarray(rows.index)}
        return xr.DataArray(eta, dims=("chain", "draw", "obs"), name=fit.design.outcome_name, coords=coords)
    flat = eta.reshape(-1, rows.n)
    lower, upper = equal_tailed_interval(flat, level)
    return pd.DataFrame({"estimate": flat.mean(0), "se": flat.std(0, ddof=1), "lower": lower, "upper": upper,
                         "new_groups": rows.new_groups()}, index=rows.index)


# --- fitted values and residuals (both engines) ---------------------------------------------------------

def residuals(fit, level: int = 1, factor: str | None = None):
    """Level 1: y - fitted (a Series over the analysed rows). Level 2: each group's estimated effects u_j
    (empirical Bayes modes for REML / ML, posterior means for Bayes; groups x coefficients of ``factor``)."""
    if isinstance(level, bool) or level not in (1, 2):
        raise OptionError(f"level={level!r}: use 1 (observation residuals y - fitted) or 2 (the groups' estimated "
                          "effects u_j, R&B's empirical-Bayes residuals).")
    if level == 2:
        name = fit.factor_name(factor)
        f = fit.design.factor(name)
        u = wide(fit.random_effects(name)).to_numpy()
        return pd.DataFrame(u, index=f.levels, columns=list(f.coef_names))
    if factor is not None:
        raise OptionError("factor= applies to level=2 residuals (the group effects of one grouping factor).")
    fitted = fit.fitted()
    return pd.Series(fit.design.y - fitted.to_numpy(), index=fitted.index, name="residual")
