"""Checks of a fitted model's assumptions (Raudenbush & Bryk 2002, ch. 9), for REML / ML and Bayesian fits.

Every function reads a fit through its public attributes (``design``, ``fixed_effects``, ``tau``, ``sigma2``,
``fitted()``) and uses the point estimates (posterior means for Bayes, as plug-in values):

- :func:`level1_homogeneity`: the test H of equal level-1 variances across groups (eq. 9.5-9.6);
- :func:`eb_residuals` and :func:`mahalanobis`: the EB level-2 residuals standardised by their marginal
  variance, and each group's Mahalanobis distance referred to chi-square(q) (ch. 9, "Normality", note 2);
- :func:`level1_residuals`: level-1 residuals against fitted values;
- :func:`group_influence`: Cook's distance of each group on gamma (Christensen, Pearson & Johnson 1992);
- :func:`diagnostics` runs them all, :func:`diagnostics_report` says in words what they show.

Level-2 algebra for one grouping factor, group j, with V_j = sigma^2 I + Z_j T Z_j' and by Woodbury
a'V_j^-1 b = [a'b - (a'Z) K_j (Z'b)] / sigma^2, K_j = (sigma^2 I + T Z_j'Z_j)^-1 T:
A = sum_j X_j'V_j^-1 X_j (cov(gamma) = A^-1), e_j = y_j - X_j gamma, u_j = T Z_j'V_j^-1 e_j (the EB residual),
Var(u_j) = T [Z_j'V_j^-1 Z_j - Z_j'V_j^-1 X_j A^-1 X_j'V_j^-1 Z_j] T. When Z_j has full rank this is
Lambda_j (Delta_j - Var(W_j gamma)) Lambda_j', so u_j' Var(u_j)^-1 u_j equals the book's distance of the OLS
residual with V_j = sigma^2 (X_j'X_j)^-1 + T - Var(W_j gamma).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..design.design import group_sums
from ..errors import OptionError, RowsUnavailableError
from .hlm_statistics import check_per_group_statistic

MIN_GROUP_SIZE = 10  # R&B 2002, ch. 9: the H test is appropriate for normal data with n_j >= 10
RELATIVE_RANK_TOL = 1e-10  # eigenvalues below this share of the largest count as zero


# --- what each function needs -------------------------------------------------------------------------------

def _check_fit(fit, what: str) -> None:
    design = fit.design
    if not design.rows_available:
        raise RowsUnavailableError(
            f"{what} needs the individual rows, which a design built from aggregates (Dask input) does not keep. "
            "Fit the model from a pandas DataFrame to run the diagnostics.")
    if design.known_variance is not None:
        raise OptionError(
            f"{what} checks the level-1 (within-group) model, but this model's level-1 variances are known "
            "(a meta-analysis). Use the homogeneity test of the meta-analysis (R&B eq. 7.16) instead.")
    if design.residual is not None:
        raise OptionError(
            f"{what} assumes one level-1 variance sigma^2 with independent rows; this model has a level-1 error "
            "structure (varIdent, log-linear variance or AR(1)). Fit the model without it to run the R&B ch. 9 "
            "diagnostics, or compare the two fits with bh.deviance_test.")
    if fit.sigma2 is None:
        raise OptionError(f"{what} needs the fit's level-1 variance sigma^2, which this fit does not report.")


def _single_factor(fit, factor: str | None, what: str) -> str:
    design = fit.design
    name = design.factors[0].name if factor is None else design.factor(factor).name
    if len(design.factors) != 1:
        raise OptionError(
            f"{what} is implemented for models with one grouping factor (two levels); this model has "
            f"{', '.join(repr(f.name) for f in design.factors)}. Its EB residuals for {name!r} are in "
            f"fit.random_effects({name!r}); for a two-level check, fit the model with '(... | {name})' alone.")
    return name


@dataclass(frozen=True)
class _GroupAlgebra:
    """The per-group GLS quantities of a one-factor fit at its point estimates (module docstring)."""

    A: np.ndarray  # (p, p) sum_j X_j'V_j^-1 X_j
    XVX: np.ndarray  # (J, p, p) X_j'V_j^-1 X_j
    XVe: np.ndarray  # (J, p) X_j'V_j^-1 e_j
    ZVZ: np.ndarray  # (J, q, q)
    ZVX: np.ndarray  # (J, q, p)
    ZVe: np.ndarray  # (J, q)
    T: np.ndarray  # (q, q)

    @classmethod
    def of(cls, fit, factor: str) -> _GroupAlgebra:
        design = fit.design
        f = design.factor(factor)
        sigma2 = float(fit.sigma2)
        T = fit.tau[f.name].reindex(index=list(f.coef_names), columns=list(f.coef_names)).to_numpy(dtype=float)
        e = design.y - design.X @ fit.gamma
        J = f.n_groups
        G = group_sums(f.codes, f.Z, f.Z, J)
        ZX = group_sums(f.codes, f.Z, design.X, J)
        Ze = group_sums(f.codes, f.Z, e[:, None], J)[:, :, 0]
        XX = group_sums(f.codes, design.X, design.X, J)
        Xe = group_sums(f.codes, design.X, e[:, None], J)[:, :, 0]
        K = np.linalg.solve(sigma2 * np.eye(f.n_coef) + T @ G, np.broadcast_to(T, G.shape))
        KZX = K @ ZX
        XVX = (XX - np.swapaxes(ZX, 1, 2) @ KZX) / sigma2
        XVe = (Xe - np.einsum("jqp,jq->jp", KZX, Ze)) / sigma2
        ZVZ = (G - G @ K @ G) / sigma2
        ZVX = (ZX - G @ KZX) / sigma2
        ZVe = (Ze - np.einsum("jab,jb->ja", G @ K, Ze)) / sigma2
        return cls(XVX.sum(axis=0), XVX, XVe, ZVZ, ZVX, ZVe, T)

    def residuals(self) -> np.ndarray:
        """EB residuals u_j = T Z_j'V_j^-1 e_j, (J, q)."""
        return self.ZVe @ self.T

    def residual_covariance(self) -> np.ndarray:
        """Marginal covariance of the EB residuals, Var(u_j) (J, q, q), gamma's estimation included."""
        inner = self.ZVZ - self.ZVX @ np.linalg.solve(self.A, np.swapaxes(self.ZVX, 1, 2))
        return self.T @ inner @ self.T


