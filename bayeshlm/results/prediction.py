"""Predictions, fitted values and residuals for Gaussian models, both engines (``fit.predict``, ``fit.fitted``,
``fit.residuals``).

The linear predictor of row i is x_i' gamma + sum_f z_fi' u_f[j_f(i)] (R&B 2002, eq. 2.22 in combined form).
For new data, X and each factor's Z are built with the fit's own column coding (formulaic's model specs kept
in :class:`~bayeshlm.design.design.ColumnCoding`: categorical levels, contrasts, the grand means centred on).
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
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from formulaic.errors import DataMismatchWarning, FormulaicError
from scipy import stats

from ..design.build import factor_variables, float_predictors, group_labels
from ..errors import DataError, OptionError, closest_names, describe_rows
from .base import equal_tailed_interval
from .contract import wide

KINDS = ("mean", "interval", "draws")
DENSE_INVERSE_LIMIT = 6000  # group-effect columns up to which M^-1 is formed densely (6000^2 doubles: 288 MB)
GROUPS = ("conditional", "population")


@dataclass(frozen=True)
class PredictionRows:
    """The rows to predict: X (m, p), each factor's Z (m, q) and group codes (m,) into the fitted groups
    (-1: a group the fit did not see), the new groups' labels, and the rows' index labels."""

    X: np.ndarray
    Z: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    index: pd.Index

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def new_groups(self) -> np.ndarray:
        """Per row, the factors whose group is new, as text ('' when every group is known)."""
        names = [np.where(codes < 0, name, "") for name, codes in self.codes.items()]
        return np.array([", ".join(n for n in row if n) for row in zip(*names)], dtype=object) if names else \
            np.full(self.n, "", dtype=object)


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


def prediction_rows(design, newdata: pd.DataFrame | None) -> PredictionRows:
    """X, Z and group codes of the fitted rows (``newdata=None``) or of ``newdata``, coded as the fit was."""
    if not design.rows_available:
        raise OptionError("This model was built from aggregates (a Dask DataFrame), which keep no rows: there are "
                          "no fitted values, residuals or per-row predictions to compute. Build the model from a "
                          "pandas DataFrame to predict.")
    if newdata is None:
        labels = {f.name: np.asarray(f.levels)[f.codes] for f in design.factors}
        return PredictionRows(X=design.X, Z={f.name: f.Z for f in design.factors},
                              codes={f.name: f.codes for f in design.factors}, labels=labels,
                              index=design.row_labels)
    return _new_rows(design, newdata)


def _new_rows(design, newdata) -> PredictionRows:
    spec, coding = design.spec, design.coding
    if coding is None:
        raise OptionError("This fit keeps the numbers of its design but not how its columns were coded (it was "
                          "loaded from a file, or built from aggregates), so it cannot code new data. Rebuild the "
                          "model with bayeshlm.HLM and refit to predict for new data; fit.predict() without "
                          "newdata predicts the fitted rows.")
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame; got {type(newdata).__name__}.")
    if len(newdata) == 0:
        raise DataError("newdata is empty (0 rows): there is nothing to predict.")
    if spec.group_means or any(c.how == "group" for c in spec.centering):
        raise OptionError("This model centres columns on their group means (center='group' or group_means), which "
                          "new data cannot reproduce without their groups' other rows. Compute the centred and "
                          "group-mean columns in the data before fitting; then predict with those columns.")
    variables = set()
    for term in spec.fixed + tuple(t for r in spec.random for t in r.terms):
        for factor in term:
            variables |= factor_variables(factor)
    variables |= {c for r in spec.random for c in r.group_columns}
    absent = sorted(v for v in variables if v not in newdata.columns)
    if absent:
        hints = " ".join(f"{name!r} is missing.{closest_names(name, newdata.columns)}" for name in absent)
        raise DataError(f"newdata lacks columns the model uses: {hints} newdata has columns: "
                        f"{', '.join(map(str, newdata.columns))}.")
    used = sorted(variables)
    missing = newdata[used].isna()
    if missing.any(axis=None):
        rows = np.flatnonzero(missing.any(axis=1).to_numpy())
        columns = [c for c in used if missing[c].any()]
        raise DataError(f"newdata has missing values in {', '.join(map(repr, columns))} ({describe_rows(rows)}, "
                        "0-based positions): a prediction needs every predictor and group label. Fill them in or "
                        "drop those rows.")
    frame = newdata.copy()
    for column, mean in coding.grand_means.items():
        frame[column] = frame[column].astype(float) - mean
    numbers = float_predictors(frame, spec)
    X = _coded_matrix(coding.fixed, numbers, design.fixed_names, "fixed effects")
    Z, codes, labels = {}, {}, {}
    for f in design.factors:
        term = next(r for r in spec.random if r.group == f.name)
        Z[f.name] = _coded_matrix(coding.random[f.name], numbers, f.coef_names, f"random effects for {f.name!r}")
        labels[f.name] = group_labels(frame, term).astype(str).to_numpy()
        codes[f.name] = f.levels.get_indexer(labels[f.name])
    return PredictionRows(X=X, Z=Z, codes=codes, labels=labels, index=newdata.index)


def _coded_matrix(model_spec, numbers: pd.DataFrame, names, what: str) -> np.ndarray:
    """The model matrix of ``numbers`` by a fitted model spec; a category the fit did not see is refused (formulaic
    would code it as zeros with a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        try:
            matrix = model_spec.get_model_matrix(numbers, na_action="raise")
        except DataMismatchWarning:
            raise DataError(_unseen_levels(model_spec, numbers, what)) from None
        except (FormulaicError, ValueError, TypeError, NameError) as err:
            raise DataError(f"Cannot build the {what} for newdata: {str(err).splitlines()[0]}") from None
    values = matrix.to_numpy(dtype=float)
    if values.shape[1] != len(names):  # a safeguard: the fitted spec always gives the fitted columns
        raise DataError(f"newdata gives {values.shape[1]} columns for the {what}; the fit has {len(names)}.")
    return values


def _unseen_levels(model_spec, numbers: pd.DataFrame, what: str) -> str:
    problems = []
    for factor, (_, state) in model_spec.encoder_state.items():
        categories = state.get("categories") if isinstance(state, dict) else None
        if categories is None:
            continue
        for column in sorted(factor_variables(factor) & set(numbers.columns)):
            unseen = sorted({str(v) for v in numbers[column].unique() if v not in set(categories)})
            if unseen:
                problems.append(f"column {column!r} ({factor}) has {', '.join(map(repr, unseen))}, not among the "
                                f"fitted categories {', '.join(map(repr, map(str, categories)))}")
    detail = "; ".join(problems) or "a categorical predictor has a category the fit did not see"
    return (f"newdata cannot be coded like the fitted data ({what}): {detail}. The model has no coefficient for an "
            "unseen category; predict only rows whose categories were in the fitted data.")


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
                      f"'{fit.design.residual.structure.describe()}' are not implemented yet: se, lower and upper "
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
    r = design.residual
    return r is not None and r.strata is not None and r.C is None and r.structure.correlation is None


def _level1_variance(fit, newdata) -> np.ndarray:
    """Each row's level-1 variance (the fitted rows for ``newdata=None``): sigma^2, the known V_i, or the
    variance of the row's category (varIdent); other error structures are refused."""
    design = fit.design
    n = design.n_obs if newdata is None else len(newdata)
    if design.residual is not None and not _stratified_only(design):
        raise OptionError(f"kind='interval' for a model with level-1 errors '{design.residual.structure.describe()}' "
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

def linear_predictor_draws(fit, rows: PredictionRows, groups: str, new_effects: bool,
                           rng: np.random.Generator) -> np.ndarray:
    """(chain, draw, m) draws of x'gamma + sum_f z_f'u_f: known groups from the posterior draws of u; new groups
    at u = 0, or (``new_effects``) with u drawn from N(0, T) per posterior draw and new group label."""
    beta = fit.draws("beta").transpose("chain", "draw", "fixed").values
    eta = np.einsum("cdp,np->cdn", beta, rows.X)
    for f in fit.design.factors:
        codes, Z = rows.codes[f.name], rows.Z[f.name]
        known = (codes >= 0) if groups == "conditional" else np.zeros(rows.n, dtype=bool)
        if known.any():
            u = fit.draws(f"u_{f.name}").transpose("chain", "draw", f.name, f"{f.name}__coef").values
            rows_known, groups_known = np.flatnonzero(known), codes[known]
            for k in range(f.n_coef):  # one coefficient at a time: no (chain, draw, rows, q) temporary
                eta[..., rows_known] += u[:, :, groups_known, k] * Z[rows_known, k]
        if new_effects and not known.all():
            labels, which = np.unique(rows.labels[f.name][~known], return_inverse=True)
            L = covariance_cholesky(fit, f.name)
            noise = rng.standard_normal((*L.shape[:2], len(labels), L.shape[-1]))
            u_new = np.einsum("cdqr,cdjr->cdjq", L, noise)
            rows_new = np.flatnonzero(~known)
            for k in range(f.n_coef):
                eta[..., rows_new] += u_new[:, :, which, k] * Z[rows_new, k]
    return eta


def covariance_cholesky(fit, name: str) -> np.ndarray:
    """(chain, draw, q, q) lower Cholesky factors of the posterior draws of T_<name> (user units)."""
    T = fit.draws(f"T_{name}").values
    jitter = 1e-12 * np.trace(T, axis1=-2, axis2=-1)[..., None, None] * np.eye(T.shape[-1])
    return np.linalg.cholesky(T + jitter)


def level1_sd_draws(fit, newdata) -> np.ndarray:
    """(chain, draw, 1) or (chain, draw, m) draws of the level-1 SD of each row (independent errors only)."""
    design = fit.design
    if design.residual is not None:
        raise OptionError(f"Predictive draws for a model with level-1 errors '{design.residual.structure.describe()}' "
                          "are not implemented yet (each row's error variance and correlation would be needed); "
                          "kind='mean' works.")
    if design.known_variance is not None:
        if newdata is not None:
            raise OptionError("Predictive draws with newdata for a model with known level-1 variances: the new rows' "
                              "sampling variances are unknown. Use kind='mean'.")
        return np.sqrt(design.known_variance)[None, None, :]
    return fit.draws("sigma").transpose("chain", "draw").values[..., None]


def seeded_rng(fit, random_seed, stream: int) -> np.random.Generator:
    """``random_seed`` if given, else the fit's sampler seed with a stream number of its own (reproducible)."""
    if random_seed is not None:
        return np.random.default_rng(random_seed)
    seed = (getattr(fit, "sampler", None) or {}).get("seed")
    return np.random.default_rng(None if seed is None else [int(seed), stream])


def predict_bayes(fit, newdata, groups: str, kind: str, level: float, random_seed=None):
    """Posterior summaries or draws of predictions of a Bayesian fit (see the module docstring)."""
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
