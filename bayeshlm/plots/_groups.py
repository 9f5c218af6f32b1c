"""Per-group coefficient summaries in one shape for plots, whatever engine produced the fit."""

from __future__ import annotations

from scipy import stats

from ..results import FitResult


def group_coefficients(fit: FitResult, factor: str, coefficient: str, level: float = 0.95):
    """(estimate, lower, upper) arrays over groups: EB +/- z * conditional SD for likelihood fits, the
    posterior mean and equal-tailed interval for Bayesian fits."""
    if fit.method == "bayes":
        return fit.group_interval(factor, coefficient, level)
    effects = fit.group_effects(factor)
    estimate = effects[("coef", coefficient)].to_numpy(dtype=float)
    sd = effects[("sd", coefficient)].to_numpy(dtype=float)
    z = stats.norm.ppf(0.5 + level / 2)
    return estimate, estimate - z * sd, estimate + z * sd
