"""The common shape of every fit, whatever the engine.

Likelihood fits (REML, ML) and Bayesian fits expose the same names, so tables, plots and comparisons
can take either. Point estimates are ML/REML estimates for likelihood fits and posterior means for
Bayesian fits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import pandas as pd
from scipy import stats

from ..design import Design
from ..errors import OptionError
from ..level1 import Level1Errors
from . import hlm_statistics as hlm
from .contract import (
    GROUP_TERM_INDEX,
    RESIDUAL_FACTOR,
    RESIDUAL_TERM,
    VARIANCE_COMPONENT_COLUMNS,
)

DEFAULT_LEVEL = 0.95


class FitResult(ABC):
    """A fitted hierarchical linear model.

    Attributes every engine provides:

    - ``method``: 'reml', 'ml' or 'bayes'.
    - ``design``: the :class:`~bayeshlm.design.Design` that was fitted; ``error_structure`` its level-1 errors.
    - ``fixed_effects``, ``variance_components``, ``group_effects(factor)``, ``random_effects(factor)``: the
      tables of :mod:`bayeshlm.results.contract` (same index names and leading columns for every engine), with
      95% intervals; ``fixed_effects_at(level)`` and ``variance_components_at(level)`` give other levels, and
      ``group_effects`` / ``random_effects`` take ``level=``.
    - ``tau``: dict grouping-factor name -> covariance DataFrame of its random coefficients.
    - ``sigma2``: level-1 variance (None for V-known models).
    - ``vcov``: covariance of the fixed effects (sampling covariance, or the posterior covariance for Bayes).
    - ``group_estimate_name``: what a group's estimate is ('empirical Bayes' or 'posterior mean'), for labels.
    - ``gamma``: the fixed effects' point estimates as an array in the design's column order.
    - ``factor_name(factor)``: a grouping factor's name checked against the design (None: the first factor).

    Engines supply the tables through ``_fixed_effects_table(level)``, ``_variance_components_table(level)`` and
    ``_group_table(kind, factor, level)``, with their intervals from :func:`t_interval` (likelihood) or
    :func:`~bayeshlm.results.contract.equal_tailed_interval` (posterior draws); the tables are computed once per level.
    """

    method: str
    design: Design
    group_estimate_name: str

    @property
    def error_structure(self) -> Level1Errors:
        """The level-1 error model the fit holds (:mod:`bayeshlm.level1`: a variance function and a correlation
        structure)."""
        return self.design.error_structure

    # --- the contract tables (:mod:`bayeshlm.results.contract`) --------------------------------------
    @property
    def fixed_effects(self) -> pd.DataFrame:
        """One row per fixed effect (index ``term``): estimate, se, lower, upper (95%), then engine extras."""
        return self.fixed_effects_at(DEFAULT_LEVEL)

    def fixed_effects_at(self, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """``fixed_effects`` with ``level`` intervals (t(df) of the t tests for REML / ML, equal-tailed posterior
        intervals for Bayes)."""
        return self._cached_table("fixed_effects", None, level)

    @property
    def variance_components(self) -> pd.DataFrame:
        """One row per variance / covariance (variance scale): factor, term, term2, estimate, se, lower, upper."""
        return self.variance_components_at(DEFAULT_LEVEL)

    def variance_components_at(self, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """``variance_components`` with ``level`` intervals (Wald on the observed information, clipped to the
        parameter's range, for REML / ML; equal-tailed posterior intervals for Bayes)."""
        return self._cached_table("variance_components", None, level)

    def group_effects(self, factor: str | None = None, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """Each group's coefficients beta_qj = gamma_q'W_j + u_qj (R&B 2002, eq. 2.22, 3.56) of ``factor``
        (default: the first grouping factor): long table indexed (group, term) with estimate, se, lower,
        upper, n. REML / ML: the empirical-Bayes estimate, its conditional SD (gamma and T held at their
        estimates) and estimate -+ z SD; Bayes: posterior mean, SD and equal-tailed interval."""
        return self._cached_table("group_effects", self.factor_name(factor), level)

    def random_effects(self, factor: str | None = None, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """Each group's deviations u_qj from its fixed part (conditional modes, lme4's ``ranef``; posterior
        means for Bayes), in the layout of :meth:`group_effects`."""
        return self._cached_table("random_effects", self.factor_name(factor), level)

    def _cached_table(self, kind: str, factor: str | None, level: float) -> pd.DataFrame:
        check_level(level)
        cache = self.__dict__.setdefault("_contract_tables", {})
        key = (kind, factor, float(level))
        if key not in cache:
            if kind == "fixed_effects":
                cache[key] = self._fixed_effects_table(float(level))
            elif kind == "variance_components":
                cache[key] = self._variance_components_table(float(level))
            else:
                cache[key] = self._group_table(kind, factor, float(level))
        return cache[key].copy()

    @abstractmethod
    def _fixed_effects_table(self, level: float) -> pd.DataFrame: ...

    @abstractmethod
    def _variance_components_table(self, level: float) -> pd.DataFrame: ...

    @abstractmethod
    def _group_table(self, kind: str, factor: str, level: float) -> pd.DataFrame:
        """The ``group_effects`` (kind 'group_effects') or ``random_effects`` table of ``factor``."""

    @property
    @abstractmethod
    def tau(self) -> dict[str, pd.DataFrame]: ...

    @property
    @abstractmethod
    def sigma2(self) -> float | None: ...

    @property
    @abstractmethod
    def vcov(self) -> pd.DataFrame: ...

    @abstractmethod
    def report_sections(self) -> list[tuple[str, str]]:
        """The engine's own closing sections of :meth:`report` as (title, text): fit statistics, or the
        sampler, priors and convergence diagnostics."""

    @abstractmethod
    def describe_estimates(self) -> str:
        """One sentence saying what the reported numbers are (for the plain-words report)."""

    def predicted_group_coefficients(self, factor: str | None = None, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """Each group's predicted coefficient gamma_q'W_j (R&B 2002, eq. 2.22: what its estimate shrinks toward,
        eq. 3.56) and the plausible range of a coefficient with that group's level-2 predictors,
        gamma_q'W_j -+ z sqrt(tau_qq) (eq. 4.4 at W_j instead of W = 0). Long table indexed (group, term) with
        columns center, lower, upper. Bayesian fits widen the range by the uncertainty about gamma and T."""
        check_level(level)
        f = self.design.factor(self.factor_name(factor))
        center = hlm.fixed_part(self.design, self.gamma, f)
        half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(np.diag(self.tau[f.name].to_numpy()))
        return long_table(f, {"center": center, "lower": center - half, "upper": center + half})

    def factor_name(self, factor: str | None = None) -> str:
        """The name of grouping factor ``factor`` as the design spells it (the first grouping factor when None);
        an unknown name raises an error listing the model's factors."""
        return self.design.factors[0].name if factor is None else self.design.factor(factor).name

    # --- HLM statistics (R&B 2002, ch. 3-4), from the point estimates ---------------------------
    @property
    def gamma(self) -> np.ndarray:
        """The fixed effects' point estimates as an array in the design's column order (``design.fixed_names``),
        the gamma of R&B's equations (ML / REML estimates; posterior means for Bayes)."""
        return self.fixed_effects["estimate"].reindex(list(self.design.fixed_names)).to_numpy(dtype=float)

    def _group_ols(self, factor: str | None):
        return hlm.group_ols(self.design, self.gamma, self.sigma2, self.factor_name(factor))

    def reliability(self, factor: str | None = None) -> pd.DataFrame:
        """Reliability lambda_qj of each group's OLS coefficient (R&B eq. 3.42); for an enclosing factor of a
        nested model, of its GLS estimate given the inner levels (eq. 8.8). ``.mean()`` averages groups."""
        name = self.factor_name(factor)
        if hlm.check_per_group_statistic(self.design, name, "The reliability") == "outer":
            usable, lam = hlm.outer_reliability(self.design, name, self._chain_taus(name),
                                                None if self.sigma2 is None else np.array([self.sigma2]))
            f = self.design.factor(name)
            return pd.DataFrame(lam[0], index=f.levels[usable], columns=list(f.coef_names))
        return hlm.reliability(self.design, self.tau[name].to_numpy(), self._group_ols(name))

    def _chain_taus(self, factor: str) -> list[np.ndarray]:
        """T of each factor of the nested chain up to ``factor`` (innermost first), each as a (1, q, q) array."""
        names = [f.name for f in self.design.chain]
        return [self.tau[n].to_numpy()[None] for n in names[:names.index(factor) + 1]]

    def reliability_summary(self, factor: str | None = None) -> pd.DataFrame:
        """Average reliability over groups of each random coefficient (R&B eq. 3.59)."""
        return self.reliability(factor).mean().to_frame("reliability")

    def chi_square(self, factor: str | None = None) -> pd.DataFrame:
        """Chi-square homogeneity test of each random coefficient's variance (R&B eq. 3.103)."""
        name = self.factor_name(factor)
        if hlm.check_per_group_statistic(self.design, name, "The chi-square test") == "outer":
            raise OptionError(
                f"The chi-square test (R&B eq. 3.103) needs a regression within each group with independent rows; "
                f"the rows of a {name!r} group are correlated through the inner grouping factor(s), and the book "
                f"gives no formula for an enclosing level. To test the {name!r} variance, compare the model with "
                f"and without its '(... | {name})' term: bayeshlm.deviance_test(fit_without, fit_with) (ML fits, "
                "or REML fits with the same fixed effects).")
        return hlm.chi_square(self._group_ols(name))

    def plausible_values(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Plausible-value range gamma_q0 +/- z sqrt(tau_qq) of each random coefficient (R&B eq. 4.4)."""
        name = self.factor_name(factor)
        coefs = self.design.factor(name).coef_names
        estimates = self.fixed_effects["estimate"]
        centers = np.array([estimates.get(c, 0.0) for c in coefs], dtype=float)
        return hlm.plausible_values(centers, self.tau[name].to_numpy(), coefs, level)

    def icc(self, factor: str | None = None) -> float:
        """Intraclass correlation tau00 / (tau00 + sigma^2) (R&B eq. 2.10), defined for random-intercept models.

        With several grouping factors: the correlation of two rows in the same group of ``factor`` but in
        different groups of every other factor except those enclosing it, (tau_factor + tau of the enclosing
        factors) / (sigma^2 + every tau) -- children within schools: (tau_pi + tau_beta) / total for a child,
        tau_beta / total for a school (R&B eq. 8.4-8.6); crossed factors: tau / total (eq. 12.5-12.6).
        """
        name = self.factor_name(factor)
        for other, tau in self.tau.items():
            if tau.shape != (1, 1) or self.sigma2 is None:
                raise OptionError(
                    f"The ICC is one number only for a random-intercept model with a level-1 variance; {other!r} "
                    f"has random coefficients {list(tau.index)} so its variance depends on the predictors. "
                    "Use fit.tau to see the variance at given predictor values.")
        shared = [name] + _enclosing_factors(self.design, name)
        total = float(self.sigma2) + sum(float(t.iloc[0, 0]) for t in self.tau.values())
        return sum(float(self.tau[f].iloc[0, 0]) for f in shared) / total

    # --- fitted values and residuals (:mod:`bayeshlm.results.prediction`) --------------------------
    def fitted(self) -> pd.Series:
        """Fitted values x'gamma + z'u of the analysed rows, each group at its estimated effects (lme4 ``fitted``;
        the posterior mean for Bayes): ``predict(None, "conditional", "mean")["estimate"]``."""
        return self.predict(None, "conditional", "mean")["estimate"].rename("fitted")

    def residuals(self, level: int = 1, factor: str | None = None):
        """``level=1``: y - fitted per analysed row; ``level=2``: the groups' estimated effects u_j of ``factor``
        (R&B's empirical-Bayes residuals; posterior means for Bayes)."""
        from .prediction import residuals

        return residuals(self, level, factor)

    # --- hypotheses and intervals (:mod:`bayeshlm.results.hypotheses`, :mod:`bayeshlm.likelihood.inference`) ---
    def test(self, hypothesis, rhs=None, df: str | None = None, level: float = 0.95):
        """Test L gamma = c, given as text ('meanses:cses = 0, sector:cses = 0') or a contrast matrix L with
        ``rhs`` (R&B eq. 3.91): Wald chi2 and F with ``df`` = 'book' (J - S - 1, default), 'satterthwaite',
        'kenward-roger' or 'residual' for REML / ML; the posterior of L gamma - c for Bayes."""
        from .hypotheses import test

        return test(self, hypothesis, rhs, df, level)

    def contrast(self, combination, rhs=None, df: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Linear combinations of the fixed effects ('sector + sector:cses') with t tests and intervals (REML /
        ML) or posterior summaries (Bayes)."""
        from .hypotheses import contrast

        return contrast(self, combination, rhs, df, level)

    def marginal_means(self, factor: str, data: pd.DataFrame, df: str | None = None,
                       level: float = 0.95) -> pd.DataFrame:
        """emmeans-style estimated marginal means of the categorical predictor ``factor`` over the reference grid
        of ``data`` (the fitted frame), with intervals (see :func:`bayeshlm.results.hypotheses.marginal_means`)."""
        from .hypotheses import marginal_means

        return marginal_means(self, factor, data, df, level)

    def ttest(self, df: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """estimate, se, df, t, p and interval of every fixed effect with ``df`` = 'book', 'satterthwaite',
        'kenward-roger' or 'residual' (REML / ML fits)."""
        from .hypotheses import ttest

        return ttest(self, df, level)

    def variance_intervals(self, method: str = "wald", level: float = 0.95) -> pd.DataFrame:
        """SE and interval ('wald' or 'profile') of each variance-component parameter on the SD / correlation
        and the variance scale (REML / ML fits; see :func:`bayeshlm.likelihood.inference.variance_intervals`)."""
        from ..likelihood.inference import variance_intervals

        return variance_intervals(self, method, level)

    def confint(self, level: float = 0.95, method: str = "wald", df: str | None = None, n_boot: int | None = None,
                random_seed: int | None = None, workers: int | None = None, progress: bool = False) -> pd.DataFrame:
        """lower / upper for every fixed effect and variance-component parameter, 'wald', 'profile' or 'bootstrap'
        (lme4's ``confint``; REML / ML fits; the bootstrap takes ``n_boot`` seeded refits on ``workers``
        processes; see :func:`bayeshlm.results.hypotheses.confint`)."""
        from .hypotheses import confint

        return confint(self, level, method, df, n_boot, random_seed, workers, progress)

    def diagnostics(self, factor: str | None = None):
        """R&B ch. 9 checks: level-1 homogeneity test H, standardised EB residuals, Mahalanobis distances, level-1
        residuals vs fitted and per-group Cook's distance (:func:`bayeshlm.results.diagnostics.diagnostics`)."""
        from .diagnostics import diagnostics

        return diagnostics(self, factor)

    def diagnostics_report(self, factor: str | None = None):
        """What the R&B ch. 9 checks show, in words (:func:`bayeshlm.results.diagnostics.diagnostics_report`)."""
        from .diagnostics import diagnostics_report

        return diagnostics_report(self, factor)

    def save(self, path):
        """Write this fit to a netCDF file; read it back with :func:`bayeshlm.load_fit` (see
        :mod:`bayeshlm.results.storage` for what is stored). Returns the path."""
        from .storage import save_fit

        return save_fit(self, path)

    def report(self, style: str = "tables"):
        """HLM-style report: equations, fixed effects, variance components, reliabilities, chi-square tests,
        plausible values, ICC and fit statistics (plain text with ``print``, Markdown in notebooks); Bayesian fits
        add the sampler settings, priors and diagnostics. ``style="plain"``: what the ICC, the slope variances and
        the reliabilities mean for this data, in a few paragraphs of words."""
        from ..report.report import build_report

        return build_report(self, style)

    def variance_explained(self, base: FitResult) -> pd.DataFrame:
        """Proportion of variance explained relative to ``base`` at each level (R&B eq. 4.12, 4.20, 4.24).

        Rows: 'level-1' for sigma^2, and one per random coefficient present in both fits. Both fits must model
        the same outcome on the same rows with the same groups (else the proportions compare different data).
        """
        problems = data_differences(self.design, base.design)
        if problems:
            raise OptionError(
                f"variance_explained compares two models of the same data, but the base model differs: "
                f"{'; '.join(problems)}. Fit the base model to the same rows (drop rows with missing values in "
                "either model's variables first, so both analyse the same rows) and the same grouping factors.")
        rows = {}
        if self.sigma2 is not None and base.sigma2 is not None:
            rows["level-1 (sigma^2)"] = (base.sigma2, self.sigma2)
        for name, tau in self.tau.items():
            if name in base.tau:
                for coef in tau.index.intersection(base.tau[name].index):
                    rows[f"{name}: {coef}"] = (base.tau[name].loc[coef, coef], tau.loc[coef, coef])
        return pd.DataFrame(
            [(b, f, hlm.proportion_explained(b, f)) for b, f in rows.values()],
            index=pd.Index(list(rows), name="variance"), columns=["base", "fitted", "proportion_explained"],
        )


# --- interval machinery shared by the engines ------------------------------------------------------------

def check_level(level) -> None:
    """Refuse an interval level that is not a number strictly between 0 and 1."""
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1 (e.g. 0.95).")


def t_interval(estimate, se, level: float, df=np.inf) -> tuple[np.ndarray, np.ndarray]:
    """estimate -+ q se with q the (1 + level) / 2 quantile of t(df) (the normal one for infinite df)."""
    q = stats.t.ppf(0.5 + level / 2, df)
    estimate, se = np.asarray(estimate, dtype=float), np.asarray(se, dtype=float)
    return estimate - q * se, estimate + q * se


def variance_component_pairs(factor) -> list[tuple[int, int]]:
    """(column, row) index pairs of the estimated entries of T, in lme4's order: per block, column by column,
    the variance then the covariances below it."""
    return [(b, a) for block in factor.blocks for j, b in enumerate(block) for a in block[j:]]


def variance_components_frame(rows: list[dict], extras: tuple[str, ...] = ()) -> pd.DataFrame:
    """The variance-components table from row dicts with the contract's columns (plus ``extras``)."""
    return pd.DataFrame(rows, columns=[*VARIANCE_COMPONENT_COLUMNS, *extras])


def residual_row(estimate: float, se: float, lower: float, upper: float, **extras) -> dict:
    """The level-1 variance's row of the variance-components table."""
    return {"factor": RESIDUAL_FACTOR, "term": RESIDUAL_TERM, "term2": RESIDUAL_TERM, "estimate": estimate,
            "se": se, "lower": lower, "upper": upper, **extras}


def long_table(factor, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A per-group table indexed (group, term): each (J, q) array of ``columns`` read group by group."""
    index = pd.MultiIndex.from_product([factor.levels, list(factor.coef_names)], names=[factor.name, GROUP_TERM_INDEX])
    return pd.DataFrame({name: np.asarray(values, dtype=float).reshape(-1) for name, values in columns.items()},
                        index=index)


def group_table(factor, estimate: np.ndarray, se: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> pd.DataFrame:
    """The contract's group_effects / random_effects table from (J, q) arrays, with each group's row count."""
    table = long_table(factor, {"estimate": estimate, "se": se, "lower": lower, "upper": upper})
    table["n"] = np.repeat(np.asarray(factor.group_sizes), factor.n_coef)
    return table


def _enclosing_factors(design: Design, factor: str) -> list[str]:
    """The factors ``factor`` is nested in (its parent, the parent's parent, ...)."""
    out = []
    while design.nesting.get(factor):
        factor = design.nesting[factor]
        out.append(factor)
    return out


def data_differences(design: Design, base: Design) -> list[str]:
    """How ``base`` differs from ``design`` in outcome, rows or groups (empty when they analyse the same data)."""
    if base.outcome_name != design.outcome_name:
        return [f"its outcome is {base.outcome_name!r}, not {design.outcome_name!r}"]
    if base.n_obs != design.n_obs:
        return [f"it analyses {base.n_obs} rows, this model {design.n_obs}"]
    problems = []
    if design.rows_available and base.rows_available:
        if not (np.array_equal(base.row_labels, design.row_labels) and np.array_equal(base.y, design.y)):
            problems.append(f"other rows or other values of {design.outcome_name!r}")
    else:
        mine, theirs = design.column_summary(), base.column_summary()
        if (mine.y_mean, mine.y_sd) != (theirs.y_mean, theirs.y_sd):
            problems.append(f"other values of {design.outcome_name!r} (mean {theirs.y_mean:.6g}, not "
                            f"{mine.y_mean:.6g})")
    shared = [f for f in design.factors if f.name in base.factor_names]
    if not shared:
        problems.append(f"it has no grouping factor in common (its factors: {', '.join(base.factor_names)})")
    for f in shared:
        other = base.factor(f.name)
        same = f.levels.equals(other.levels) and np.array_equal(f.group_sizes, other.group_sizes)
        if same and design.rows_available and base.rows_available:
            same = np.array_equal(f.codes, other.codes)
        if not same:
            problems.append(f"its groups of {f.name!r} differ ({other.n_groups} groups, this model {f.n_groups})")
    return problems
