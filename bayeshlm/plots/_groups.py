"""Per-group coefficient summaries for plots, read from the result contract (:mod:`bayeshlm.results.contract`)."""

from __future__ import annotations

import numpy as np

from ..results import FitResult
from ..results.contract import wide


def group_coefficients(fit: FitResult, factor: str, coefficient: str, level: float = 0.95):
    """(estimate, lower, upper) arrays over groups, from ``fit.group_effects(factor, level)``: EB -+ z
    conditional SD for likelihood fits, the posterior mean and equal-tailed interval for Bayesian fits."""
    table = fit.group_effects(factor, level).xs(coefficient, level="term")
    return tuple(table[column].to_numpy(dtype=float) for column in ("estimate", "lower", "upper"))


def predicted_coefficients(fit: FitResult, factor: str, coefficient: str, level: float = 0.95):
    """(center, lower, upper) arrays over groups of ``fit.predicted_group_coefficients``: each group's predicted
    coefficient gamma_q'W_j and the plausible range of a coefficient with that group's level-2 predictors."""
    table = fit.predicted_group_coefficients(factor, level).xs(coefficient, level="term")
    return tuple(table[column].to_numpy(dtype=float) for column in ("center", "lower", "upper"))


def varies_across_groups(values: np.ndarray) -> bool:
    """True when the groups' predicted values differ (a model with level-2 predictors of this coefficient)."""
    values = np.asarray(values, dtype=float)
    return bool(np.ptp(values) > 1e-9 * (1 + np.abs(values).max()))


def random_effect_means(fit: FitResult, factor: str) -> np.ndarray:
    """(J, q) array of each group's random effects u_j: conditional modes (likelihood) or posterior means."""
    return wide(fit.random_effects(factor)).to_numpy(dtype=float)
