"""Seeded parametric bootstrap (bayeshlm.likelihood.bootstrap) and confint(method="bootstrap").

Small simulated designs and small bootstrap counts keep this file fast; the HS&B timing (1,000 refits) is
measured outside the tests (see the commit message of likelihood/bootstrap.py).
"""

from __future__ import annotations

import warnings
from functools import cache
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.errors import OptionError
from bayeshlm.likelihood.bootstrap import default_statistic, parametric_bootstrap


def simulate(seed: int = 0, groups: int = 25, size: int = 8) -> pd.DataFrame:
    """y = 2 + 0.5 x + 1.0 w + u_j + e, tau = 0.5, sigma^2 = 1 (x level 1, w level 2)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), size)
    w = rng.normal(size=groups)
    x = rng.normal(size=len(g))
    y = 2 + 0.5 * x + 1.0 * w[g] + np.sqrt(0.5) * rng.normal(size=groups)[g] + rng.normal(size=len(g))
    return pd.DataFrame({"y": y, "x": x, "w": w[g], "g": g})


@cache
def fitted(method: str = "reml"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bh.HLM("y ~ x + w + (1 | g)", simulate()).fit(method)


def test_same_seed_same_replicates_whatever_the_number_of_workers():
    fit = fitted()
    one = parametric_bootstrap(fit, 12, random_seed=7, workers=1)
    two = parametric_bootstrap(fit, 12, random_seed=7, workers=2)
    again = parametric_bootstrap(fit, 12, random_seed=7, workers=2)
    other = parametric_bootstrap(fit, 12, random_seed=8, workers=1)
    assert one.n_failed == 0
    assert np.array_equal(one.replicates.to_numpy(), two.replicates.to_numpy())
    assert np.array_equal(two.replicates.to_numpy(), again.replicates.to_numpy())
    assert not np.allclose(one.replicates.to_numpy(), other.replicates.to_numpy())


def test_bootstrap_se_of_gamma_agrees_with_the_reml_se():
    """With 300 replicates the bootstrap SE has a relative sampling SD of about 1/sqrt(2 * 300) = 4%; the
    tolerance is 20% (measured gaps: -6.7%, -0.3%, +1.9% for the intercept, x and w)."""
    fit = fitted()
    result = parametric_bootstrap(fit, 300, random_seed=11)
    summary = result.summary()
    fixed = summary.xs("fixed", level="factor").droplevel(["term2", "parameter"])
    se = fit.fixed_effects["se"]
    assert np.allclose(fixed["se"].reindex(se.index), se, rtol=0.20)
    assert np.allclose(fixed["estimate"].reindex(se.index), fit.fixed_effects["estimate"], rtol=1e-12)
    # the replicates centre on the estimates: gamma is unbiased (bias within 4 Monte Carlo SEs; measured <= 3.3)
    assert (np.abs(fixed["bias"]) < 4 * fixed["se"] / np.sqrt(300)).all()


def test_percentile_interval_is_the_percentiles_of_the_replicates():
    result = parametric_bootstrap(fitted(), 40, random_seed=3, workers=1)
    summary = result.summary(level=0.8)
    column = ("g", "(Intercept)", "", "sd")
    values = result.replicates[column].to_numpy()
    assert summary.loc[column, "lower"] == pytest.approx(np.percentile(values, 10), rel=1e-12)
    assert summary.loc[column, "upper"] == pytest.approx(np.percentile(values, 90), rel=1e-12)
    assert summary.loc[column, "se"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)


def test_default_statistic_equals_the_fits_tables():
    fit = fitted()
    values = default_statistic(fit)
    fixed = fit.fixed_effects["estimate"]
    assert np.allclose(values.xs("fixed", level="factor").to_numpy(), fixed.to_numpy(), rtol=1e-12)
    components = fit.variance_components.set_index("factor")["estimate"]
    assert values[("g", "(Intercept)", "", "variance")] == pytest.approx(components["g"], rel=1e-12)
    assert values[("Residual", "", "", "sigma2")] == pytest.approx(fit.sigma2, rel=1e-12)
    assert values[("Residual", "", "", "sigma")] == pytest.approx(np.sqrt(fit.sigma2), rel=1e-12)


def test_any_function_of_the_fit_even_a_lambda_in_worker_processes():
    fit = fitted()
    icc = parametric_bootstrap(fit, 10, statistic=lambda f: f.icc(), random_seed=1, workers=2)
    assert icc.estimate.iloc[0] == pytest.approx(fit.icc())
    assert icc.replicates.shape == (10, 1) and icc.n_failed == 0
    assert ((icc.replicates.to_numpy() > 0) & (icc.replicates.to_numpy() < 1)).all()


def test_confint_bootstrap_rows_match_the_wald_table():
    fit = fitted("ml")
    wald = fit.confint()
    boot = fit.confint(method="bootstrap", n_boot=30, random_seed=5, workers=1)
    assert list(boot.columns) == list(wald.columns)
    assert boot[["factor", "term", "term2", "parameter"]].equals(wald[["factor", "term", "term2", "parameter"]])
    assert np.allclose(boot["estimate"], wald["estimate"], rtol=1e-10)
    assert (boot["lower"] <= boot["estimate"] + 1e-12).all() and (boot["upper"] >= boot["estimate"] - 1e-12).all()
    assert boot["method"].iloc[0] == "bootstrap (30 of 30 refits, percentile)"
    repeat = fit.confint(method="bootstrap", n_boot=30, random_seed=5, workers=2)
    assert np.array_equal(boot[["lower", "upper"]].to_numpy(), repeat[["lower", "upper"]].to_numpy())


# --- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, match", [
    ({"n_boot": 1}, "n_boot"), ({"n_boot": True}, "n_boot"), ({"n_boot": 10.0}, "n_boot"),
    ({"random_seed": -1}, "random_seed"), ({"random_seed": "seed"}, "random_seed"),
    ({"workers": 0}, "workers"), ({"workers": 1.5}, "workers"),
])
def test_bad_bootstrap_options_are_refused(options, match):
    with pytest.raises(OptionError, match=match):
        parametric_bootstrap(fitted(), **{"n_boot": 5, **options})


def test_bootstrap_options_without_method_bootstrap_and_a_bad_level_are_refused():
    fit = fitted()
    with pytest.raises(OptionError, match="method='bootstrap'"):
        fit.confint(n_boot=100)
    with pytest.raises(OptionError, match="level"):
        parametric_bootstrap(fit, 3, random_seed=1, workers=1).summary(level=95)


def test_a_bayesian_fit_is_refused():
    with pytest.raises(OptionError, match="posterior draws"):
        parametric_bootstrap(SimpleNamespace(method="bayes"), 10)
