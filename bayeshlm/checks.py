"""Posterior predictive checks by group for Bayesian fits (Gelman et al., *Bayesian Data Analysis*, 3rd ed.,
ch. 6): a statistic T of each group's outcomes, observed and in every replicated data set of
:meth:`~bayeshlm.results.bayes_fit.BayesFit.posterior_predictive`, with the posterior predictive p-value
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
    name = fit.factor_name(factor)
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


def compare_models(fits, kind: str = "marginal", names=None) -> pd.DataFrame:
    """Rank Bayesian fits of the same data by their expected log predictive density (PSIS-LOO, ``az.compare``).

    ``fits``: a list (named ``model_1``, ... unless ``names`` are given) or a dict name -> fit. ``kind="marginal"``
    (default) leaves one group out at a time, the group's effects integrated out -- the unit is the group of
    the models' one grouping factor (see :mod:`bayeshlm.bayes.predictive_data` for why this suits hierarchical
    models); ``kind="conditional"`` leaves one observation out. The table is ArviZ's, with ``attrs["unit"]``
    naming the unit and ``attrs["messages"]`` saying, in words, which fits have unreliable importance weights
    (Pareto k above ArviZ's threshold); those messages are also warnings. Numbers are not rounded: round them for
    display (``table.round(1)``).
    """
    import warnings

    import arviz as az

    from .results.base import data_differences

    if kind not in ("marginal", "conditional"):
        raise OptionError(f"kind={kind!r} is not an option.{closest_names(str(kind), ('marginal', 'conditional'))} "
                          "Use 'marginal' (leave one group out) or 'conditional' (leave one observation out).")
    if isinstance(fits, dict):
        named = dict(fits)
    else:
        fits = list(fits)
        names = list(names) if names is not None else [f"model_{i + 1}" for i in range(len(fits))]
        if len(names) != len(fits) or len(set(names)) != len(names):
            raise OptionError(f"names: give one distinct name per fit ({len(fits)} fits, names {names}).")
        named = dict(zip(names, fits))
    if len(named) < 2:
        raise OptionError("compare_models needs at least two fits to compare.")
    for name, fit in named.items():
        if getattr(fit, "method", None) != "bayes" or not hasattr(fit, "log_likelihood"):
            raise OptionError(f"compare_models compares Bayesian fits (method='bayes'); {name!r} is a "
                              f"{type(fit).__name__}. For REML/ML fits use bayeshlm.deviance_test or AIC/BIC.")
    first_name, first = next(iter(named.items()))
    for name, fit in named.items():
        problems = data_differences(first.design, fit.design)
        if problems:
            raise OptionError(f"compare_models compares models of the same data, but {name!r} differs from "
                              f"{first_name!r}: {'; '.join(problems)}.")
    if kind == "marginal":
        factors = {name: _left_out_factor(fit.design) for name, fit in named.items()}
        if None in factors.values() or len(set(factors.values())) != 1:
            raise OptionError(f"kind='marginal' leaves out one group of a shared grouping factor at a time (the only "
                              f"factor, or the top of two nested ones); the fits leave out {factors}. Use "
                              "kind='conditional' (one observation at a time).")
        unit = f"group of {factors[first_name]!r} (leave one group out)"
    else:
        unit = "observation (leave one row out)"
    trees = {name: fit.log_likelihood(kind) for name, fit in named.items()}
    messages = []
    for name, tree in trees.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loo = az.loo(tree)
        bad = int((np.asarray(loo.pareto_k) > loo.good_k).sum())
        if bad:
            messages.append(f"{name!r}: {bad} of {loo.n_data_points} left-out units have Pareto k above "
                            f"{loo.good_k:.2f}, so PSIS-LOO's estimate of their predictive density is unreliable "
                            "(the posterior changes too much when they are left out). Refitting without each of them "
                            "(exact cross-validation) gives a reliable value"
                            + ("; leaving out whole groups (kind='marginal') usually has far fewer such units."
                               if kind == "conditional" else "."))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(trees, round_to="none")  # ArviZ's default rounds elpd to the digits its SE supports
    table.attrs["unit"] = unit
    table.attrs["messages"] = messages
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)
    return table


def _left_out_factor(design) -> str | None:
    """The factor whose groups kind='marginal' leaves out: the only one, or the top of a two-level chain."""
    if len(design.factors) == 1:
        return design.factors[0].name
    chain = design.chain
    return chain[-1].name if len(design.factors) == 2 and len(chain) == 2 else None
