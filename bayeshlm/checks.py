"""Posterior predictive checks by group for Bayesian fits (Gelman et al., *Bayesian Data Analysis*, 3rd ed.,
ch. 6): a statistic T of each group's outcomes, observed and in every replicated data set of
:meth:`~bayeshlm.bayes.result.BayesFit.posterior_predictive`, with the posterior predictive p-value
Pr(T(y_rep_j) >= T(y_j)). Values near 0 or 1 mark groups the model reproduces badly: a group variance in the
far tail, say, points to a level-1 variance that differs between groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import OptionError, closest_names

STATISTICS = ("mean", "var", "min", "max")


def group_statistics(fit, stat: str = "mean", factor: str | None = None, level: float = 0.95,
                     random_seed: int | None = None) -> pd.DataFrame:
    """Per group of ``factor`` (default: the first): the observed ``stat`` of the outcome, the posterior mean and
    equal-tailed ``level`` interval of the same statistic in the replicated data, and ``ppp`` =
    Pr(T(y_rep) >= T(y)). Uses the fit's ``posterior_predictive`` group, made (with ``random_seed``) if absent.
    ``var`` is the sample variance (ddof=1; NaN for groups of one row)."""
    if fit.method != "bayes" or not hasattr(fit, "posterior_predictive"):
        raise OptionError("group_statistics compares the data with posterior predictive replicates, which only a "
                          "Bayesian fit has (fit with method='bayes').")
    if stat not in STATISTICS:
        raise OptionError(f"stat={stat!r} is not an option.{closest_names(str(stat), STATISTICS)} Use one of "
                          f"{', '.join(STATISTICS)}.")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1.")
    name = fit._factor_name(factor)
    f = fit.design.factor(name)
    if "posterior_predictive" not in fit.posterior.children:
        fit.posterior_predictive(random_seed)
    outcome = fit.design.outcome_name
    replicates = fit.posterior["posterior_predictive"][outcome].transpose("chain", "draw", "obs").values
    replicates = replicates.reshape(-1, replicates.shape[-1])
    observed = _by_group(fit.design.y[None], f.codes, f.n_groups, stat)[0]
    replicated = _by_group(replicates, f.codes, f.n_groups, stat)
    lower, upper = np.quantile(replicated, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    return pd.DataFrame({"observed": observed, "predictive_mean": replicated.mean(0), "lower": lower,
                         "upper": upper, "ppp": (replicated >= observed).mean(0), "n": f.group_sizes},
                        index=pd.Index(f.levels, name=name))


def _by_group(values: np.ndarray, codes: np.ndarray, n_groups: int, stat: str) -> np.ndarray:
    """(S, J) statistic of each row of ``values`` (S, n) within each group."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ordered = values[:, order]
    if stat == "min":
        return np.minimum.reduceat(ordered, starts, axis=1)
    if stat == "max":
        return np.maximum.reduceat(ordered, starts, axis=1)
    mean = np.add.reduceat(ordered, starts, axis=1) / sizes
    if stat == "mean":
        return mean
    squares = np.add.reduceat((ordered - np.repeat(mean, sizes, axis=1)) ** 2, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 1, squares / (sizes - 1), np.nan)
