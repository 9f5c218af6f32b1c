"""HLM-style statistics computed from a design and point estimates (gamma, T, sigma^2).

Engine-independent: likelihood fits pass their ML/REML estimates, Bayesian fits their posterior means
(or one draw at a time). Formulas are Raudenbush & Bryk (2002), chapters 3-4; equation numbers in each
docstring. The per-group OLS quantities (reliability, chi-square) need the level-1 regression within a group:
they cover models with one grouping factor and the innermost factor of a nested chain. An outer factor of a
nested chain gets the book's level-3 reliability (eq. 8.8, :func:`outer_reliability`); its chi-square and every
per-group statistic of crossed factors are refused with a reason (:func:`check_per_group_statistic`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..design import Design, GroupingFactor
from ..design.build import same_name_stem
from ..design.design import chain_parents, group_sums
from ..errors import OptionError, RowsUnavailableError


@dataclass(frozen=True)
class GroupOLS:
    """Per-group OLS of the level-1 random-coefficient columns (R&B 2002, eq. 3.22-3.24).

    ``usable`` marks groups whose Z_j'Z_j is of full rank with more rows than coefficients; ``estimates``,
    ``variances`` (the diagonal of sigma^2 (Z_j'Z_j)^-1) and ``predicted`` (the coefficients' fixed part,
    sum_s gamma_qs W_sj) are NaN elsewhere. ``n_predictors[q]`` is S_q, the number of level-2 predictors of
    coefficient q.
    """

    factor: GroupingFactor
    usable: np.ndarray  # (J,) bool
    estimates: np.ndarray  # (J, q)
    variances: np.ndarray  # (J, q)
    predicted: np.ndarray  # (J, q)
    n_predictors: np.ndarray  # (q,)


def group_ols(design: Design, gamma: np.ndarray, sigma2: float | None, factor: str | None = None) -> GroupOLS:
    """OLS coefficient estimates per group, their sampling variances and their predicted (fixed) part.

    Fixed-effect columns whose level-1 part is a random coefficient (``cses``, ``meanses:cses``) predict
    that coefficient; other fixed columns (level-1 covariates with fixed slopes) are subtracted from the
    outcome first, as HLM does. For V-known models sigma^2 = 1 and the rows are weighted by 1/V_j.
    """
    f = design.factors[0] if factor is None else design.factor(factor)
    cp = design.crossproducts(f)
    q = f.n_coef
    attached = _attached_columns(design, f)
    gamma = np.asarray(gamma, dtype=float)
    free = np.array([c not in attached for c in range(design.n_fixed)])
    # Z_j'(y_j - X_free,j gamma_free): fixed-slope level-1 covariates leave the outcome first
    zty = cp.Zty - cp.ZtX[:, :, free] @ gamma[free]
    scale = 1.0 if sigma2 is None else float(sigma2)
    usable = (cp.n > q) if design.known_variance is None else (cp.n >= q)
    usable &= np.linalg.matrix_rank(cp.ZtZ) == q
    estimates = np.full((f.n_groups, q), np.nan)
    variances = np.full((f.n_groups, q), np.nan)
    predicted = np.full((f.n_groups, q), np.nan)
    inverse = np.linalg.inv(cp.ZtZ[usable])
    estimates[usable] = np.einsum("jab,jb->ja", inverse, zty[usable])
    predicted[usable] = fixed_part(design, gamma, f)[usable]
    variances[usable] = scale * np.diagonal(inverse, axis1=1, axis2=2)
    n_predictors = np.array([sum(k == kk for kk, _ in attached.values()) - 1 for k in range(q)])
    return GroupOLS(f, usable, estimates, variances, predicted, n_predictors)


def fixed_part(design: Design, gamma: np.ndarray, factor: str | GroupingFactor | None = None) -> np.ndarray:
    """Each group's coefficients predicted by the fixed effects: sum_s gamma_qs W_sj (R&B 2002, eq. 2.22).

    Returns a (J, q) array for the factor's q random coefficients. A fixed column belongs to coefficient q
    when it equals Z_q times a variable constant within each group (the level-2 predictor W), tested on
    the data; fixed columns that belong to no random coefficient do not enter.
    """
    f = design.factors[0] if factor is None else (design.factor(factor) if isinstance(factor, str) else factor)
    out = np.zeros((f.n_groups, f.n_coef))
    for c, (k, w) in _attached_columns(design, f).items():
        out[:, k] += gamma[c] * w
    return out


def _attached_columns(design: Design, factor: GroupingFactor) -> dict[int, tuple[int, np.ndarray]]:
    """Fixed column -> (random coefficient it predicts, per-group value of its level-2 predictor W).

    A design built from aggregates carries this map, computed by the same test during its pass over the data.
    """
    if not design.rows_available:
        return design.level2[factor.name]
    out = {}
    codes = factor.codes
    for c in range(design.n_fixed):
        for k in range(factor.n_coef):
            z = factor.Z[:, k]
            nonzero = z != 0
            if np.any(design.X[~nonzero, c] != 0) or not same_name_stem(design.fixed_names[c],
                                                                         factor.coef_names[k]):
                continue
            ratio = pd.Series(design.X[nonzero, c] / z[nonzero]).groupby(codes[nonzero])
            spread = (ratio.max() - ratio.min()).max()
            if spread <= 1e-9 * (1 + ratio.max().abs().max()):
                w = ratio.mean()
                # a group without rows where Z_q != 0 (e.g. no urban women for an urban slope) still has the
                # coefficient; its W is the common value when W does not vary between groups (gamma_q0 alone)
                same = w.max() - w.min() <= 1e-9 * (1 + w.abs().max())
                out[c] = (k, w.reindex(range(factor.n_groups), fill_value=float(w.iloc[0]) if same else 0.0)
                          .to_numpy())
                break
    return out


def reliability(design: Design, tau: np.ndarray, ols: GroupOLS) -> pd.DataFrame:
    """lambda_qj = tau_qq / (tau_qq + v_qqj), v_qqj the OLS sampling variance (R&B 2002, eq. 3.42, 3.58).

    One row per usable group, one column per random coefficient; the average over groups (eq. 3.59) is
    ``.mean()``.
    """
    tau_diag = np.diag(np.asarray(tau, dtype=float))
    lam = tau_diag / (tau_diag + ols.variances[ols.usable])
    return pd.DataFrame(lam, index=ols.factor.levels[ols.usable], columns=list(ols.factor.coef_names))


def reliability_draws(tau_diag: np.ndarray, sigma2: np.ndarray | None, ols: GroupOLS,
                      chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Reliability per posterior draw (R&B 2002, eq. 3.42 evaluated at each draw of T and sigma^2).

    ``tau_diag`` (S, q) draws of tau_qq, ``sigma2`` (S,) draws (None for V-known models); ``ols`` must come
    from :func:`group_ols` with sigma^2 = 1, so its variances are [(Z_j'Z_j)^-1]_qq. Returns the per-draw
    average over groups (S, q) and the per-group posterior mean (J', q), computed in chunks of draws.
    """
    unit = ols.variances[ols.usable]  # (J', q)
    scale = np.ones(len(tau_diag)) if sigma2 is None else sigma2
    average = np.empty_like(tau_diag)
    per_group = np.zeros_like(unit)
    for start in range(0, len(tau_diag), chunk):
        t = tau_diag[start:start + chunk, None, :]
        lam = t / (t + scale[start:start + chunk, None, None] * unit[None])
        average[start:start + chunk] = lam.mean(axis=1)
        per_group += lam.sum(axis=0)
    return average, per_group / len(tau_diag)


def chi_square(ols: GroupOLS) -> pd.DataFrame:
    """Homogeneity test of each variance component (R&B 2002, eq. 3.103 and 4.5).

    chi2_q = sum_j (beta_hat_qj - sum_s gamma_qs W_sj)^2 / v_qqj over the J' groups with enough data,
    df = J' - S_q - 1, referred to chi-square(df).
    """
    u = ols.usable
    chi2 = np.nansum((ols.estimates[u] - ols.predicted[u]) ** 2 / ols.variances[u], axis=0)
    groups_used = int(u.sum())
    df = groups_used - ols.n_predictors - 1
    return pd.DataFrame({
        "chi2": chi2, "df": df, "p": stats.chi2.sf(chi2, df), "groups_used": groups_used,
        "groups": ols.factor.n_groups,
    }, index=pd.Index(ols.factor.coef_names, name="coefficient"))


def check_per_group_statistic(design: Design, factor: str, statistic: str) -> str:
    """Where ``factor`` sits, for the per-group statistics: 'innermost' (one factor, or the innermost of a nested
    chain: per-group OLS applies) or 'outer' (an enclosing factor of a nested chain). Crossed factors are refused:
    rows of one group share the other factor's effects, which per-group OLS would treat as independent noise.
    """
    chain = design.chain
    if len(design.factors) == 1 or (chain and chain[0].name == factor):
        return "innermost"
    if chain:
        return "outer"
    others = ", ".join(repr(f.name) for f in design.factors if f.name != factor)
    raise OptionError(
        f"{statistic} is not defined for {factor!r} here: it is crossed with {others}, so the rows of one "
        f"{factor!r} group share the effects of several {others} groups, and a per-group regression would treat "
        "those shared effects as independent level-1 noise (R&B 2002 give these statistics for nested models "
        "only). Use fit.variance_components (and its intervals) to judge the variance, a likelihood-ratio test "
        f"of the model without the '(... | {factor})' term to test it, and fit.group_effects({factor!r}) for "
        "each group's estimate and its uncertainty.")


def outer_reliability(design: Design, factor: str, taus: list[np.ndarray], sigma2: np.ndarray | None,
                      chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Reliability of each group's estimated coefficients for an outer factor of a nested chain.

    R&B (2002) eq. 8.8: lambda_beta_k = tau_beta / (tau_beta + [sum_j (tau_pi + sigma^2 / n_jk)^-1]^-1) for
    random intercepts, the precision of school k's mean being the sum of its classes' precisions. In general the
    error variance of group k's GLS coefficient estimate is [(Z_k' V_k^-1 Z_k)^-1]_qq, V_k = sigma^2 I (or the
    known variances) + the inner factors' Z T Z' on the group's rows, which reduces to eq. 8.8 there.

    ``taus[m]`` (S, q_m, q_m) holds S values (estimates, or posterior draws) of T for each factor of the chain
    up to and including ``factor``, innermost first; ``sigma2`` (S,) (None for V-known models). Returns the
    groups whose Z_k has full column rank (J,) bool and lambda for them (S, J', q).
    """
    chain = design.chain
    level = [f.name for f in chain].index(factor)
    if not design.rows_available:
        raise RowsUnavailableError(
            f"The reliability of {factor!r} (an enclosing level) needs the rows of each group, which a design "
            "built from aggregates (Dask input) does not keep. Fit from a pandas DataFrame to compute it.")
    if design.residual is not None:
        raise OptionError(
            f"The reliability of {factor!r} (an enclosing level, R&B eq. 8.8) is implemented for independent "
            "level-1 errors with one variance; this model has "
            f"{design.error_structure.describe()}. Use the reliability of the innermost factor, or fit "
            "the model without the level-1 error structure to compare.")
    outer = chain[level]
    usable = np.linalg.matrix_rank(group_sums(outer.codes, outer.Z, outer.Z, outer.n_groups)) == outer.n_coef
    n_values = len(taus[level])
    lam = np.empty((n_values, int(usable.sum()), outer.n_coef))
    for start in range(0, n_values, chunk):
        part = slice(start, start + chunk)
        precision = _outer_precision(design, level, [t[part] for t in taus],
                                     None if sigma2 is None else np.asarray(sigma2, dtype=float)[part])
        error = np.diagonal(np.linalg.inv(precision[:, usable]), axis1=-2, axis2=-1)
        tau_diag = np.diagonal(taus[level][part], axis1=-2, axis2=-1)[:, None, :]
        lam[part] = tau_diag / (tau_diag + error)
    return usable, lam


def _outer_precision(design: Design, level: int, taus: list[np.ndarray], sigma2: np.ndarray | None) -> np.ndarray:
    """Z_k' V_k^-1 Z_k (S, J, q, q) for every group k of chain factor ``level`` (see :func:`outer_reliability`).

    Starts from the level-1 cross-products per innermost group, Z' R^-1 Z with Z = [Z_0 ... Z_level]; each inner
    factor m is then integrated out by Woodbury, A'(R + Z_m T_m Z_m')^-1 B = A'R^-1 B - A'R^-1 Z_m
    (I + T_m Z_m'R^-1 Z_m)^-1 T_m Z_m'R^-1 B (valid for a singular T_m), and the result summed into the groups
    of the next factor up.
    """
    chain = design.chain[:level + 1]
    Z = np.hstack([f.Z for f in chain])
    w = design.weights
    cross = group_sums(chain[0].codes, Z if w is None else Z * w[:, None], Z, chain[0].n_groups)
    n_values = len(taus[0])
    scale = np.ones(n_values) if sigma2 is None else sigma2
    P = cross[None] / scale[:, None, None, None]
    for m, parent in enumerate(chain_parents(chain)):
        q = chain[m].n_coef
        a, b, c = P[..., :q, :q], P[..., :q, q:], P[..., q:, q:]
        T = taus[m][:, None]
        reduced = c - np.swapaxes(b, -1, -2) @ np.linalg.solve(np.eye(q) + T @ a, T @ b)
        P = np.zeros((n_values, chain[m + 1].n_groups) + reduced.shape[-2:])
        np.add.at(P, (slice(None), parent), reduced)
    return P


def plausible_values(gamma_q0: np.ndarray, tau: np.ndarray, names, level: float = 0.95) -> pd.DataFrame:
    """Range of group coefficients: gamma_q0 +/- z * sqrt(tau_qq) (R&B 2002, eq. 4.4, 4.19).

    gamma_q0 is the coefficient's value when its level-2 predictors are zero.
    """
    z = stats.norm.ppf(0.5 + level / 2)
    sd = np.sqrt(np.diag(np.asarray(tau, dtype=float)))
    return pd.DataFrame({"center": gamma_q0, "sd": sd, "lower": gamma_q0 - z * sd, "upper": gamma_q0 + z * sd},
                        index=pd.Index(list(names), name="coefficient"))


def proportion_explained(base: float, fitted: float) -> float:
    """(base - fitted) / base, for sigma^2 (eq. 4.20) or a tau_qq (eq. 4.12, 4.24)."""
    if base <= 0:
        raise OptionError("The base model's variance is zero; a proportion of it explained is undefined.")
    return (base - fitted) / base
