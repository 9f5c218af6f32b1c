"""Fully Bayes V-known meta-analysis (R&B 2002 ch. 13) through ``bh.meta(...).model.fit("bayes")``.

Targets (digest section 3.11): with the book's flat priors (p(gamma) flat, p(tau^2) flat on tau^2 >= 0) the
teacher-expectancy posterior has E(gamma|d) = 0.096 and P(gamma <= 0 | d) = 0.063, and Table 13.1 panel (b) lists
the posterior means of the study effects delta_j. The book integrated on a grid truncated near tau^2 = 0.25, so
its column differs from the untruncated posterior by up to 0.008 (study 4); study 16's printed -0.010 is a typo
(+0.009). The tests therefore check (1) without sampling, that the exact untruncated posterior means (by
quadrature over tau^2, gamma integrated analytically) are within 0.01 of the book's column, and (2) with sampling,
that the MCMC posterior means are within 0.01 of those exact values. Printed posterior SDs are not a target
(the book's omit Var_tau(E[delta_j | tau, d])).

Draws scale with BAYESHLM_TEST_SCALE (default 1), as in tests/test_bayes_sampling.py.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from scipy import stats

import bayeshlm as bh
from bayeshlm.likelihood import BoundaryFitWarning
from bayeshlm.results.contract import wide

SCALE = float(os.environ.get("BAYESHLM_TEST_SCALE", "1"))
# Table 13.1 panel (b), E(delta_j | d); study 16 corrected from the printed -0.010 (digest 3.11)
BOOK_MEANS = np.array([0.050, 0.106, -0.033, 0.334, 0.131, -0.018, 0.010, -0.081, 0.186, 0.350, 0.224, 0.127,
                       0.057, 0.135, -0.060, 0.009, 0.216, 0.074, 0.007])


def _n(k: int) -> int:
    return max(50, int(k * SCALE))


def exact_flat_prior_posterior(y: np.ndarray, v: np.ndarray, upper: float = 5.0, size: int = 200_001):
    """E(gamma|d), P(gamma <= 0|d), E(delta_j|d) and E(tau^2|d) under flat priors on gamma and tau^2
    (R&B eq. 13.24-13.27):

        p(tau^2 | d) ~ (sum_j w_j)^{-1/2} prod_j (V_j + tau^2)^{-1/2} exp(-1/2 sum_j w_j (d_j - gamma(tau^2))^2),
        gamma | tau^2, d ~ N(gamma(tau^2), 1 / sum_j w_j),
        E(delta_j | tau^2, d) = lambda_j d_j + (1 - lambda_j) gamma,

    w_j = 1 / (V_j + tau^2), integrated over a fine grid of tau^2 in [0, upper] (the mass beyond 5 is < 1e-4 here).
    """
    t = np.linspace(0.0, upper, size)[:, None]
    w = 1.0 / (v + t)
    sw = w.sum(axis=1)
    gamma = (w * y).sum(axis=1) / sw
    logp = -0.5 * np.log(sw) - 0.5 * np.log(v + t).sum(axis=1) - 0.5 * (w * (y - gamma[:, None]) ** 2).sum(axis=1)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    lam = t / (t + v)
    delta = lam * y + (1 - lam) * gamma[:, None]
    return p @ gamma, p @ stats.norm.cdf(-gamma * np.sqrt(sw)), p @ delta, p @ t[:, 0]


def teacher_expectancy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        return bh.meta("yi ~ 1", bh.datasets.load("teacher_expectancy"), vi="vi", study="study")


def test_exact_posterior_reproduces_the_book():
    data = bh.datasets.load("teacher_expectancy")
    mean_gamma, p_negative, means, _ = exact_flat_prior_posterior(data["yi"].to_numpy(), data["vi"].to_numpy())
    assert mean_gamma == pytest.approx(0.096, abs=0.002) and p_negative == pytest.approx(0.063, abs=0.002)
    np.testing.assert_allclose(means, BOOK_MEANS, atol=0.01)


@pytest.mark.sampling
def test_flat_priors_reproduce_chapter_13():
    meta = teacher_expectancy()
    fit = meta.model.fit("bayes", priors="flat", draws=_n(2500), tune=_n(1000), chains=4, random_seed=3)
    assert fit.diagnostics["divergences"] == 0
    gamma = fit.draws("beta").sel(fixed="(Intercept)").values.ravel()
    assert gamma.mean() == pytest.approx(0.096, abs=0.01)
    assert (gamma <= 0).mean() == pytest.approx(0.063, abs=0.02)
    data = bh.datasets.load("teacher_expectancy")
    _, _, exact, _ = exact_flat_prior_posterior(data["yi"].to_numpy(), data["vi"].to_numpy())
    posterior_means = wide(fit.group_effects("study"))["(Intercept)"].to_numpy()
    np.testing.assert_allclose(posterior_means, exact, atol=0.01)
    # Bayes averages over tau^2 instead of plugging in its REML estimate: EB (REML) shrinks study 4 harder
    assert posterior_means[3] > meta.study_effects["eb"].iloc[3] + 0.05


@pytest.mark.sampling
def test_eight_schools_default_priors_have_no_divergences():
    frame = bh.datasets.load("eight_schools").assign(vi=lambda d: d["sigma"] ** 2)
    with pytest.warns(BoundaryFitWarning):
        meta = bh.meta("y ~ 1", frame, vi="vi", study="school")
    fit = meta.model.fit("bayes", draws=_n(1000), tune=_n(1000), chains=4, random_seed=5)
    assert fit.diagnostics["divergences"] == 0 and fit.diagnostics["max_rhat"] < 1.01
    # REML sets tau^2 = 0 (complete pooling); the posterior keeps tau^2 > 0, so school effects differ
    assert np.ptp(wide(fit.group_effects("school"))["(Intercept)"]) > 0.5
    assert 4 < fit.fixed_effects.loc["(Intercept)", "estimate"] < 11


def test_bayes_options_need_method_bayes():
    with pytest.raises(bh.OptionError, match="method='bayes'"):
        bh.meta("yi ~ 1", bh.datasets.load("teacher_expectancy"), vi="vi", draws=100)


@pytest.mark.sampling
def test_meta_method_bayes_reports_meta_analytic_posteriors():
    """bh.meta(..., method="bayes"): the posteriors of gamma, tau^2 and the study effects match the exact flat-prior
    posterior (quadrature), and the posterior-predictive interval for a new study is wider than REML's, which
    plugs in tau^2 = 0.019 although E(tau^2 | d) = 0.048."""
    data = bh.datasets.load("teacher_expectancy")
    fit = bh.meta("yi ~ 1", data, vi="vi", study="study", method="bayes", priors="flat", draws=_n(2500),
                  tune=_n(1000), chains=4, random_seed=3)
    assert fit.diagnostics["divergences"] == 0
    mean_gamma, p_negative, exact, mean_tau2 = exact_flat_prior_posterior(data["yi"].to_numpy(),
                                                                          data["vi"].to_numpy())
    gamma = fit.fixed_effects.loc["(Intercept)"]
    assert gamma["mean"] == pytest.approx(mean_gamma, abs=0.01)
    assert gamma["p_below_zero"] == pytest.approx(p_negative, abs=0.02)
    np.testing.assert_allclose(fit.study_effects["mean"], exact, atol=0.01)
    # E(tau^2 | d) = 0.0485 (digest 3.11); the posterior is right-skewed (long Monte Carlo tail), so allow 0.008
    het = fit.heterogeneity
    assert het.loc["tau2", "mean"] == pytest.approx(mean_tau2, abs=0.008)
    assert het.loc["tau2", "mean"] > fit.reml.tau2 and 0 < het.loc["I2", "mean"] < 100
    bayes, reml = fit.prediction(), fit.reml.prediction()
    assert bayes["pi_lower"] < reml["pi_lower"] and bayes["pi_upper"] > reml["pi_upper"]
    assert bayes["pi_upper"] - bayes["pi_lower"] > bayes["ci_upper"] - bayes["ci_lower"]
    assert "Posterior beside REML" in fit.summary()


@pytest.mark.sampling
def test_meta_method_bayes_explains_a_boundary_reml_fit():
    frame = bh.datasets.load("eight_schools").assign(vi=lambda d: d["sigma"] ** 2)
    fit = bh.meta("y ~ 1", frame, vi="vi", study="school", method="bayes", draws=_n(1000), tune=_n(1000), chains=4,
                  random_seed=5)  # the same graph as the eight-schools test above: compiled once per process
    assert fit.reml.boundary and fit.reml.tau2 == 0 and len(fit.notes) == 1
    assert "boundary" in fit.notes[0] and fit.notes[0] in fit.summary()
    assert fit.heterogeneity.loc["tau2", "median"] > 0 and np.ptp(fit.study_effects["mean"]) > 0.5
