"""Multivariate meta-analysis with a known within-study covariance (R&B 2002 section 7.4, Table 7.6-7.7;
Berkey et al. 1998; Kalaian & Raudenbush 1996).

Study j reports m_j <= q correlated effects d_j (some studies report only some outcomes) with a known sampling
covariance V_j (not diagonal: the outcomes are measured on the same subjects):

    d_j = X_j gamma + Z_j b_j + e_j,    e_j ~ N(0, V_j),    b_j ~ N(0, T)  (T unstructured, q x q)

with Z_j selecting the rows of the outcomes study j reports. Marginally d_j ~ N(X_j gamma, Sigma_j),
Sigma_j = V_j + Z_j T Z_j'. With gamma profiled out (generalised least squares),

    -2 log L_ML   = sum_j [log|Sigma_j| + r_j' Sigma_j^{-1} r_j] + n log(2 pi),   r_j = d_j - X_j gamma(T)
    -2 log L_REML = -2 log L_ML + log|sum_j X_j' Sigma_j^{-1} X_j| - p log(2 pi)

(Harville 1977; Viechtbauer 2010 section 3.3; the same constants as the likelihood engine, lme4's scale: metafor's
REML log-likelihood adds (1/2) log|X'X|). T = L L' with L lower triangular is optimised without bounds (the
criterion is even in each column of L). Studies are batched by the number of effects they report, so the
per-study Cholesky factorisations and solves are stacked array operations.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import minimize

from ..errors import DataError, OptionError, closest_names, describe_rows
from ..likelihood import BoundaryFitWarning, ConvergenceWarning
from .univariate import BOUNDARY_RTOL, QTest, check_magnitudes, wald_table

if TYPE_CHECKING:  # the Bayesian module loads PyMC; it is imported when method='bayes' is asked for
    from .multivariate_bayes import MetaMVBayesFit

LOG_2PI = float(np.log(2.0 * np.pi))
METHODS = ("reml", "ml", "bayes")


def meta_mv(data: pd.DataFrame, yi: str, outcome: str, study: str, *, V: np.ndarray | Sequence[str] | None = None,
            vi: str | None = None, rho: float | None = None, mods: Sequence[str] = (), method: str = "reml",
            maxiter: int = 1000, **bayes_options) -> MetaMVFit | MetaMVBayesFit:
    """Multivariate random-effects meta-analysis: one mean per outcome (plus per-outcome moderator slopes) and
    an unstructured between-study covariance T of the outcomes' true effects.

    Parameters
    ----------
    data
        One row per reported effect (long format); rows of a study need not be adjacent.
    yi, outcome, study
        Columns of the effect estimates, the outcome labels and the study labels.
    V
        The known sampling covariance, either an (n, n) array in data row order (zero between studies), or a
        list of columns giving each row's covariances with the first, second, ... row of its study (the layout
        of metafor's ``dat.berkey1998``: ``V=["v1i", "v2i"]``).
    vi, rho
        Instead of ``V``: a column of sampling variances and one within-study correlation between the outcomes,
        Cov(d_qj, d_q'j) = rho sqrt(V_qj V_q'j) (R&B Table 7.6 with a common rho; Kalaian & Raudenbush 1996).
    mods
        Numeric study-level moderators; each gets its own slope for each outcome (``"AL:year"``).
    method
        ``"reml"`` (default), ``"ml"`` or ``"bayes"``: full Bayes (:mod:`bayeshlm.meta.multivariate_bayes`),
        returning a :class:`MetaMVBayesFit` that carries the REML fit beside it.
    bayes_options
        With ``method="bayes"``: ``draws``, ``tune``, ``chains``, ``random_seed``, ``priors`` (None for the
        weakly informative defaults, ``"flat"`` for the book's flat priors, or a dict), ``sampler``,
        ``target_accept``, ``progressbar`` (as for ``HLM.fit(method="bayes")``).

    >>> import bayeshlm as bh
    >>> fit = bh.meta_mv(bh.datasets.load("berkey"), "yi", "outcome", "trial", V=["v1i", "v2i"])
    >>> fit.fixed_effects["estimate"].round(4).tolist()
    [-0.3392, 0.3534]
    """
    if method not in METHODS:
        raise OptionError(f"Unknown method {method!r}.{closest_names(str(method), METHODS)} "
                          f"Use one of {', '.join(METHODS)}.")
    if bayes_options and method != "bayes":
        raise OptionError(f"Option {next(iter(bayes_options))!r} applies to method='bayes' only (or is unknown).")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise OptionError(f"maxiter={maxiter!r}: give a positive whole number, e.g. maxiter=1000.")
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"meta_mv() takes a pandas DataFrame with one row per effect; got {type(data).__name__}.")
    mods = [mods] if isinstance(mods, str) else list(mods)
    for column in [yi, outcome, study, *mods, *([vi] if vi else [])]:
        if column not in data.columns:
            raise DataError(f"{column!r} is not a column of the data.{closest_names(str(column), data.columns)}")
    frame = data.reset_index(drop=True)
    if frame.empty:
        raise DataError("The data frame is empty: meta_mv() needs one row per reported effect.")
    bad = frame[[yi, outcome, study, *mods]].isna().any(axis=1).to_numpy()
    if bad.any():
        raise DataError(f"Missing values in {describe_rows(np.flatnonzero(bad))}: remove those effects first "
                        "(and their rows and columns of V).")
    for column in [yi, *mods]:
        _check_finite_numbers(frame, column, "effect" if column == yi else "moderator")
    duplicated = frame.duplicated([study, outcome]).to_numpy()
    if duplicated.any():
        raise DataError(f"{describe_rows(np.flatnonzero(duplicated))} repeat an outcome within a study: each study "
                        "reports each outcome at most once.")
    cov = _sampling_covariance(frame, study, V, vi, rho)
    check_magnitudes(frame[yi].to_numpy(dtype=float), np.diag(cov), yi, "V" if vi is None else vi)
    outcomes = pd.Index(sorted(frame[outcome].astype(str).unique()), name=outcome)
    codes = outcomes.get_indexer(frame[outcome].astype(str))
    X, names = _design_matrix(frame, codes, outcomes, mods)
    studies = _StudyBlocks(frame[study], frame[yi].to_numpy(dtype=float), X, cov, codes)
    if len(studies.levels) < 2 or studies.n <= studies.p:
        raise DataError(f"{len(studies.levels)} studies with {studies.n} effects cannot estimate {studies.p} fixed "
                        f"effects and the between-study covariance of {len(outcomes)} outcomes: give at least two "
                        "studies and more effects than fixed effects.")
    shift = _moderator_transform(X, len(outcomes))
    centred = _StudyBlocks(frame[study], frame[yi].to_numpy(dtype=float), X @ shift, cov, codes)
    objective = _Criterion(centred, len(outcomes), method != "ml")
    result = _minimize(objective, _start(frame[yi].to_numpy(dtype=float), codes, len(outcomes)), maxiter)
    fit = MetaMVFit(objective, result, names, outcomes, "ml" if method == "ml" else "reml", studies, shift)
    if method == "bayes":
        from .multivariate_bayes import fit_bayes

        return fit_bayes(fit, **bayes_options)
    for category, message in fit._warnings:
        warnings.warn(message, category, stacklevel=2)
    return fit


def _sampling_covariance(frame: pd.DataFrame, study: str, V, vi: str | None, rho: float | None) -> np.ndarray:
    """The (n, n) known sampling covariance in row order, checked to be symmetric, block-diagonal by study and
    positive definite within each study."""
    n = len(frame)
    if (V is None) == (vi is None):
        raise OptionError("Give the known sampling covariance either as V= (an n x n array or the per-row "
                          "covariance columns) or as vi= with rho= (a common within-study correlation).")
    labels = frame[study].to_numpy()
    if vi is not None:
        if isinstance(rho, bool) or not isinstance(rho, int | float | np.number) or not -1 < rho < 1:
            raise OptionError(f"rho={rho!r}: with vi= give the within-study correlation between outcomes, "
                              "-1 < rho < 1.")
        variances = _check_finite_numbers(frame, vi, "sampling variance")
        if (variances <= 0).any():
            bad = np.flatnonzero(variances <= 0)
            raise DataError(f"The sampling variances in {vi!r} must be positive; {describe_rows(bad)} hold "
                            f"{variances[bad[0]]:.4g}. Check the column (a variance is a squared standard error).")
        sd = np.sqrt(variances)
        cov = np.where(labels[:, None] == labels[None, :], rho * np.outer(sd, sd), 0.0)
        np.fill_diagonal(cov, sd**2)
    elif isinstance(V, Sequence) and not isinstance(V, str) and all(isinstance(c, str) for c in V):
        missing = [c for c in V if c not in frame.columns]
        if missing:
            raise DataError(f"V column {missing[0]!r} is not in the data.{closest_names(missing[0], frame.columns)}")
        for column in V:
            _check_numbers(frame, column, "covariance")
        cov = np.zeros((n, n))
        for label in pd.unique(labels):
            rows = np.flatnonzero(labels == label)
            if len(rows) > len(V):
                raise DataError(f"Study {label!r} has {len(rows)} effects but V names only {len(V)} covariance "
                                "columns (one per effect of the largest study).")
            cov[np.ix_(rows, rows)] = frame.loc[rows, list(V[:len(rows)])].to_numpy(dtype=float)
    else:
        try:
            cov = np.asarray(V, dtype=float)
        except (TypeError, ValueError):
            raise DataError("V must be an n x n array of numbers or a list of covariance column names.") from None
        if cov.shape != (n, n):
            raise DataError(f"V must be an {n} x {n} array (one row and column per effect); got shape {cov.shape}.")
        if np.any(cov[labels[:, None] != labels[None, :]] != 0):
            raise DataError("V has non-zero covariances between effects of different studies; the model assumes "
                            "independent studies (V block-diagonal by study).")
    if not np.all(np.isfinite(cov)):
        bad = np.flatnonzero(~np.isfinite(cov).all(axis=1))
        raise DataError(f"The sampling covariances of {describe_rows(bad)} have missing or infinite values: fill "
                        "in every variance and within-study covariance of the effects analysed.")
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=0):
        raise DataError("The sampling covariance V is not symmetric: check the covariance columns of each study.")
    if not np.all(np.isfinite(cov)) or np.linalg.eigvalsh(cov)[0] <= 0:
        raise DataError("The sampling covariance V is not positive definite (a variance <= 0 or a correlation "
                        "outside (-1, 1) within a study).")
    return cov


def _check_numbers(frame: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """``frame[column]`` as floats (missing values kept as NaN), or a DataError naming the rows holding text."""
    values = pd.to_numeric(frame[column], errors="coerce")
    text = values.isna() & frame[column].notna()
    if text.any():
        rows = np.flatnonzero(text)
        fix = "code it as 0/1 columns first" if what == "moderator" else "convert it with pandas.to_numeric first"
        raise DataError(f"The {what} column {column!r} is not numeric: {describe_rows(rows)} hold "
                        f"{frame[column].iloc[rows[0]]!r}; {fix}.")
    return values.to_numpy(dtype=float)


def _check_finite_numbers(frame: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """As :func:`_check_numbers`, also refusing missing and infinite values."""
    values = _check_numbers(frame, column, what)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(f"The {what} column {column!r} has missing or infinite values in {describe_rows(bad)}: "
                        "remove those effects or fill them in.")
    return values


def _moderator_transform(X: np.ndarray, q: int) -> np.ndarray:
    """S with X S = the moderator columns (outcome indicator x moderator) centred on the moderator's mean and
    divided by its SD, the q indicator columns unchanged. The criterion is computed on X S: with uncentred
    moderators (years, or values shifted by 1e6) X'Sigma^-1 X is too ill-conditioned to solve accurately."""
    S = np.eye(X.shape[1])
    for k in range(q, X.shape[1]):
        rows = X[:, k % q] == 1  # the column's outcome (indicators first, then per moderator one per outcome)
        values = X[rows, k]
        sd = values.std()
        S[k % q, k] = -values.mean()
        S[:, k] /= sd if sd > 0 else 1.0
    return S


def _design_matrix(frame: pd.DataFrame, codes: np.ndarray, outcomes: pd.Index, mods: list[str]):
    """Columns: one indicator per outcome, then for each moderator its product with each indicator."""
    indicators = np.eye(len(outcomes))[codes]
    blocks, names = [indicators], [str(o) for o in outcomes]
    for m in mods:
        values = frame[m]
        if not pd.api.types.is_numeric_dtype(values):
            raise DataError(f"Moderator {m!r} is not numeric; code it as 0/1 columns first.")
        blocks.append(indicators * values.to_numpy(dtype=float)[:, None])
        names += [f"{o}:{m}" for o in outcomes]
    X = np.hstack(blocks)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise DataError(f"The fixed effects {names} are not identifiable (a moderator is constant within an "
                        "outcome, or an outcome has too few studies).")
    return X, names


class _StudyBlocks:
    """Rows of each study, grouped by study size m: stacked (J_m, m, .) arrays for batched algebra."""

    def __init__(self, labels: pd.Series, y: np.ndarray, X: np.ndarray, cov: np.ndarray, codes: np.ndarray):
        self.n, self.p = X.shape
        self.X_all, self.y_all, self.V_all = X, y, cov
        self.labels, self.codes = labels.to_numpy(), codes
        self.levels = pd.Index(pd.unique(labels.to_numpy()), name=labels.name)
        rows_of = [np.flatnonzero(labels.to_numpy() == s) for s in self.levels]
        self.batches = []
        for m in sorted({len(r) for r in rows_of}):
            rows = np.array([r for r in rows_of if len(r) == m])  # (J_m, m)
            self.batches.append({"rows": rows, "y": y[rows], "X": X[rows], "codes": codes[rows],
                                 "V": cov[rows[:, :, None], rows[:, None, :]]})


class _Criterion:
    """theta (lower-triangular L of T, row-major) -> -2 log L (REML or ML) with gamma profiled out."""

    def __init__(self, studies: _StudyBlocks, q: int, reml: bool):
        self.studies, self.q, self.reml = studies, q, reml
        self.tril = np.tril_indices(q)
        self.evaluations = 0

    def T(self, theta: np.ndarray) -> np.ndarray:
        L = np.zeros((self.q, self.q))
        L[self.tril] = theta
        return L @ L.T

    def gls(self, T: np.ndarray):
        """(sum logdet Sigma_j, X'S^{-1}X, X'S^{-1}y, y'S^{-1}y) summed over the study batches."""
        p = self.studies.p
        logdet, XSX, XSy, ySy = 0.0, np.zeros((p, p)), np.zeros(p), 0.0
        for b in self.studies.batches:
            c = b["codes"]
            Sigma = b["V"] + T[c[:, :, None], c[:, None, :]]
            C = np.linalg.cholesky(Sigma)
            logdet += 2.0 * np.log(np.diagonal(C, axis1=1, axis2=2)).sum()
            A = np.linalg.solve(C, np.concatenate([b["X"], b["y"][:, :, None]], axis=2))  # C^{-1} [X y]
            G = np.einsum("jma,jmb->ab", A, A)
            XSX += G[:p, :p]
            XSy += G[:p, p]
            ySy += G[p, p]
        return logdet, XSX, XSy, ySy

    def deviance(self, theta: np.ndarray) -> float:
        logdet, XSX, XSy, ySy = self.gls(self.T(theta))
        n, p = self.studies.n, self.studies.p
        beta = np.linalg.solve(XSX, XSy)
        value = logdet + (ySy - XSy @ beta) + n * LOG_2PI
        if self.reml:
            value += np.linalg.slogdet(XSX)[1] - p * LOG_2PI
        return float(value)

    def __call__(self, theta: np.ndarray) -> float:
        self.evaluations += 1
        try:
            return self.deviance(theta)
        except np.linalg.LinAlgError:
            return np.inf


def _start(y: np.ndarray, codes: np.ndarray, q: int) -> np.ndarray:
    """L = diag(sd of each outcome's effects / 2): a between-study SD of the order of the effects' spread."""
    L = np.diag([max(np.std(y[codes == k]), 1e-3) / 2 for k in range(q)])
    return L[np.tril_indices(q)]


def _minimize(objective: _Criterion, start: np.ndarray, maxiter: int):
    """L-BFGS-B with central-difference gradients (step 1e-6 times the scale of theta), as the likelihood
    engine. A stop on a failed line search counts as converged when the gradient there is below
    1e-6 max(1, |deviance|): the line search fails at the optimum once the criterion's rounding noise dominates."""
    step = 1e-6 * max(np.abs(start).max(), 1e-8)

    def gradient(x):
        g = np.empty_like(x)
        for i in range(len(x)):
            e = np.zeros_like(x)
            e[i] = step
            g[i] = (objective(x + e) - objective(x - e)) / (2 * step)
        return g

    result = minimize(objective, start, jac=gradient, method="L-BFGS-B",
                      options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": maxiter, "maxls": 50})
    if not result.success and result.nit < maxiter:
        result.success = bool(np.abs(gradient(result.x)).max() < 1e-6 * max(1.0, abs(result.fun)))
    return result


class MetaMVFit:
    """A multivariate V-known meta-analysis fitted by REML or ML (see :func:`meta_mv`).

    ``fixed_effects`` (estimate, se, z, p, 95% CI), ``vcov``, ``tau`` (T as a DataFrame), ``tau2`` (its diagonal),
    ``correlation`` (between-study correlations of the outcomes' true effects), ``loglik``, ``deviance``,
    ``q_test`` (residual heterogeneity), ``study_effects`` (EB estimates per effect), ``messages``.
    """

    def __init__(self, objective: _Criterion, result, names: list[str], outcomes: pd.Index, method: str,
                 studies: _StudyBlocks, shift: np.ndarray):
        """``objective`` works on the transformed design X S (see :func:`_moderator_transform`); ``studies``
        holds the design as given. gamma = S gamma~ and Var(gamma) = S Var(gamma~) S'; the REML criterion of X
        is that of X S minus 2 log|det S|."""
        self.method = method
        self.outcomes = outcomes
        self._objective = objective
        self._studies = studies
        self.k = len(self._studies.levels)
        self.n = self._studies.n
        self.converged = bool(result.success)
        self.optimizer_message = str(result.message)
        self.n_evaluations = objective.evaluations
        log_det = np.linalg.slogdet(shift)[1]
        self.deviance = float(result.fun) - (2.0 * log_det if objective.reml else 0.0)
        T = objective.T(result.x)
        self.tau = pd.DataFrame(T, index=outcomes, columns=outcomes)
        _, XSX, XSy, _ = objective.gls(T)
        cov = np.linalg.inv(XSX)
        self._beta = shift @ (cov @ XSy)
        self.vcov = pd.DataFrame(shift @ cov @ shift.T, index=names, columns=names)
        self._warnings = self._diagnose()

    @property
    def loglik(self) -> float:
        """(Restricted) log-likelihood, -deviance / 2 (lme4's constants)."""
        return -0.5 * self.deviance

    @property
    def tau2(self) -> pd.Series:
        return pd.Series(np.diag(self.tau.to_numpy()), index=self.outcomes, name="tau2")

    @property
    def correlation(self) -> pd.DataFrame:
        T = self.tau.to_numpy()
        sd = np.sqrt(np.diag(T))
        with np.errstate(invalid="ignore", divide="ignore"):
            return pd.DataFrame(T / np.outer(sd, sd), index=self.outcomes, columns=self.outcomes)

    @cached_property
    def fixed_effects(self) -> pd.DataFrame:
        return wald_table(self._beta, self.vcov)

    @cached_property
    def q_test(self) -> QTest:
        """Residual heterogeneity, H0: T = 0: Q_E = r' V^{-1} r at the GLS fit with V alone, chi-square on n - p df
        (the multivariate generalisation of R&B eq. 7.16; metafor's QE)."""
        s = self._objective.studies  # the centred design: the test does not depend on the coding of X
        Vinv = np.linalg.inv(s.V_all)
        beta = np.linalg.solve(s.X_all.T @ Vinv @ s.X_all, s.X_all.T @ Vinv @ s.y_all)
        r = s.y_all - s.X_all @ beta
        q = float(r @ Vinv @ r)
        df = s.n - s.p
        return QTest(q, df, float(stats.chi2.sf(q, df)))

    @cached_property
    def study_effects(self) -> pd.DataFrame:
        """Per reported effect (data row order): study, outcome, observed effect, fitted value x'gamma and the EB
        estimate x'gamma + b*_j of its true effect, b*_j = T Z_j' Sigma_j^{-1} (d_j - X_j gamma) (R&B eq. 3.49)."""
        s = self._studies
        T = self.tau.to_numpy()
        fitted = s.X_all @ self._beta
        eb = np.empty(s.n)
        for b in s.batches:
            c = b["codes"]
            TZ = T[c[:, :, None], c[:, None, :]]  # Z_j T Z_j' (the rows of T for the reported outcomes)
            resid = b["y"] - b["X"] @ self._beta
            shrunk = np.einsum("jab,jb->ja", TZ, np.linalg.solve(b["V"] + TZ, resid[:, :, None])[:, :, 0])
            eb[b["rows"]] = fitted[b["rows"]] + shrunk
        return pd.DataFrame({s.levels.name: s.labels, self.outcomes.name: self.outcomes[s.codes],
                             "effect": s.y_all, "fitted": fitted, "eb": eb})

    def _diagnose(self) -> list[tuple[type, str]]:
        out = []
        if not self.converged:
            out.append((ConvergenceWarning, f"The optimiser did not report convergence ({self.optimizer_message}) "
                        f"after {self.n_evaluations} evaluations; the estimates may not be at the optimum."))
        scale = float(np.median(np.diag(self._studies.V_all)))
        for o, t2 in self.tau2.items():
            if t2 < BOUNDARY_RTOL * scale:
                out.append((BoundaryFitWarning, f"The between-study variance of {o!r} is estimated as 0: its true "
                            "effects vary no more than the sampling covariances explain, so its EB estimates equal "
                            "the fitted values."))
        corr = self.correlation.to_numpy()
        if np.any(np.abs(corr[np.triu_indices_from(corr, 1)]) > 0.9999):
            out.append((BoundaryFitWarning, "A between-study correlation of the outcomes' true effects is estimated "
                        "as +-1 (T is singular): the data cannot separate the outcomes' random effects. Report it "
                        "as a boundary estimate, not as evidence of a perfect correlation."))
        return out

    @property
    def messages(self) -> list[str]:
        return [m for _, m in self._warnings]

    def summary(self) -> str:
        lines = [f"Multivariate meta-analysis ({self.method.upper()}): {self.n} effects of {len(self.outcomes)} "
                 f"outcomes in {self.k} studies",
                 f"Test for residual heterogeneity: {self.q_test}", "",
                 self.fixed_effects.to_string(float_format=lambda x: f"{x:.4f}"), "",
                 "Between-study covariance T:", self.tau.to_string(float_format=lambda x: f"{x:.6f}"),
                 "Correlations:", self.correlation.to_string(float_format=lambda x: f"{x:.4f}")]
        if self.messages:
            lines += ["", *self.messages]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<MetaMVFit {self.method.upper()}: {self.n} effects, {self.k} studies, outcomes {list(self.outcomes)}>"