# --- H: homogeneity of the level-1 variance ---------------------------------------------------------------

@dataclass(frozen=True)
class HomogeneityTest:
    """R&B eq. 9.5-9.6: H, its chi-square df and p, and each group's dispersion d_j (``groups``)."""

    statistic: float
    df: int
    p: float
    groups: pd.DataFrame  # per group: n, f (residual df), sd (S_j), d; used (bool), reason when not used
    min_n: int

    def __str__(self) -> str:
        left = int((~self.groups["used"]).sum())
        note = f"; {left} group(s) left out (fewer than {self.min_n} rows or no residual df)" if left else ""
        return f"H = {self.statistic:.2f}, df = {self.df}, p = {self.p:.3g} ({self.df + 1} groups{note})"


def level1_homogeneity(fit, factor: str | None = None, min_n: int = MIN_GROUP_SIZE) -> HomogeneityTest:
    """Test of equal level-1 variances across the groups of ``factor`` (R&B 2002, eq. 9.5-9.6).

    S_j is the residual SD of group j's own OLS regression of the outcome on every level-1 column of the model
    (R&B eq. 3.22; level-2 columns are constant within a group and drop out), with f_j = n_j - rank residual df:

        d_j = [ln S_j - sum_j f_j ln S_j / sum_j f_j] / (1 / (2 f_j))^(1/2),   H = sum_j d_j^2 ~ chi2(J' - 1)

    over the J' groups with at least ``min_n`` rows (the book: valid for normal data and n_j >= 10), a regression
    of full rank and S_j > 0. Large H: the level-1 variance differs between groups -- or the data have heavy tails,
    an omitted level-1 predictor or a slope wrongly fixed (R&B ch. 9 lists these causes).
    """
    what = "The level-1 homogeneity test (R&B eq. 9.6)"
    _check_fit(fit, what)
    if isinstance(min_n, bool) or not isinstance(min_n, int | np.integer) or min_n < 2:
        raise OptionError(f"min_n={min_n!r}: give the smallest group size to include as a whole number >= 2 "
                          f"(the book's rule is {MIN_GROUP_SIZE}).")
    design = fit.design
    name = design.factors[0].name if factor is None else design.factor(factor).name
    if check_per_group_statistic(design, name, what) == "outer":
        raise OptionError(
            f"{what} compares the residual variance within groups; the rows of a {name!r} group are correlated "
            f"through the groups nested in it. Test the innermost factor ({design.chain[0].name!r}) instead.")
    f = design.factor(name)
    columns = np.column_stack([design.X, f.Z])
    order = np.argsort(f.codes, kind="stable")
    bounds = np.searchsorted(f.codes[order], np.arange(f.n_groups + 1))
    ranks = np.zeros(f.n_groups, dtype=int)
    rss = np.full(f.n_groups, np.nan)
    for j in range(f.n_groups):
        rows = order[bounds[j]:bounds[j + 1]]
        Xj, yj = columns[rows], design.y[rows]
        coef, _, rank, singular = np.linalg.lstsq(Xj, yj, rcond=None)
        ranks[j] = rank if len(singular) == 0 else int(np.sum(singular > RELATIVE_RANK_TOL * singular[0]))
        rss[j] = float(np.sum((yj - Xj @ coef) ** 2))
    n = f.group_sizes
    full_rank = ranks.max()
    resid_df = n - ranks
    reason = np.full(f.n_groups, "", dtype=object)
    reason[n < min_n] = f"fewer than {min_n} rows"
    reason[(reason == "") & (ranks < full_rank)] = "a level-1 predictor does not vary in this group"
    reason[(reason == "") & (resid_df < 1)] = "no residual degrees of freedom"
    sd = np.sqrt(rss / np.maximum(resid_df, 1))
    reason[(reason == "") & ~(sd > 0)] = "the regression fits the group exactly (S_j = 0)"
    used = reason == ""
    if used.sum() < 2:
        raise OptionError(
            f"{what} needs at least 2 groups with {min_n} or more rows and a full-rank level-1 regression; "
            f"{int(used.sum())} of {f.n_groups} {name!r} groups qualify. Lower min_n (at the cost of the "
            "chi-square approximation) or test the variances with a likelihood-ratio test of a heterogeneous model.")
    fj, log_sd = resid_df[used].astype(float), np.log(sd[used])
    d = np.full(f.n_groups, np.nan)
    d[used] = (log_sd - fj @ log_sd / fj.sum()) / np.sqrt(1.0 / (2.0 * fj))
    H = float(np.sum(d[used] ** 2))
    df = int(used.sum()) - 1
    groups = pd.DataFrame({"n": n, "f": resid_df, "sd": np.where(resid_df >= 1, sd, np.nan), "d": d,
                           "used": used, "reason": reason}, index=f.levels)
    return HomogeneityTest(H, df, float(stats.chi2.sf(H, df)), groups, int(min_n))


