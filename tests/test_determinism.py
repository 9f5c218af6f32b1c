"""Repetition gives the same answer: REML twice on the same data is bit-identical, and the Bayesian posterior
does not depend on row order or group labels beyond Monte Carlo error. (Same seed -> identical Bayes draws is
tested in test_bayes_sampling.py; exact row-order and relabelling invariance of REML in test_invariance.py.)"""

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.bayes import SamplingWarning


def test_reml_and_ml_are_bit_identical_when_repeated(hsb):
    for method in ("reml", "ml"):
        first, second = (bh.HLM("mathach ~ meanses + cses + (cses | school)", hsb).fit(method) for _ in range(2))
        pd.testing.assert_frame_equal(first.fixed_effects, second.fixed_effects, check_exact=True)
        pd.testing.assert_frame_equal(first.variance_components, second.variance_components, check_exact=True)
        pd.testing.assert_frame_equal(first.group_effects(), second.group_effects(), check_exact=True)
        assert (first.deviance, first.sigma2, first.n_evaluations) == \
            (second.deviance, second.sigma2, second.n_evaluations)


def _posterior_means_and_mcse(fit) -> dict[str, tuple[float, float]]:
    """Posterior mean and its Monte Carlo standard error for gamma_00 and tau_00."""
    draws = {"gamma": fit.draws("beta").isel(fixed=0), "tau": fit.draws("T_school")[..., 0, 0]}
    return {k: (float(v.mean()), float(az.mcse(v.values, method="mean"))) for k, v in draws.items()}


@pytest.mark.sampling
def test_bayes_posterior_does_not_depend_on_row_order_or_group_labels():
    df = bh.datasets.load("eight_schools").assign(V=lambda d: d["sigma"] ** 2)
    shuffled = df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    shuffled["school"] = "school " + shuffled["school"].astype(str)
    options = {"draws": 1000, "tune": 500, "chains": 2, "random_seed": 21}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        fits = [bh.HLM("y ~ 1 + (1 | school)", data, known_variance="V").fit("bayes", **options)
                for data in (df, shuffled)]
    a, b = (_posterior_means_and_mcse(fit) for fit in fits)
    for name in a:
        (mean_a, se_a), (mean_b, se_b) = a[name], b[name]
        assert abs(mean_a - mean_b) < 3 * np.hypot(se_a, se_b), name
