"""The result contract: the shape of every table a fit returns, whatever the engine or family.

Report, plots, the CLI and comparisons read fits only through these tables, so each engine (REML/ML,
Bayes, HGLM by Laplace/quadrature, HGLM by Bayes) returns the same index names and leading columns.
Point estimates are ML/REML estimates for likelihood fits and posterior means for Bayesian fits; ``se`` is
the standard error or the posterior SD; ``lower``/``upper`` bound the default 95% interval (t(df) for
likelihood fits with the df of their t tests, equal-tailed posterior interval for Bayes). Engines may add
columns after the required ones (``t``, ``df``, ``p`` for likelihood fits; ``r_hat``, ``ess_bulk``,
``ess_tail`` for Bayes).

- ``fixed_effects``: one row per fixed effect, index named ``term``.
- ``variance_components``: one row per variance or covariance, default RangeIndex; ``factor`` is the
  grouping factor (``"Residual"`` for the level-1 variance), ``term``/``term2`` the two coefficients
  (equal for a variance; ``"(residual)"`` for the level-1 row); ``estimate`` on the variance scale.
- ``group_effects(factor)``: each group's coefficient beta_qj = gamma'W_j + u_qj (R&B eq. 2.4, 3.56);
  ``random_effects(factor)``: the deviation u_qj (EB / posterior). Both are long tables with a
  two-level index (``factor``'s name, ``term``) and an ``n`` column (rows of the group).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FIXED_EFFECTS_INDEX = "term"
FIXED_EFFECTS_COLUMNS = ("estimate", "se", "lower", "upper")

VARIANCE_COMPONENT_COLUMNS = ("factor", "term", "term2", "estimate", "se", "lower", "upper")
RESIDUAL_FACTOR = "Residual"
RESIDUAL_TERM = "(residual)"

GROUP_TERM_INDEX = "term"
GROUP_EFFECT_COLUMNS = ("estimate", "se", "lower", "upper", "n")


def contract_problems(kind: str, frame: pd.DataFrame, factor: str | None = None) -> list[str]:
    """What in ``frame`` breaks the contract for table ``kind`` (empty when it holds).

    ``kind`` is 'fixed_effects', 'variance_components', 'group_effects' or 'random_effects'.
    """
    problems = []
    if kind == "fixed_effects":
        required, index = FIXED_EFFECTS_COLUMNS, [FIXED_EFFECTS_INDEX]
    elif kind == "variance_components":
        required, index = VARIANCE_COMPONENT_COLUMNS, [None]
    elif kind in ("group_effects", "random_effects"):
        required, index = GROUP_EFFECT_COLUMNS, [factor, GROUP_TERM_INDEX]
    else:
        raise ValueError(f"unknown table kind {kind!r}")
    if tuple(frame.columns[: len(required)]) != required:
        problems.append(f"{kind}: leading columns {list(frame.columns[: len(required)])}, want {list(required)}")
    if list(frame.index.names) != index:
        problems.append(f"{kind}: index names {list(frame.index.names)}, want {index}")
    return problems


def wide(table: pd.DataFrame, column: str = "estimate") -> pd.DataFrame:
    """Groups x terms of one column of a ``group_effects`` / ``random_effects`` table, in the table's order
    (``wide(fit.random_effects("school"))`` is lme4's ``ranef`` layout)."""
    series = table[column]
    groups = series.index.get_level_values(0).unique()
    terms = series.index.get_level_values(1).unique()
    return series.unstack(1).reindex(index=groups, columns=terms)


def equal_tailed_interval(draws: np.ndarray, level: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles of ``draws`` along ``axis`` (posterior ETI), by
    arviz-stats' ``eti`` (linear interpolation between order statistics, as numpy's quantile)."""
    from arviz_stats.base import array_stats

    interval = array_stats.eti(np.asarray(draws, dtype=float), level, axis=axis)
    return interval[..., 0][()], interval[..., 1][()]  # [()]: a number, not a 0-d array, for one-dimensional draws
