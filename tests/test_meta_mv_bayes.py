"""Full Bayes for the multivariate V-known meta-analysis (bh.meta_mv(..., method="bayes")) on dat.berkey1998.

Exact (no sampling): the model's log-density at (gamma, T) equals the ML log-likelihood of the REML engine
(bayeshlm.meta.multivariate) at the same point, for all studies reporting both outcomes (one batch) and with two
studies reporting one outcome (two batches); the draws of the study effects have the conditional mean and covariance
of R&B eq. 3.52 given (gamma, T).

Sampling (4 chains x 1000 draws at BAYESHLM_TEST_SCALE=1): zero divergences and R-hat < 1.01 with the defaults;
the posterior means of gamma lie within 0.25 posterior SD of REML. Why that tolerance: with 5 studies the posterior of
T is wide and right-skewed (posterior mean of tau^2 well above the REML estimate, the correlation barely identified),
so the GLS weights averaged over T differ from the weights at T_REML and gamma's posterior mean moves, but only by a
fraction of its own uncertainty; 0.25 SD is about 4 Monte Carlo SEs at bulk ESS >= 1600, and a wrong likelihood or
prior location (e.g. a sign or index error in the batch algebra) moves gamma by more than that. Same seed, same
process: identical draws.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pymc as pm
import pytest

import bayeshlm as bh
from bayeshlm.bayes import Prior
from bayeshlm.errors import OptionError
from bayeshlm.meta import multivariate_bayes as mvb
from bayeshlm.meta.multivariate import _Criterion

SCALE = float(os.environ.get("BAYESHLM_TEST_SCALE", "1"))
ARGS = ("yi", "outcome", "trial")


def _n(k: int) -> int:
    return max(50, int(k * SCALE))


@pytest.fixture(scope="module")
def berkey():
    return bh.datasets.load("berkey")


def _reml(data):
    return bh.meta_mv(data, *ARGS, V=["v1i", "v2i"])


def _partial(data):
    """Trials 1 and 3 report PD only (rows 1 and 5 are their AL effects)."""
    return data.drop(index=[1, 5]).reset_index(drop=True)


@pytest.mark.parametrize("partial", [False, True], ids=["both-outcomes", "some-outcomes"])
def test_model_log_density_equals_the_ml_log_likelihood(berkey, partial):
    reml = _reml(_partial(berkey) if partial else berkey)
    studies, names = reml._studies, list(reml.vcov.index)
    model, graph = mvb.build_model(studies, 2, names, reml.outcomes, mvb.resolve_priors(studies, 2, names, None))
    assert len(model.potentials) == (2 if partial else 1)
    ml = _Criterion(studies, 2, reml=False)
    for T in (reml.tau.to_numpy(), np.array([[0.05, -0.01], [-0.01, 0.02]])):
        _, XSX, XSy, _ = ml.gls(T)
        gamma = np.linalg.solve(XSX, XSy)  # the deviance profiles gamma out at its GLS value
        sd = np.sqrt(np.diag(T))
        fixed = pm.do(model, {"beta": gamma, "tau": sd, "corr": np.linalg.cholesky(T / np.outer(sd, sd))})
        logp = fixed.compile_logp(vars=fixed.potentials, mode="FAST_COMPILE")({})
        assert logp == pytest.approx(-0.5 * ml.deviance(np.linalg.cholesky(T)[np.tril_indices(2)]), abs=1e-10)


def test_study_effect_draws_follow_their_conditional_posterior(berkey):
    reml = _reml(_partial(berkey))
    s = reml._studies
    T, gamma = reml.tau.to_numpy(), reml.fixed_effects["estimate"].to_numpy()
    S = 20_000
    b = mvb.draw_study_effects(s, 2, np.tile(gamma, (S, 1)), np.tile(np.linalg.cholesky(T), (S, 1, 1)),
                               np.random.default_rng(0))
    for j, label in enumerate(s.levels):
        rows = np.flatnonzero(s.labels == label)
        Z = np.eye(2)[s.codes[rows]]
        Sigma_inv = np.linalg.inv(s.V_all[np.ix_(rows, rows)] + Z @ T @ Z.T)
        mean = T @ Z.T @ Sigma_inv @ (s.y_all[rows] - s.X_all[rows] @ gamma)  # R&B eq. 3.52, with T Z' Sigma^-1
        cov = T - T @ Z.T @ Sigma_inv @ Z @ T
        assert np.all(np.abs(b[:, j].mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / S))
        sd = np.sqrt(np.diag(cov))
        assert np.all(np.abs(np.cov(b[:, j].T) - cov) < 5 * np.outer(sd, sd) / np.sqrt(S))  # Monte Carlo SEs
    # reported effects: the conditional mean is the REML fit's EB estimate minus the fitted value
    eb = reml.study_effects
    picked = b.mean(0)[s.levels.get_indexer(s.labels), s.codes]
    np.testing.assert_allclose(picked, eb["eb"] - eb["fitted"], atol=0.003)


def test_priors_and_options(berkey):
    reml = _reml(berkey)
    studies, names = reml._studies, list(reml.vcov.index)
    default = mvb.resolve_priors(studies, 2, names, None)
    assert default.beta["AL"].params["mu"] == pytest.approx(berkey.query("outcome == 'AL'")["yi"].mean())
    flat = mvb.resolve_priors(studies, 2, names, "flat")
    assert flat.tau.on == "variance" and flat.corr.eta == 1 and flat.beta["PD"].dist == "Flat"
    mixed = mvb.resolve_priors(studies, 2, names, {"beta": Prior("Normal", mu=0, sigma=1),
                                                   "PD": Prior("Normal", mu=0, sigma=5), "corr": 4})
    assert float(mixed.beta["AL"].params["sigma"]) == 1 and float(mixed.beta["PD"].params["sigma"]) == 5
    assert mixed.corr.eta == 4
    with pytest.raises(OptionError, match="'tau'"):
        mvb.resolve_priors(studies, 2, names, {"tau2": Prior("HalfNormal", sigma=1)})
    with pytest.raises(OptionError, match="draws"):
        bh.meta_mv(berkey, *ARGS, V=["v1i", "v2i"], method="bayes", drawz=10)
    with pytest.raises(OptionError, match="method='bayes'"):
        bh.meta_mv(berkey, *ARGS, V=["v1i", "v2i"], draws=10)
    # the flat-prior propriety check: 2 studies for AL leave k - p = 1
    problems = mvb._flat_prior_problems(_reml(berkey[berkey["trial"] > 3].reset_index(drop=True))._studies, 2,
                                        names, reml.outcomes)
    assert len(problems) == 2 and "improper" in problems[0]
    problems = mvb._flat_prior_problems(studies, 2, names, reml.outcomes)  # 5 studies: k - p = 4
    assert len(problems) == 2 and "no finite posterior mean" in problems[1]


@pytest.fixture(scope="module")
def bayes(berkey):
    return bh.meta_mv(berkey, *ARGS, V=["v1i", "v2i"], method="bayes", draws=_n(1000), tune=_n(1000), chains=4,
                      random_seed=11)


@pytest.mark.sampling
def test_default_priors_sample_cleanly_and_agree_with_reml(bayes):
    d = bayes.diagnostics
    assert d["divergences"] == 0 and d["max_rhat"] < 1.01 and bayes.messages == []
    table = bayes.comparison()
    assert (table.loc[["AL", "PD"], "shift_in_sd"].abs() < 0.25).all()
    # with 5 studies tau^2's posterior is right-skewed: its mean lies above the REML estimate
    assert (table.loc[["tau2(AL)", "tau2(PD)"], "mean"] > table.loc[["tau2(AL)", "tau2(PD)"], "reml"]).all()
    post = bayes.posterior["posterior"]
    assert list(post["T"].coords["outcome"].values) == ["AL", "PD"] and post["delta"].sizes["trial"] == 5
    effects = bayes.study_effects
    assert list(effects.columns[:3]) == ["trial", "outcome", "effect"]
    assert np.all((effects["eti_lower"] < effects["mean"]) & (effects["mean"] < effects["eti_upper"]))
    assert "Posterior beside REML" in bayes.summary()


@pytest.mark.sampling
def test_same_seed_gives_identical_draws(berkey, bayes):
    again = bh.meta_mv(berkey, *ARGS, V=["v1i", "v2i"], method="bayes", draws=_n(1000), tune=_n(1000), chains=4,
                       random_seed=11)
    assert again.sampler["compiled_model_reused"]
    for name in ("beta", "T", "delta"):
        np.testing.assert_array_equal(again.draws(name).values, bayes.draws(name).values)
    pd.testing.assert_frame_equal(again.comparison(), bayes.comparison())
