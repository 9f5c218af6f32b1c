"""Univariate random- and mixed-effects meta-analysis (V-known models, R&B 2002 ch. 7).

Each study j reports an effect estimate d_j with a known sampling variance V_j:

    level 1:  d_j = delta_j + e_j,                          e_j ~ N(0, V_j)           (R&B eq. 7.9)
    level 2:  delta_j = gamma_0 + sum_s gamma_s W_sj + u_j,   u_j ~ N(0, tau^2)        (R&B eq. 7.10)

``meta()`` builds this model as the HLM ``d ~ W + (1 | study)`` with ``known_variance`` (fitted by the
likelihood engine for REML / ML) or estimates tau^2 by the DerSimonian-Laird moment estimator, and returns a
:class:`MetaFit` with the statistics of Viechtbauer (2010, J. Stat. Softw. 36(3)): the Q test, I^2, H^2,
tau^2 and its SE, the prediction interval for a new study and the empirical-Bayes (BLUP) study effects.

Given tau^2, with W = diag(w_j), w_j = 1 / (V_j + tau^2), everything is weighted least squares:

    gamma = (X'WX)^{-1} X'W d,   Var(gamma) = (X'WX)^{-1},   P = W - W X (X'WX)^{-1} X'W.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, count

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import solve_triangular

from ..errors import DataError, FormulaError, OptionError, closest_names
from ..likelihood import BoundaryFitWarning
from ..model import HLM
from .univariate_bayes import MetaBayesFit

METHODS = ("reml", "ml", "dl", "bayes")
BOUNDARY_RTOL = 1e-6  # tau^2 below this fraction of the median V_j is reported as 0 (the boundary)


@dataclass(frozen=True)
class QTest:
    """A chi-square test: ``statistic`` on ``df`` degrees of freedom with upper-tail ``p``."""

    statistic: float
    df: int
    p: float

    def __str__(self) -> str:
        return f"Q = {self.statistic:.2f}, df = {self.df}, p = {self.p:.4g}"


def wald_table(beta: np.ndarray, vcov: pd.DataFrame) -> pd.DataFrame:
    """estimate, se, z, two-sided normal p and 95% CI of each coefficient, indexed like ``vcov``."""
    se = np.sqrt(np.diag(vcov.to_numpy()))
    z = beta / se
    crit = stats.norm.ppf(0.975)
    return pd.DataFrame({"estimate": beta, "se": se, "z": z, "p": 2 * stats.norm.sf(np.abs(z)),
                         "ci_lower": beta - crit * se, "ci_upper": beta + crit * se},
                        index=pd.Index(vcov.index, name="term"))


def check_magnitudes(y: np.ndarray, v: np.ndarray, effect: str, variance: str) -> None:
    """Refuse effects whose squares, or variances whose reciprocals, overflow double precision: every estimator
    here sums d_j^2 / V_j-type terms, which then become inf and the weighted least squares singular."""
    with np.errstate(over="ignore", divide="ignore"):
        if not np.isfinite(np.sum(y * y)):
            raise DataError(f"The effects {effect!r} reach {np.max(np.abs(y)):.3g}: their squares overflow double "
                            "precision. Rescale them (divide by a power of 10, and the variances by its square).")
        if not np.isfinite(np.sum(1.0 / v)) or not np.isfinite(np.sum(v)):
            raise DataError(f"The sampling variances {variance!r} range from {np.min(v):.3g} to {np.max(v):.3g}, "
                            "beyond double precision's range for their reciprocals or sums. Rescale the effects "
                            "and the variances together.")


MAX_CONDITION = 1e7  # X'WX is factorised: its condition number is about this squared, near 1 / machine epsilon


def check_moderators(X: np.ndarray, names) -> None:
    """Refuse moderators so nearly collinear that X'WX cannot be factorised, naming the columns involved: the
    condition number of the moderators, centred (with an intercept) and scaled to unit length so that neither
    units nor location count, above :data:`MAX_CONDITION`."""
    varying = np.flatnonzero(np.ptp(X, axis=0) > 0)
    if len(varying) < 2:
        return
    Z = X[:, varying]
    if len(varying) < X.shape[1]:  # a constant column: the intercept absorbs the moderators' means
        Z = Z - Z.mean(axis=0)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=0), 1e-300)
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    if s[-1] < s[0] / MAX_CONDITION:
        involved = [str(names[varying[k]]) for k in np.flatnonzero(np.abs(vt[-1]) > 1e-3)]
        raise DataError(f"The moderators {involved} are almost collinear (condition number {s[0] / s[-1]:.2g} "
                        f"after centring and scaling; above {MAX_CONDITION:.0e} the weighted least squares cannot "
                        "be solved in double precision). Remove one of them or combine them.")


def weighted_ls(y: np.ndarray, X: np.ndarray, w: np.ndarray):
    """Weighted least squares with weights ``w``: (estimate, its covariance (X'WX)^{-1}, the matrix P).

    Solved on X T, the moderators centred (given an intercept) and scaled to unit SD, then mapped back exactly
    (gamma = T gamma~, Var = T Var~ T'; P is unchanged): X'WX of uncentred moderators such as year and year^2 has
    a condition number past 1 / machine epsilon, and inverting it gave wrong estimates with no error."""
    beta_t, cov_t, P, T = transformed_wls(y, X, w)
    return T @ beta_t, T @ cov_t @ T.T, P


def transformed_wls(y: np.ndarray, X: np.ndarray, w: np.ndarray):
    """(gamma~, Var~, P, T) of :func:`weighted_ls` in the centred and scaled coordinates, by QR:
    gamma~ = R^{-1} Q'W^(1/2) y, Var~ = R^{-1} R^{-T}, P = W^(1/2) (I - QQ') W^(1/2)."""
    T = _centring_transform(X)
    root = np.sqrt(w)
    Q, R = np.linalg.qr(root[:, None] * (X @ T))  # W^(1/2) X T = QR: no squaring of its condition number
    R_inv = solve_triangular(R, np.eye(R.shape[0]))
    WQ = root[:, None] * Q
    return R_inv @ (Q.T @ (root * y)), R_inv @ R_inv.T, np.diag(w) - WQ @ WQ.T, T


def _centring_transform(X: np.ndarray) -> np.ndarray:
    """T with X T = the varying columns of X centred (when X has a constant column) and divided by their SDs."""
    p = X.shape[1]
    T = np.eye(p)
    spread = np.ptp(X, axis=0)
    constant = np.flatnonzero(spread == 0)
    for k in np.flatnonzero(spread > 0):
        if len(constant):
            T[constant[0], k] = -X[:, k].mean() / X[0, constant[0]]
        T[:, k] /= np.std(X[:, k])
    return T


def cochran_q(y: np.ndarray, X: np.ndarray, v: np.ndarray) -> QTest:
    """Test of residual heterogeneity, H0: tau^2 = 0.

    Q_E = sum_j (d_j - x_j' gamma_FE)^2 / V_j with gamma_FE the inverse-variance (fixed-effect) estimate,
    chi-square on k - p df under H0 (Cochran 1954; R&B 2002 eq. 7.16 calls it H; Hedges & Olkin 1985).
    """
    beta, _, _ = weighted_ls(y, X, 1.0 / v)
    resid = y - X @ beta
    q = float(np.sum(resid**2 / v))
    df = len(y) - X.shape[1]
    return QTest(q, df, float(stats.chi2.sf(q, df)))


def dersimonian_laird(y: np.ndarray, X: np.ndarray, v: np.ndarray) -> float:
    """The DerSimonian & Laird (1986) moment estimator, generalised to meta-regression (Raudenbush 2009):

        tau^2_DL = max(0, (Q_E - (k - p)) / tr(P_FE)),   P_FE = P at W = diag(1 / V_j).
    """
    q = cochran_q(y, X, v)
    _, _, P = weighted_ls(y, X, 1.0 / v)
    return max(0.0, (q.statistic - q.df) / float(np.trace(P)))


def meta(formula: str, data: pd.DataFrame, vi: str, *, study: str | None = None, method: str = "reml",
         missing: str = "drop", **bayes_options) -> MetaFit | MetaBayesFit:
    """Random-effects (``"yi ~ 1"``) or mixed-effects (``"yi ~ weeks_c"``) meta-analysis.

    Parameters
    ----------
    formula
        Effect sizes on the left, study-level moderators on the right (``"yi ~ 1"`` for none). The random
        study effect is added here: do not write a ``( | )`` term.
    data
        One row per study.
    vi
        Column of the known sampling variances V_j (the squared standard errors).
    study
        Column of study labels (one row each); omitted: the studies are numbered 1..k in row order.
    method
        ``"reml"`` (default), ``"ml"``, ``"dl"`` (DerSimonian-Laird, a moment estimator for comparison) or
        ``"bayes"``: full Bayes, returning a :class:`~bayeshlm.meta.univariate_bayes.MetaBayesFit` (posterior of
        tau^2 and I^2, posterior-predictive interval, study effects) that carries the REML fit beside it.
    missing
        ``"drop"`` (default) or ``"raise"`` for rows with missing values.
    bayes_options
        With ``method="bayes"``: the options of ``HLM.fit(method="bayes")`` (``draws``, ``tune``, ``chains``,
        ``random_seed``, ``priors`` (None or ``"flat"``, the book's ch. 13 priors), ``sampler``, ...).

    Notes
    -----
    Equivalent to ``bh.HLM("yi ~ weeks_c + (1 | study)", data, known_variance="vi").fit("reml")`` (available as
    ``fit.model`` and ``fit.likelihood_fit``), plus the meta-analytic summaries of :class:`MetaFit`.

    >>> import bayeshlm as bh
    >>> fit = bh.meta("yi ~ 1", bh.datasets.load("teacher_expectancy"), vi="vi", study="study")
    >>> round(fit.tau2, 4), round(fit.q_test.statistic, 2)
    (0.0188, 35.83)
    """
    if method not in METHODS:
        raise OptionError(f"Unknown method {method!r}.{closest_names(str(method), METHODS)} "
                          f"Use one of {', '.join(METHODS)}.")
    if bayes_options and method != "bayes":
        raise OptionError(f"Option {next(iter(bayes_options))!r} applies to method='bayes' only (or is unknown).")
    if not isinstance(formula, str) or formula.count("~") != 1:
        raise FormulaError(f"meta() takes a formula 'effect ~ moderators' with one '~' (e.g. 'yi ~ 1'); got "
                           f"{formula!r}.")
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"meta() takes a pandas DataFrame with one row per study; got {type(data).__name__}.")
    if "|" in formula:
        raise FormulaError(f"{formula!r}: meta() adds the random study effect (1 | study) itself; write only the "
                           "moderators. For several effects per study use bh.HLM with nested terms "
                           "(three-level) or bh.meta_mv (correlated outcomes).")
    if study is None:  # number the studies in a new column, whatever names the data already uses
        names = chain(("study", "study_id", "meta_study"), (f"study_{k}" for k in count(1)))
        study = next(name for name in names if name not in data.columns)
        data = data.assign(**{study: np.arange(1, len(data) + 1)})
    elif study not in data.columns:
        raise DataError(f"study={study!r} is not a column of the data.{closest_names(study, data.columns)}")
    counts = data[study].value_counts()
    if (counts > 1).any():
        repeated = counts[counts > 1]
        raise DataError(f"study {repeated.index.tolist()[0]!r} has {repeated.iloc[0]} rows ({len(repeated)} "
                        "studies have several): meta() fits one effect per study. For several effects per study use "
                        "bh.HLM('yi ~ 1 + (1 | study/effect)', data, known_variance=...) (three-level) or "
                        "bh.meta_mv (correlated outcomes with a known within-study covariance).")
    lhs, rhs = formula.split("~", 1)
    model = HLM(f"{lhs.strip()} ~ {rhs.strip()} + (1 | {study})", data, known_variance=vi, missing=missing)
    check_magnitudes(model.design.y, model.design.known_variance, lhs.strip(), vi)
    check_moderators(model.design.X, model.design.fixed_names)
    likelihood_fit = None
    if method == "dl":
        d = model.design
        tau2 = dersimonian_laird(d.y, d.X, d.known_variance)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BoundaryFitWarning)  # explained by MetaFit in meta-analytic terms
            likelihood_fit = model.fit("reml" if method == "bayes" else method)
        tau2 = float(likelihood_fit.tau[study].iloc[0, 0])
    fit = MetaFit(model, "reml" if method == "bayes" else method, tau2, likelihood_fit,
                  data.loc[model.design.row_labels, study])
    if method == "bayes":  # the REML fit's boundary message does not apply to the posterior
        return MetaBayesFit(fit, model.fit("bayes", **bayes_options))
    for message in fit.messages:
        warnings.warn(message, BoundaryFitWarning, stacklevel=2)
    return fit


class MetaFit:
    """A univariate meta-analysis fitted by REML, ML or DerSimonian-Laird (see :func:`meta`).

    Attributes: ``method``, ``model`` (the HLM), ``likelihood_fit`` (the engine's LikelihoodFit; None for DL),
    ``k`` studies, ``tau2`` (0 when at the boundary), ``se_tau2``, ``fixed_effects``, ``vcov``, ``q_test``,
    ``qm_test``, ``i2``, ``h2``, ``study_effects``, ``boundary``, ``messages``; ``prediction()``; ``summary()``.
    Tests and intervals are normal-theory (z), as metafor's defaults.
    """

    def __init__(self, model: HLM, method: str, tau2: float, likelihood_fit, study_labels: pd.Series):
        d = model.design
        self.model = model
        self.method = method
        self.likelihood_fit = likelihood_fit
        self.design = d
        self.k = d.n_obs
        self.p = d.n_fixed
        self._v = d.known_variance
        self._labels = pd.Index(study_labels.to_numpy(), name=study_labels.name)
        self.boundary = tau2 < BOUNDARY_RTOL * float(np.median(self._v))
        self.tau2 = 0.0 if self.boundary else float(tau2)
        self._w = 1.0 / (self._v + self.tau2)
        self._beta_t, self._cov_t, self._P, self._T = transformed_wls(d.y, d.X, self._w)
        self._beta, cov = self._T @ self._beta_t, self._T @ self._cov_t @ self._T.T
        names = list(d.fixed_names)
        self.vcov = pd.DataFrame(cov, index=names, columns=names)

    # --- fixed effects ---------------------------------------------------------------------------
    @cached_property
    def fixed_effects(self) -> pd.DataFrame:
        """estimate, se, z, p (two-sided normal) and 95% CI of each gamma (Viechtbauer 2010, eq. 8-9)."""
        return wald_table(self._beta, self.vcov)

    @cached_property
    def qm_test(self) -> QTest | None:
        """Omnibus Wald test of the moderators, Q_M = b' Var(b)^{-1} b over the coefficients other than the
        intercept (all of them without an intercept); None for an intercept-only model."""
        names = [n for n in self.design.fixed_names if n != "(Intercept)"]
        if not names:
            return None
        b = self.fixed_effects.loc[names, "estimate"].to_numpy()
        q = float(b @ np.linalg.solve(self.vcov.loc[names, names].to_numpy(), b))
        return QTest(q, len(names), float(stats.chi2.sf(q, len(names))))

    # --- heterogeneity ---------------------------------------------------------------------------
    @cached_property
    def q_test(self) -> QTest:
        """Cochran's Q test of residual heterogeneity (R&B eq. 7.16), see :func:`cochran_q`."""
        return cochran_q(self.design.y, self.design.X, self._v)

    @cached_property
    def typical_variance(self) -> float:
        """The 'typical' sampling variance s^2 = (k - p) / tr(P_FE) (Higgins & Thompson 2002, eq. 9;
        Viechtbauer 2010, eq. 6 with moderators)."""
        _, _, P = weighted_ls(self.design.y, self.design.X, 1.0 / self._v)
        return (self.k - self.p) / float(np.trace(P))

    @property
    def i2(self) -> float:
        """I^2 = 100 tau^2 / (tau^2 + s^2): percent of the total variance that is between-study variance."""
        return 100.0 * self.tau2 / (self.tau2 + self.typical_variance)

    @property
    def h2(self) -> float:
        """H^2 = (tau^2 + s^2) / s^2: total variance relative to sampling variance (1 = homogeneous)."""
        return (self.tau2 + self.typical_variance) / self.typical_variance

    @cached_property
    def se_tau2(self) -> float:
        """Standard error of tau^2 (Viechtbauer 2005, J. Educ. Behav. Stat. 30(3)):

        ML:   sqrt(2 / sum_j w_j^2)             REML: sqrt(2 / tr(P P))      (inverse Fisher information)
        DL:   sqrt(2(k - p) + 4 tau^2 tr(P_FE) + 2 tau^4 tr(P_FE P_FE)) / tr(P_FE)
        """
        if self.method == "ml":
            return float(np.sqrt(2.0 / np.sum(self._w**2)))
        if self.method == "reml":
            return float(np.sqrt(2.0 / np.sum(self._P * self._P)))
        _, _, P = weighted_ls(self.design.y, self.design.X, 1.0 / self._v)
        tr = float(np.trace(P))
        t2 = self.tau2
        return float(np.sqrt(2 * (self.k - self.p) + 4 * t2 * tr + 2 * t2**2 * np.sum(P * P)) / tr)

    # --- prediction and study effects ---------------------------------------------------------------
    def prediction(self, moderators: dict[str, float] | None = None, level: float = 0.95) -> pd.Series:
        """Mean effect at given moderator values with its confidence interval, and the prediction interval
        for the true effect delta of a new study there: x'gamma +/- z sqrt(x'Var(gamma)x + tau^2)
        (Riley et al. 2011, BMJ 342:d549, with z as metafor's predict()).

        ``moderators``: ``{fixed-effect name: value}`` for every coefficient but the intercept (omit for an
        intercept-only model), e.g. ``{"weeks_c": 0}``.
        """
        if isinstance(level, bool) or not isinstance(level, int | float | np.number) or not 0 < level < 1:
            raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1, e.g. 0.95.")
        names = list(self.design.fixed_names)
        given = dict(moderators or {})
        unknown = [n for n in given if n not in names or n == "(Intercept)"]
        if unknown:
            raise OptionError(f"moderators: {unknown[0]!r} is not a moderator of this model."
                              f"{closest_names(unknown[0], names)} Moderators: {names}.")
        missing = [n for n in names if n != "(Intercept)" and n not in given]
        if missing:
            raise OptionError(f"moderators: give a value for {missing} (e.g. prediction({{{missing[0]!r}: 0}})).")
        try:
            x = np.array([1.0 if n == "(Intercept)" else float(given[n]) for n in names])
        except (TypeError, ValueError):
            raise OptionError(f"moderators={given!r}: give a number for each moderator.") from None
        xt = self._T.T @ x  # x' gamma = (T'x)' gamma~: no cancellation between large uncentred terms
        estimate = float(xt @ self._beta_t)
        se = float(np.sqrt(xt @ self._cov_t @ xt))
        z = stats.norm.ppf(0.5 + level / 2)
        half_pi = z * np.sqrt(se**2 + self.tau2)
        return pd.Series({"estimate": estimate, "se": se, "ci_lower": estimate - z * se,
                          "ci_upper": estimate + z * se, "pi_lower": estimate - half_pi,
                          "pi_upper": estimate + half_pi})

    @cached_property
    def study_effects(self) -> pd.DataFrame:
        """Per study (data row order): the observed effect d_j with its SE and 95% CI, the shrinkage weight
        lambda_j = tau^2 / (tau^2 + V_j) (R&B eq. 7.12: the reliability of d_j), the fitted value x_j'gamma and the
        empirical-Bayes (BLUP) estimate of the true effect

            delta*_j = lambda_j d_j + (1 - lambda_j) x_j'gamma                                  (R&B eq. 7.12)
            Var*_j   = lambda_j V_j + (1 - lambda_j)^2 x_j' Var(gamma) x_j          (R&B eq. 3.52; metafor blup())

        with its 95% interval ``eb_lower``/``eb_upper`` (the book's Table 7.1 EB columns)."""
        d = self.design
        v = self._v
        lam = self.tau2 / (self.tau2 + v)
        Xt = d.X @ self._T  # the centred coordinates of weighted_ls, as in prediction()
        fitted = Xt @ self._beta_t
        fitted_var = np.einsum("ij,jk,ik->i", Xt, self._cov_t, Xt)
        eb = lam * d.y + (1 - lam) * fitted
        eb_se = np.sqrt(lam * v + (1 - lam) ** 2 * fitted_var)
        z = stats.norm.ppf(0.975)
        se = np.sqrt(v)
        return pd.DataFrame({"effect": d.y, "se": se, "ci_lower": d.y - z * se, "ci_upper": d.y + z * se,
                             "shrinkage": lam, "fitted": fitted, "eb": eb, "eb_se": eb_se,
                             "eb_lower": eb - z * eb_se, "eb_upper": eb + z * eb_se}, index=self._labels)

    def forest_rows(self) -> tuple[pd.DataFrame, str, float, float]:
        """What :func:`bayeshlm.plots.forest` draws: the per-study table (effect, se, ci_lower/upper, eb,
        eb_lower/upper, fitted), the label of the shrunken estimates, tau^2 and I^2."""
        return self.study_effects, "empirical Bayes estimate, 95% interval", self.tau2, self.i2

    # --- likelihood -------------------------------------------------------------------------------
    @property
    def loglik(self) -> float | None:
        """(Restricted) log-likelihood on lme4's scale; None for DL. metafor's REML value adds (1/2) log|X'X|."""
        return None if self.likelihood_fit is None else self.likelihood_fit.loglik

    # --- explanation --------------------------------------------------------------------------------
    @cached_property
    def messages(self) -> list[str]:
        """Plain-words explanation when tau^2 is estimated at its boundary 0 (also emitted as a warning)."""
        if not self.boundary:
            return []
        q = self.q_test
        moderators = [n for n in self.design.fixed_names if n != "(Intercept)"]
        how = {"reml": "REML", "ml": "ML", "dl": "the DerSimonian-Laird estimator"}[self.method]
        if moderators:
            what = (f"After the moderators ({', '.join(moderators)}), the {self.k} study effects vary no more around "
                    f"their fitted values than their sampling variances alone would produce ({q}). The moderators "
                    "account for all the between-study variation these data can detect, so each EB study effect "
                    "equals its fitted value (as in R&B 2002, Table 7.3).")
        else:
            what = (f"The {self.k} observed effects vary no more than their sampling variances alone would produce "
                    f"({q}; I^2 = 0%). The random-effects estimate therefore equals the fixed-effect "
                    "(inverse-variance) estimate, every EB study effect equals the pooled estimate and the "
                    "prediction interval equals the confidence interval.")
        return [f"tau^2 is estimated as 0 by {how}, the boundary of its range. {what} This does not show that the "
                "true effects are identical: the estimate is uncertain and the data cannot rule out a sizeable "
                f"heterogeneity (SE of tau^2 = {self.se_tau2:.4g}). A Bayesian fit "
                "(fit.model.fit('bayes')) averages over the values of tau^2 the data allow instead of setting it "
                "to 0."]

    def summary(self) -> str:
        """Plain-text summary in the order of a metafor / HLM meta-analysis printout."""
        fe = self.fixed_effects
        lines = [f"{'Mixed' if self.p > 1 else 'Random'}-effects meta-analysis ({self.method.upper()}), "
                 f"k = {self.k} studies",
                 f"tau^2 = {self.tau2:.4g} (SE {self.se_tau2:.4g}), tau = {np.sqrt(self.tau2):.4g}, "
                 f"I^2 = {self.i2:.2f}%, H^2 = {self.h2:.4g}",
                 f"Test for {'residual ' if self.p > 1 else ''}heterogeneity: {self.q_test}"]
        if self.qm_test is not None:
            lines.append(f"Test of moderators: {self.qm_test}")
        lines += ["", fe.to_string(float_format=lambda x: f"{x:.4f}")]
        if self.p == 1:
            pr = self.prediction()
            lines += ["", f"Prediction interval for a new study's true effect: ({pr['pi_lower']:.4f}, "
                          f"{pr['pi_upper']:.4f})"]
        if self.messages:
            lines += ["", *self.messages]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<MetaFit {self.method.upper()} {self.model.spec.formula()!r}: k = {self.k}, "
                f"tau^2 = {self.tau2:.4g}>")