# --- level 2: EB residuals and Mahalanobis distances --------------------------------------------------------

def eb_residuals(fit, factor: str | None = None) -> pd.DataFrame:
    """Each group's EB residual u_qj with its marginal SD sqrt(Var(u_j)_qq) and the standardised residual
    u_qj / sd, which is N(0, 1) under the model (R&B ch. 9: normal probability plots of standardised EB
    residuals). Index (group, coefficient); groups whose residual has no variance get NaN."""
    what = "The EB residual check (R&B ch. 9)"
    _check_fit(fit, what)
    name = _single_factor(fit, factor, what)
    f = fit.design.factor(name)
    algebra = _GroupAlgebra.of(fit, name)
    u = algebra.residuals()
    sd = np.sqrt(np.maximum(np.diagonal(algebra.residual_covariance(), axis1=1, axis2=2), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        standardised = np.where(sd > 0, u / np.where(sd > 0, sd, 1.0), np.nan)
    index = pd.MultiIndex.from_product([f.levels, list(f.coef_names)], names=[name, "term"])
    return pd.DataFrame({"estimate": u.ravel(), "sd": sd.ravel(), "standardised": standardised.ravel(),
                         "n": np.repeat(f.group_sizes, f.n_coef)}, index=index)


def mahalanobis(fit, factor: str | None = None) -> pd.DataFrame:
    """Mahalanobis distance of each group's EB residuals, d_j = u_j' Var(u_j)^-1 u_j (R&B ch. 9, note 2).

    Under the model d_j ~ chi2(q) (q random coefficients; the rank of Var(u_j) when it is singular, e.g. a
    variance at 0). Columns: n, distance, df, p (upper chi-square tail), expected (the chi-square quantile at
    the group's plotting position (rank - 0.5) / J, for the Q-Q plot: points far above the line are outlying
    groups, a bend away from it says the random effects are not normal). Sorted as the groups are.
    """
    what = "The Mahalanobis distances (R&B ch. 9)"
    _check_fit(fit, what)
    name = _single_factor(fit, factor, what)
    f = fit.design.factor(name)
    algebra = _GroupAlgebra.of(fit, name)
    u = algebra.residuals()
    cov = algebra.residual_covariance()
    distance = np.full(f.n_groups, np.nan)
    df = np.zeros(f.n_groups, dtype=int)
    for j in range(f.n_groups):
        values, vectors = np.linalg.eigh(cov[j])
        keep = values > RELATIVE_RANK_TOL * max(values[-1], 0.0)
        if values[-1] > 0 and keep.any():
            z = vectors[:, keep].T @ u[j]
            distance[j] = float(np.sum(z ** 2 / values[keep]))
            df[j] = int(keep.sum())
    table = pd.DataFrame({"n": f.group_sizes, "distance": distance, "df": df}, index=f.levels)
    table.index.name = name
    ok = df > 0
    table["p"] = np.where(ok, stats.chi2.sf(distance, np.maximum(df, 1)), np.nan)
    ranks = pd.Series(distance).rank(method="first").to_numpy()
    table["expected"] = np.where(ok, stats.chi2.ppf((ranks - 0.5) / ok.sum(), np.maximum(df, 1)), np.nan)
    return table


# --- level 1 ------------------------------------------------------------------------------------------------

def level1_residuals(fit) -> pd.DataFrame:
    """Per analysed row: fitted x'gamma + sum over factors of z'u_j (each group at its EB residuals, from
    ``fit.random_effects``; posterior means for Bayes), residual y - fitted, and the standardised residual
    residual / sigma (lme4's Pearson residual). Index: the rows' labels."""
    _check_fit(fit, "The level-1 residual check")
    design = fit.design
    fitted = design.X @ fit.gamma
    for f in design.factors:
        u = fit.random_effects(f.name)["estimate"].unstack("term")
        u = u.reindex(index=f.levels, columns=list(f.coef_names)).to_numpy(dtype=float)
        fitted = fitted + np.einsum("nq,nq->n", f.Z, u[f.codes])
    residual = design.y - fitted
    return pd.DataFrame({"fitted": fitted, "residual": residual,
                         "standardised": residual / np.sqrt(float(fit.sigma2))},
                        index=design.row_labels)


# --- influence of each group on gamma -----------------------------------------------------------------------

def group_influence(fit, factor: str | None = None, method: str = "one-step") -> pd.DataFrame:
    """Cook's distance of each group on the fixed effects, D_j = (g - g_(j))' cov(g)^-1 (g - g_(j)) / p
    (Christensen, Pearson & Johnson 1992, for mixed models; g = gamma-hat, g_(j) without group j).

    ``method="one-step"`` (default): g - g_(j) = (A - X_j'V_j^-1 X_j)^-1 X_j'V_j^-1 e_j, the exact GLS estimate
    without group j with the variance components held at the full-data values -- no refitting.
    ``method="refit"``: each g_(j) from a full REML / ML refit without group j (variance components
    re-estimated; J refits, warm-started at the fit's estimates). Columns: n, cooks_distance and the change in
    each fixed effect, g - g_(j) (a positive value: the group pulls that effect up). NaN when the other groups
    cannot estimate gamma (the group holds every row of some fixed-effect column).
    """
    what = "Cook's distance per group"
    _check_fit(fit, what)
    name = _single_factor(fit, factor, what)
    if method not in ("one-step", "refit"):
        raise OptionError(f"method={method!r}: choose 'one-step' (exact deletion with the variance components "
                          "held fixed, no refits) or 'refit' (one REML / ML refit per group).")
    design = fit.design
    f = design.factor(name)
    algebra = _GroupAlgebra.of(fit, name)
    gamma = fit.gamma
    change = np.full((f.n_groups, design.n_fixed), np.nan)
    if method == "one-step":
        for j in range(f.n_groups):
            rest = algebra.A - algebra.XVX[j]
            if np.linalg.matrix_rank(rest) == design.n_fixed:
                change[j] = np.linalg.solve(rest, algebra.XVe[j])
    else:
        if fit.method not in ("reml", "ml"):
            raise OptionError(f"method='refit' refits by REML / ML; this is a {fit.method!r} fit. "
                              "Use method='one-step'.")
        for j in range(f.n_groups):
            smaller = _without_group(design, f, j)
            if smaller is not None:
                change[j] = gamma - _refit_gamma(smaller, fit)
    cooks = np.einsum("jp,pq,jq->j", change, algebra.A, change) / design.n_fixed
    table = pd.DataFrame(change, index=f.levels, columns=[f"change {c}" for c in design.fixed_names])
    table.insert(0, "cooks_distance", cooks)
    table.insert(0, "n", f.group_sizes)
    table.index.name = name
    table.attrs["method"] = method
    return table


def _without_group(design, factor, j: int):
    """The design without group j's rows (same columns and centring), or None if a fixed column is then 0."""
    keep = factor.codes != j
    X = design.X[keep]
    if np.linalg.matrix_rank(X) < design.n_fixed:
        return None
    codes = factor.codes[keep]
    smaller = dataclasses.replace(factor, codes=codes - (codes > j), levels=factor.levels.delete(j),
                                  Z=factor.Z[keep])
    return dataclasses.replace(design, y=design.y[keep], X=X, factors=(smaller,), row_labels=design.row_labels[keep])


def _refit_gamma(design, fit) -> np.ndarray:
    import warnings

    from .likelihood_fit import fit_likelihood

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = fit_likelihood(design, fit.method, start=fit.theta.to_numpy())
    return refit.gamma


# --- all of them, and what they show ---------------------------------------------------------------------

@dataclass(frozen=True)
class Diagnostics:
    """The ch. 9 checks of one fit; a check that does not apply to the model is None, with the reason in
    ``skipped``."""

    homogeneity: HomogeneityTest | None
    eb_residuals: pd.DataFrame | None
    mahalanobis: pd.DataFrame | None
    level1: pd.DataFrame | None
    influence: pd.DataFrame | None
    factor: str
    skipped: dict[str, str]

    def report(self) -> DiagnosticsReport:
        return DiagnosticsReport(_describe(self))


class DiagnosticsReport(str):
    """Plain-words account of the diagnostics (a string; shown as text in notebooks too)."""

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return str(self)


def diagnostics(fit, factor: str | None = None) -> Diagnostics:
    """Run every check that applies to ``fit`` (module docstring); those that do not are named in ``skipped``."""
    _check_fit(fit, "The R&B ch. 9 diagnostics")
    name = fit.design.factors[0].name if factor is None else fit.design.factor(factor).name
    skipped: dict[str, str] = {}

    def attempt(label, run):
        try:
            return run()
        except OptionError as error:
            skipped[label] = str(error)
            return None

    return Diagnostics(
        homogeneity=attempt("homogeneity", lambda: level1_homogeneity(fit, name)),
        eb_residuals=attempt("eb_residuals", lambda: eb_residuals(fit, name)),
        mahalanobis=attempt("mahalanobis", lambda: mahalanobis(fit, name)),
        level1=attempt("level1", lambda: level1_residuals(fit)),
        influence=attempt("influence", lambda: group_influence(fit, name)),
        factor=name, skipped=skipped)


def diagnostics_report(fit, factor: str | None = None) -> DiagnosticsReport:
    """:func:`diagnostics` told in words: what each check found and what to look at next."""
    return diagnostics(fit, factor).report()


def _names(index, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in list(index)[:limit])
    return shown + (f" and {len(index) - limit} more" if len(index) > limit else "")


def _describe(d: Diagnostics) -> str:
    g = d.factor
    parts = [f"Diagnostics of the fitted model (Raudenbush & Bryk 2002, ch. 9), groups of {g!r}."]
    h = d.homogeneity
    if h is not None:
        text = f"Level-1 variance: {h}. "
        if h.p < 0.05:
            extreme = h.groups.loc[h.groups["used"], "d"].abs().sort_values(ascending=False)
            text += ("The residual spread differs between groups more than chance explains. Before modelling the "
                     "variance, look for its causes (R&B ch. 9): an omitted level-1 predictor, a slope wrongly "
                     "treated as fixed, bad data in a few groups, or heavy-tailed data. Groups with the most "
                     f"extreme dispersion d_j: {_names(extreme.index[:5])}.")
        else:
            text += "No evidence that the level-1 variance differs between groups."
        parts.append(text)
    m = d.mahalanobis
    if m is not None:
        ok = m.dropna(subset=["distance"])
        q = int(ok["df"].max()) if len(ok) else 0
        cut = 0.05 / max(len(ok), 1)
        outlying = ok[ok["p"] < cut].sort_values("p")
        text = (f"Level-2 residuals: the Mahalanobis distances of the {len(ok)} groups' EB residuals average "
                f"{ok['distance'].mean():.2f} (chi-square({q}) expects {q}). ")
        if len(outlying):
            text += (f"{len(outlying)} group(s) lie beyond the Bonferroni cut p < {cut:.2g}: "
                     f"{_names(outlying.index)}; check their data and whether a level-2 predictor explains them.")
        else:
            text += "No group is an outlier at the Bonferroni cut (p < 0.05 / J)."
        if len(ok) >= 10:
            rho = float(np.corrcoef(np.sort(ok["distance"]), np.sort(ok["expected"]))[0, 1])
            text += (f" The Q-Q correlation of the distances with the chi-square quantiles is {rho:.3f}"
                     + (" -- a clear bend: the random effects look non-normal (heavy tails or skew)."
                        if rho < 0.95 else "."))
        parts.append(text)
    r = d.level1
    if r is not None:
        big = float(np.mean(np.abs(r["standardised"]) > 3))
        rho, p = stats.spearmanr(r["fitted"], np.abs(r["standardised"]))
        tails = "."
        if big > 0.01:
            tails = "; the tails are heavier than normal."
        elif big < 0.001 and len(r) >= 1000:
            tails = "; fewer than normal: light tails, as a bounded score has."
        text = (f"Level-1 residuals: {100 * big:.2f}% of rows lie beyond 3 SD (a normal distribution puts 0.27% "
                f"there){tails}")
        if p < 0.05 and abs(rho) >= 0.1:
            text += (f" The spread of the residuals {'grows' if rho > 0 else 'shrinks'} with the fitted value "
                     f"(Spearman correlation of |residual| and fitted {rho:.2f}): consider a transformation of "
                     "the outcome or a level-1 variance model.")
        else:
            text += f" Their spread does not change materially with the fitted value (Spearman {rho:.2f})."
        parts.append(text)
    c = d.influence
    if c is not None:
        cut = 4.0 / len(c)
        top = c["cooks_distance"].dropna().sort_values(ascending=False)
        strong = top[top > cut]
        text = (f"Influence on the fixed effects (Cook's distance, variance components held fixed): the largest is "
                f"{top.iloc[0]:.3g} ({g} {top.index[0]}). ")
        text += (f"{len(strong)} group(s) exceed the usual cut 4/J = {cut:.3g}: {_names(strong.index)}; refit "
                 "without them to see whether a conclusion depends on them."
                 if len(strong) else f"No group exceeds the usual cut 4/J = {cut:.3g}.")
        parts.append(text)
    for label, reason in d.skipped.items():
        parts.append(f"Not run ({label}): {reason}")
    return "\n\n".join(parts)
