"""Bayesian engine, sampling: acceptance checks on the book's data sets, route agreement, determinism and
parameter recovery. Draws scale with BAYESHLM_TEST_SCALE (default 1); one module-scoped fit serves many
assertions, and few distinct graphs are compiled (compiled models are cached in-process)."""

import json
import os
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.bayes import SamplingWarning
from bayeshlm.results.contract import wide

pytestmark = pytest.mark.sampling
SCALE = float(os.environ.get("BAYESHLM_TEST_SCALE", "1"))


def _n(k: int) -> int:
    return max(50, int(k * SCALE))


def _fit(model, strict=True, **options):
    """Fit with small test settings; ``strict`` turns a SamplingWarning (bad posterior) into a failure."""
    options = {"draws": _n(500), "tune": _n(500), "chains": 2, "random_seed": 11, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("error" if strict else "ignore", SamplingWarning)
        return model.fit("bayes", **options)


@pytest.fixture(scope="module")
def hsb_fit():
    hsb = bh.datasets.load("hsb")
    model = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
    return _fit(model, draws=_n(1000), tune=_n(1000), chains=4)  # the acceptance setting


@pytest.fixture(scope="module")
def sleep_model():
    return bh.HLM("Reaction ~ Days + (Days | Subject)", bh.datasets.load("sleepstudy"))


@pytest.fixture(scope="module")
def sleep_fit(sleep_model):
    return _fit(sleep_model, draws=_n(1000), tune=_n(500))


# --- HS&B intercepts- and slopes-as-outcomes (marginal route) --------------------------------------
REML_HSB = {"(Intercept)": 12.095, "meanses": 5.333, "sector": 1.227, "cses": 2.939, "meanses:cses": 1.039,
            "sector:cses": -1.643}


def test_hsb_converges_without_divergences(hsb_fit):
    d = hsb_fit.diagnostics
    assert d["divergences"] == 0 and d["max_rhat"] < 1.01 and d["min_ess_bulk"] > 200
    assert hsb_fit.messages == []
    assert hsb_fit.sampler["route"] == "marginal" and hsb_fit.sampler["parameterization"] == {
        "school": "integrated out"}


def test_hsb_posterior_means_agree_with_reml(hsb_fit):
    fe = hsb_fit.fixed_effects
    assert list(fe.columns) == ["estimate", "se", "lower", "upper", "r_hat", "ess_bulk"]
    for name, reml in REML_HSB.items():
        assert abs(fe.loc[name, "estimate"] - reml) < 0.15 * fe.loc[name, "se"], name
    assert hsb_fit.sigma2 == pytest.approx(36.72, abs=3 * 0.6)
    assert hsb_fit.tau["school"].loc["(Intercept)", "(Intercept)"] == pytest.approx(2.38, abs=2 * 0.38)


def test_hsb_group_effects_and_plausible_values(hsb_fit):
    table = hsb_fit.group_effects("school")
    assert table.shape == (320, 5) and list(table.index.names) == ["school", "term"]
    assert list(table.columns) == ["estimate", "se", "lower", "upper", "n"]
    groups = wide(table)
    u = hsb_fit.draws("u_school")
    assert u.dims == ("chain", "draw", "school", "school__coef")
    # coef = gamma_10 + gamma_11 meanses_j + gamma_12 sector_j + u_1j (R&B eq. 2.22)
    gamma = hsb_fit.fixed_effects["estimate"]
    ranef = wide(hsb_fit.random_effects("school"))
    school = bh.datasets.load("hsb").groupby("school")[["meanses", "sector"]].first()
    expected = (gamma["cses"] + gamma["meanses:cses"] * school["meanses"] + gamma["sector:cses"] * school["sector"]
                + ranef["cses"])
    np.testing.assert_allclose(groups["cses"], expected.loc[groups.index], atol=1e-8)
    pv = hsb_fit.plausible_values("school")
    assert pv.loc["(Intercept)", "lower"] < gamma["(Intercept)"] < pv.loc["(Intercept)", "upper"]
    width = pv.loc["(Intercept)", "upper"] - pv.loc["(Intercept)", "lower"]
    assert width == pytest.approx(2 * 1.96 * np.sqrt(2.4), rel=0.2)


def test_hsb_group_effects_agree_with_reml_empirical_bayes(hsb_fit):
    """Issue 8: posterior means of group coefficients within 0.1 posterior SD of REML EB for >= 95% of schools.

    Holds for the intercepts. The cses slopes are shrunk less by full Bayes: REML puts tau_11 near 0.1 (slope
    reliability about 0.2), while the posterior of tau_11 is right-skewed (mean about 0.13) and Bayes averages
    the shrinkage over it, so the slopes agree only to within about half a posterior SD (measured at 4 x 1000
    draws: 53% of schools within 0.1 SD, median gap 0.098 SD; tau_11's 90% interval 0.0008-0.43 around REML's
    0.101). That is the Bayes/EB difference the book discusses (R&B 2002, ch. 13), not an engine error: brms
    under the same priors is as far from EB (57% of slopes within 0.1 SD) and within 0.06 SD of this engine
    for every school (next test); at REML's estimates the engine's group effects are REML's EB estimates."""
    from bayeshlm.results.likelihood_fit import fit_likelihood

    reml = wide(fit_likelihood(hsb_fit.design, method="reml").group_effects("school"))
    bayes, sd = wide(hsb_fit.group_effects("school")), wide(hsb_fit.group_effects("school"), "se")
    gap = {c: np.abs(bayes[c] - reml[c].loc[bayes.index]) / sd[c] for c in ["(Intercept)", "cses"]}
    assert (gap["(Intercept)"] < 0.1).mean() >= 0.95
    assert (gap["cses"] < 0.5).mean() >= 0.95, gap["cses"].describe()
    assert np.corrcoef(bayes["cses"], reml["cses"].loc[bayes.index])[0, 1] > 0.95


def test_hsb_group_effects_agree_with_brms_under_the_same_priors(hsb_fit):
    """The reference for the full-Bayes group coefficients is another sampler of the same posterior: brms 2.18
    (Stan) with bayeshlm's default priors (tests/reference/make_brms_hsb.R, 4 x 1000 draws). Every school's
    posterior mean agrees to within 0.1 posterior SD, for the cses slopes as well, where REML's EB estimates do
    not (previous test); posterior SDs agree to 10%. Monte Carlo error of a difference of means at about 2,000
    effective draws each is about 0.03 SD; tolerances widen with fewer draws (BAYESHLM_TEST_SCALE)."""
    ref = json.loads((Path(__file__).parent / "reference" / "brms_hsb_schools.json").read_text())
    ours = wide(hsb_fit.group_effects("school")).loc[ref["school"]]
    sd = wide(hsb_fit.group_effects("school"), "se").loc[ref["school"]]
    tol = 0.1 / np.sqrt(min(SCALE, 1.0))
    for coef, key in [("(Intercept)", "intercept"), ("cses", "cses")]:
        gap = np.abs(ours[coef] - ref[f"{key}_mean"]) / sd[coef]
        assert (gap < tol).mean() >= 0.95, (coef, gap.describe())
        np.testing.assert_allclose(sd[coef], ref[f"{key}_sd"], rtol=tol)
    tau11 = hsb_fit.draws("tau_school").sel({"school__coef": "cses"})
    assert float(tau11.mean()) == pytest.approx(ref["tau_cses_mean"], rel=tol)


def test_hsb_group_effects_at_the_reml_estimates_are_the_empirical_bayes_estimates(hsb_fit):
    """The slope gap above comes from averaging over tau_11, not from the group-effect draws: given REML's
    gamma, T and sigma^2, the Bayesian engine's exact conditional draws have REML's EB estimates as their mean
    (within 4.5 Monte Carlo SEs, both coefficients, every school) and its conditional variances as their
    variance (within 5%)."""
    from bayeshlm.bayes.marginal import chain_statistics, draw_group_effects
    from bayeshlm.results.likelihood_fit import fit_likelihood

    design = hsb_fit.design
    reml = fit_likelihood(design, method="reml")
    S = 4000
    beta = np.tile(reml.fixed_effects.loc[list(design.fixed_names), "estimate"].to_numpy(), (S, 1))
    L = np.linalg.cholesky(reml.tau["school"].to_numpy())
    u = draw_group_effects(chain_statistics(design, design.chain, []), beta, np.full((S, 1), 1 / reml.sigma2),
                           [np.tile(L, (S, 1, 1))], np.random.default_rng(3))[0]
    eb = reml.conditional_modes("school")
    modes, condvar = eb.modes.to_numpy(), np.diagonal(eb.condvar, axis1=1, axis2=2)
    np.testing.assert_array_less(np.abs(u.mean(0) - modes), 4.5 * np.sqrt(condvar / S))
    np.testing.assert_allclose(u.var(0), condvar, rtol=0.05 + 4 * np.sqrt(2 / S))


def test_hsb_result_describes_itself(hsb_fit):
    text = hsb_fit.summary()
    assert "tau_school: HalfStudentT" in text and "0 divergences" in text and "no problems detected" in text
    vc = hsb_fit.variance_components
    assert list(zip(vc["term"], vc["term2"])) == [("(Intercept)", "(Intercept)"), ("(Intercept)", "cses"),
                                                  ("cses", "cses"), ("(residual)", "(residual)")]
    assert {"divergences", "max_rhat", "min_ess_bulk", "min_ess_tail", "min_bfmi"} <= set(hsb_fit.diagnostics)


# --- sleepstudy: both routes and both samplers agree -------------------------------------------------
def test_sleepstudy_converges(sleep_fit):
    d = sleep_fit.diagnostics
    assert d["divergences"] == 0 and d["max_rhat"] < 1.01


def test_marginal_and_sampled_routes_give_the_same_posterior(sleepstudy):
    """Sleepstudy with uncorrelated effects: integrated out (compiled kernel) and sampled (PyMC graph). The
    sampled graph's correlated effects (MvNormal, LKJ) are checked exactly against the kernel's density in
    test_bayes_kernel.py; compiling them for sampling would cost about 95 s on a machine with empty caches."""
    model = bh.HLM("Reaction ~ Days + (Days || Subject)", sleepstudy)
    marginal = _fit(model, draws=_n(1000), tune=_n(500))
    # 2 short chains: R-hat may exceed 1.01 by noise on the sampled route, so only divergences are checked
    sampled = _fit(model, strict=False, draws=_n(1000), tune=_n(500), route="sampled")
    assert (marginal.sampler["route"], sampled.sampler["route"]) == ("marginal", "sampled")
    assert sampled.diagnostics["divergences"] == 0
    a, b = marginal.fixed_effects, sampled.fixed_effects
    se = np.maximum(a["se"], b["se"])
    assert (np.abs(a["estimate"] - b["estimate"]) < 0.25 * se).all()
    assert (np.abs(a["se"] / b["se"] - 1) < 0.2).all()
    ga, gb = wide(marginal.group_effects()), wide(sampled.group_effects())
    assert (np.abs(ga["Days"] - gb["Days"]) < 0.25 * wide(sampled.group_effects(), "se")["Days"]).all()
    va, vb = marginal.variance_components, sampled.variance_components
    assert np.allclose(va["estimate"], vb["estimate"], rtol=0.2, atol=0.25 * vb["se"])


def test_same_seed_gives_identical_draws_and_reuses_the_compiled_model(sleep_model, sleep_fit):
    again = _fit(sleep_model, draws=_n(1000), tune=_n(500))
    assert again.sampler["compiled_model_reused"]
    np.testing.assert_array_equal(again.draws("beta").values, sleep_fit.draws("beta").values)
    np.testing.assert_array_equal(again.draws("u_Subject").values, sleep_fit.draws("u_Subject").values)
    other = _fit(sleep_model, draws=_n(1000), tune=_n(500), random_seed=12)
    assert not np.array_equal(other.draws("beta").values, sleep_fit.draws("beta").values)


def test_pymc_sampler_agrees_with_nutpie(sleep_model, sleep_fit):
    fit = _fit(sleep_model, draws=_n(1000), tune=_n(500), sampler="pymc")
    assert fit.sampler["sampler"] == "pymc" and fit.diagnostics["divergences"] == 0
    a, b = sleep_fit.fixed_effects, fit.fixed_effects
    assert (np.abs(a["estimate"] - b["estimate"]) < 0.25 * a["se"]).all()


# --- V-known: eight schools and the teacher-expectancy meta-analysis ---------------------------------
def test_eight_schools_v_known_has_no_divergences():
    df = bh.datasets.load("eight_schools").assign(V=lambda d: d["sigma"] ** 2)
    fit = _fit(bh.HLM("y ~ 1 + (1 | school)", df, known_variance="V"), draws=_n(1000))
    assert fit.diagnostics["divergences"] == 0 and fit.diagnostics["max_rhat"] < 1.01
    assert fit.sigma2 is None and "sigma" not in fit.priors
    # BDA3 ch. 5: posterior mean of mu about 7.9 (flat-ish priors); ours are weakly informative
    assert 5 < fit.fixed_effects.loc["(Intercept)", "estimate"] < 11
    assert wide(fit.group_effects()).shape == (8, 1)


def test_teacher_expectancy_flat_priors_reproduce_chapter_13():
    """R&B (2002) ch. 13 with flat priors on gamma and tau: E(gamma|d) = 0.096, P(gamma <= 0 | d) = 0.063."""
    df = bh.datasets.load("teacher_expectancy")
    fit = _fit(bh.HLM("yi ~ 1 + (1 | study)", df, known_variance="vi"), priors="flat",
               draws=_n(2000), tune=_n(1000))
    gamma = fit.draws("beta").sel(fixed="(Intercept)").values.ravel()
    assert gamma.mean() == pytest.approx(0.096, abs=0.01)
    assert (gamma <= 0).mean() == pytest.approx(0.063, abs=0.02)
    assert fit.priors["(Intercept)"] == "Flat()" and fit.priors["tau_study"] == "HalfFlat() on the variance"
    # study 4 (d = 1.18) shrinks to about 0.33 (Table 13.1 panel b)
    study4 = wide(fit.group_effects()).iloc[3]["(Intercept)"]
    assert study4 == pytest.approx(0.334, abs=0.03)


# --- parameter recovery ------------------------------------------------------------------------------
def test_parameter_recovery_by_simulation():
    """Ten simulated data sets of one shape (so one compiled graph serves all): 90% intervals should cover
    the true gamma, tau and sigma in about 90% of cases; we require at least 75% of 50 intervals."""
    rng = np.random.default_rng(2024)
    J, n = 30, 12
    gamma, tau, sigma = np.array([10.0, 2.0]), np.array([1.5, 0.5]), 2.0
    covered, total = 0, 0
    for _ in range(10):
        g = np.repeat(np.arange(J), n)
        x = rng.normal(size=J * n)
        u = rng.normal(size=(J, 2)) * tau
        y = gamma[0] + u[g, 0] + (gamma[1] + u[g, 1]) * x + rng.normal(scale=sigma, size=J * n)
        df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
        fit = _fit(bh.HLM("y ~ x + (x || g)", df), strict=False, draws=_n(500), tune=_n(500),
                   random_seed=int(rng.integers(1e6)))
        assert fit.diagnostics["divergences"] <= 2
        post = fit.posterior["posterior"]
        checks = [(post["beta"].values[..., k], gamma[k]) for k in range(2)]
        checks += [(post["tau_g"].values[..., k], tau[k]) for k in range(2)] + [(post["sigma"].values, sigma)]
        for draws, truth in checks:
            lo, hi = np.quantile(draws, [0.05, 0.95])
            covered += lo <= truth <= hi
            total += 1
    assert covered / total >= 0.75


# --- three-level growth and cross-classification -----------------------------------------------------
def test_egsingle_three_level_growth_integrates_both_levels_and_matches_reml(egsingle):
    """Issue 8 acceptance: egsingle math ~ year + (year | childid) + (year | schoolid), default settings."""
    model = bh.HLM("math ~ year + (year | childid) + (year | schoolid)", egsingle)
    fit = _fit(model)
    assert fit.sampler["parameterization"] == {"childid": "integrated out", "schoolid": "integrated out"}
    d = fit.diagnostics
    assert d["divergences"] == 0 and d["max_rhat"] < 1.01 and d["min_ess_bulk"] > 200
    reml = model.fit("reml")
    gap = (fit.fixed_effects["estimate"] - reml.fixed_effects["estimate"]).abs() / fit.fixed_effects["se"]
    assert (gap < 0.25).all(), gap
    vc = fit.variance_components.set_index(["factor", "term", "term2"])
    reml_vc = reml.variance_components
    sigma2 = vc.loc[("Residual", "(residual)", "(residual)")]
    assert abs(sigma2["estimate"] - reml_vc["estimate"].iloc[-1]) < 0.5 * sigma2["se"]
    for factor in ("childid", "schoolid"):
        tau = vc.loc[(factor, "(Intercept)", "(Intercept)")]
        reml_tau = reml.tau[factor].loc["(Intercept)", "(Intercept)"]
        assert abs(tau["estimate"] - reml_tau) < 0.5 * tau["se"], (factor, tau["estimate"], reml_tau)
        bayes_u, reml_u = wide(fit.group_effects(factor)), wide(reml.group_effects(factor))
        assert np.corrcoef(bayes_u["year"], reml_u["year"].loc[bayes_u.index])[0, 1] > 0.98


def test_scotssec_crossed_samples_the_smaller_factor_and_matches_reml(scotssec):
    """Issue 8 acceptance: ScotsSec attain ~ verbal + sex + (1 | primary) + (1 | second), default settings."""
    model = bh.HLM("attain ~ verbal + sex + (1 | primary) + (1 | second)", scotssec)
    fit = _fit(model, chains=4, draws=_n(1000), tune=_n(1000))  # the default setting (R-hat over 4 chains)
    assert fit.sampler["parameterization"]["primary"] == "integrated out"
    assert fit.sampler["parameterization"]["second"] in ("centred", "non-centred")
    assert fit.sampler["log_density"] == "compiled kernel"  # crossed factors are sampled inside the kernel
    d = fit.diagnostics
    assert d["divergences"] == 0 and d["max_rhat"] < 1.01
    reml = model.fit("reml")
    gap = (fit.fixed_effects["estimate"] - reml.fixed_effects["estimate"]).abs() / fit.fixed_effects["se"]
    assert (gap < 0.25).all(), gap
    assert fit.draws("u_primary").sizes["primary"] == 148 and fit.draws("u_second").sizes["second"] == 19


def test_crossed_factor_with_large_groups_is_centred_on_the_intercept():
    """A sampled crossed factor with ~1,000 rows per group (reliability near 1) is drawn centred; centred on
    zero it leaves a ridge along (beta_0 + c, u_h - c) that gave the intercept a bulk ESS of 19 of 4,000
    draws in the scaling benchmark. Centred on beta_0 (b_h ~ N(beta_0, tau^2)) the ridge is gone."""
    rng = np.random.default_rng(5)
    n, g, h = 20_000, rng.integers(0, 400, size=20_000), rng.integers(0, 20, size=20_000)
    x = rng.standard_normal(n)
    y = 10 + 2 * x + rng.standard_normal(400)[g] + rng.standard_normal(20)[h] + 2 * rng.standard_normal(n)
    model = bh.HLM("y ~ x + (1 | g) + (1 | h)", pd.DataFrame({"y": y, "x": x, "g": g, "h": h}))
    fit = _fit(model, chains=2)
    assert fit.sampler["parameterization"] == {"g": "integrated out", "h": "centred"}
    assert fit.sampler["reliability"]["h"] > 0.99
    ess = float(az.ess(fit.posterior, var_names=["beta"], method="bulk")["beta"].sel(fixed="(Intercept)"))
    assert ess > 0.25 * _n(500) * 2, ess  # the ridge gave under 0.01 draws' worth
    assert fit.diagnostics["max_rhat"] < 1.01
    # u_h = b_h - beta_0 is still the group effect: its draws average to about zero over groups
    assert abs(float(fit.draws("u_h").mean())) < 0.1


def test_three_level_marginal_and_sampled_routes_give_the_same_posterior():
    rng = np.random.default_rng(8)
    school = np.repeat(np.arange(12), 24)
    child = np.repeat(np.arange(72), 4)
    x = np.tile(np.arange(4.0), 72)
    y = 5 + 0.8 * x + rng.normal(scale=1.0, size=12)[school] + rng.normal(scale=0.8, size=72)[child] \
        + rng.normal(scale=0.6, size=len(x))
    df = pd.DataFrame({"y": y, "x": x, "school": school.astype(str), "child": child.astype(str)})
    model = bh.HLM("y ~ x + (1 | child) + (1 | school)", df)
    marginal = _fit(model, draws=_n(1000))
    sampled = _fit(model, strict=False, draws=_n(1000), route="sampled")
    assert sampled.diagnostics["divergences"] == 0
    a, b = marginal.fixed_effects, sampled.fixed_effects
    assert (np.abs(a["estimate"] - b["estimate"]) < 0.25 * a["se"]).all()
    assert (np.abs(a["se"] / b["se"] - 1) < 0.2).all()
    va, vb = marginal.variance_components, sampled.variance_components
    assert np.allclose(va["estimate"], vb["estimate"], rtol=0.2, atol=0.25 * va["se"])
    ua, ub = wide(marginal.group_effects("school")), wide(sampled.group_effects("school"))
    assert (np.abs(ua["(Intercept)"] - ub["(Intercept)"]) < 0.25 * wide(marginal.group_effects("school"), "se")[
        "(Intercept)"]).all()


# --- heterogeneous level-1 variance (R&B Table 5.9 style) ---------------------------------------------
def test_level1_variance_by_sector_matches_the_ml_log_linear_model(hsb):
    """ln sigma^2 = alpha0 + alpha1 sector by Bayes (one SD per sector, alphas derived) beside full ML."""
    model = bh.HLM("mathach ~ sector + cses + (1 | school)", hsb, level1_variance="~ sector")
    fit = _fit(model, chains=4, draws=_n(1000))
    assert fit.diagnostics["divergences"] == 0 and fit.diagnostics["max_rhat"] < 1.01
    ml = model.fit("ml").residual_parameters
    alpha = fit.variance_components.set_index("term").loc[["alpha0", "alpha sector"]]
    gap = np.abs(alpha["estimate"].to_numpy() - ml[["alpha0", "alpha sector"]].to_numpy()) / alpha["se"].to_numpy()
    assert (gap < 0.25).all(), gap
    assert fit.sigma2 == pytest.approx(np.exp(ml["alpha0"]), rel=0.02)


def test_ar1_errors_by_bayes_sit_near_the_ml_fit():
    """Oxboys height ~ age + (age | Subject) with AR(1) errors over 9 consecutive occasions per boy. ML puts
    phi at 0.983 with a singular T (boundary fit); the posterior of phi is left-skewed below 1 (measured mean
    0.91, 95% interval 0.73-0.99), so the check is that its interval covers the ML estimate."""
    model = bh.HLM("height ~ age + (age | Subject)", bh.datasets.load("oxboys"), correlation="ar1", time="Occasion")
    fit = _fit(model, strict=False, chains=4, draws=_n(1000))
    assert fit.diagnostics["divergences"] == 0 and fit.diagnostics["max_rhat"] < 1.02
    ml = model.fit("ml")
    phi = fit.variance_components.set_index("term").loc["phi (AR1)"]
    assert phi["lower"] < ml.residual_parameters["phi (AR1)"] < phi["upper"]
    gap = (fit.fixed_effects["estimate"] - ml.fixed_effects["estimate"]).abs() / fit.fixed_effects["se"]
    assert (gap < 0.25).all(), gap
