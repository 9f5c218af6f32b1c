"""Per-group coefficient summaries in one shape for plots, whatever engine produced the fit."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..results import FitResult
from ..results.hlm_statistics import fixed_part


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


def predicted_coefficients(fit: FitResult, factor: str, coefficient: str, level: float = 0.95):
    """(center, lower, upper) arrays over groups: each group's predicted coefficient sum_s gamma_qs W_sj (R&B 2002,
    eq. 2.22 -- the value its EB estimate shrinks toward, eq. 3.56) and the plausible range of a coefficient with
    that group's level-2 predictors, gamma_q'W_j +/- z sqrt(tau_qq) (eq. 4.4 at W_j instead of W = 0).

    Bayesian fits: the posterior mean of gamma_q'W_j and the equal-tailed interval of gamma_q'W_j + u_new,
    u_new drawn from N(0, T) per draw (so the uncertainty about gamma and T widens the range).
    """
    f = fit.design.factor(factor)
    k = f.coef_names.index(coefficient)
    if fit.method == "bayes":
        coef_dim = f"{factor}__coef"
        fixed = (fit.group_coefficient_draws(factor) - fit.draws(f"u_{factor}")).sel({coef_dim: coefficient})
        new_u = (fit.new_group_draws(factor) - fit._fixed_part(factor)).sel({coef_dim: coefficient})
        ends = (fixed + new_u).quantile([(1 - level) / 2, (1 + level) / 2], ("chain", "draw"))
        return fixed.mean(("chain", "draw")).values, ends.values[0], ends.values[1]
    center = fixed_part(fit.design, fit._gamma(), f)[:, k]
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(fit.tau[factor].to_numpy()[k, k])
    return center, center - half, center + half


def varies_across_groups(values: np.ndarray) -> bool:
    """True when the groups' predicted values differ (a model with level-2 predictors of this coefficient)."""
    values = np.asarray(values, dtype=float)
    return bool(np.ptp(values) > 1e-9 * (1 + np.abs(values).max()))


def random_effect_means(fit: FitResult, factor: str) -> np.ndarray:
    """(J, q) array of each group's random effects u_j: conditional modes (likelihood) or posterior means."""
    f = fit.design.factor(factor)
    if fit.method == "bayes":
        return fit.random_effects(factor)[list(f.coef_names)].to_numpy(dtype=float)
    return fit.group_effects(factor)["u"].to_numpy(dtype=float)


def fixed_effects_covariance(fit: FitResult) -> np.ndarray:
    """Covariance of the fixed effects: the sampling covariance (likelihood) or the posterior covariance of the
    draws (Bayes)."""
    if fit.method == "bayes":
        beta = fit.draws("beta").transpose("chain", "draw", "fixed").values
        return np.atleast_2d(np.cov(beta.reshape(-1, beta.shape[-1]), rowvar=False))
    return fit.vcov.to_numpy()
