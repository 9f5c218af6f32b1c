"""bayes.convergence against ArviZ (arviz_stats 1.x): rank-normalised split R-hat, bulk and tail ESS and E-BFMI
agree to 1e-12 on chains that mix well, mix badly, disagree, are short or odd, are discrete, and are constant."""

import numpy as np
import pytest
from arviz_stats.base import array_stats

from bayeshlm.bayes import convergence


def _ar1(rng, chains, draws, phi, shift=0.0):
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=chains)
    return x + shift * np.arange(chains)[:, None]


def _cases():
    rng = np.random.default_rng(20261207)
    return {
        "independent": rng.normal(size=(4, 1000)),
        "autocorrelated (phi 0.9)": _ar1(rng, 4, 1000, 0.9),
        "antithetic (phi -0.5)": _ar1(rng, 4, 1000, -0.5),
        "chains apart": _ar1(rng, 4, 500, 0.5, shift=0.3),
        "heavy tails": rng.standard_t(2, size=(4, 400)),
        "odd length, two chains": _ar1(rng, 2, 101, 0.7),
        "few draws": rng.normal(size=(3, 7)),
        "discrete with ties": rng.poisson(2.0, size=(4, 300)).astype(float),
        "one chain": _ar1(rng, 1, 800, 0.3),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_rhat_and_ess_equal_arviz(name):
    draws = _cases()[name]
    expected_rhat = array_stats.rhat(draws, method="rank")
    if draws.shape[0] < 2:
        assert np.isnan(convergence.rhat(draws)) and np.isnan(expected_rhat)
    else:
        assert convergence.rhat(draws) == pytest.approx(float(expected_rhat), rel=1e-12)
    assert convergence.ess_bulk(draws) == pytest.approx(float(array_stats.ess(draws, method="bulk")), rel=1e-12)
    tail = array_stats.ess(draws, method="tail", prob=(0.05, 0.95))  # the paper's quantiles (ArviZ 1.x: 11%, 89%)
    assert convergence.ess_tail(draws) == pytest.approx(float(tail), rel=1e-12)


def test_bfmi_equals_arviz():
    energy = _ar1(np.random.default_rng(5), 4, 600, 0.8)
    np.testing.assert_allclose(convergence.bfmi(energy), array_stats.bfmi(energy), rtol=1e-13)


def test_constant_and_undefined_cases():
    constant = np.full((4, 100), 2.5)
    assert convergence.ess_bulk(constant) == 400 == float(array_stats.ess(constant, method="bulk"))
    with_nan = np.random.default_rng(1).normal(size=(4, 100))
    with_nan[2, 7] = np.nan
    for statistic in (convergence.rhat, convergence.ess_bulk, convergence.ess_tail):
        assert np.isnan(statistic(with_nan))
        assert np.isnan(statistic(np.zeros((4, 3))))  # fewer than 4 draws per chain
    assert np.isnan(array_stats.ess(with_nan, method="bulk"))


def test_rhat_flags_chains_that_disagree_and_passes_chains_that_agree():
    rng = np.random.default_rng(9)
    assert convergence.rhat(rng.normal(size=(4, 1000))) < 1.01
    assert convergence.rhat(_ar1(rng, 4, 1000, 0.5, shift=1.0)) > 1.1
