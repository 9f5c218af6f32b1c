"""Leave-one-group-out cross-validation and ArviZ's LOO tools on Bayesian fits (issue 25).

The PSIS-LOO estimate from the marginal (per group) log-likelihood is checked against exact refits, one per
left-out group, whose densities are computed densely here (benchmarks/logo_exact.py runs the same comparison at
full scale; its numbers are in docs/calibration.md, "Leave-one-group-out cross-validation"). Then az.loo,
az.compare, az.plot_ppc_dist and az.loo_pit run on fits of the four book data sets.
"""

import warnings

import arviz as az
import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import special, stats

import bayeshlm as bh
from bayeshlm.design.design import indicator_matrix
from bayeshlm.errors import OptionError

matplotlib.use("Agg")
pytestmark = pytest.mark.sampling


def _fit(formula: str, data: pd.DataFrame, **options):
    settings = {"draws": 100, "tune": 100, "chains": 2, "random_seed": 3} | options
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bh.HLM(formula, data).fit("bayes", **settings)


def _loo(tree):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.loo(tree, pointwise=True)


def _random_slope_data(groups: int, size: int, slope_sd: float, seed: int) -> pd.DataFrame:
    """y = 1 + 0.5 x + u0 + u1 x + r; u0 ~ N(0, 1), u1 ~ N(0, slope_sd^2), r ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), size)
    x = rng.normal(size=g.size)
    y = 1 + 0.5 * x + rng.normal(size=groups)[g] + slope_sd * rng.normal(size=groups)[g] * x + rng.normal(size=g.size)
    return pd.DataFrame({"g": [f"g{j:02d}" for j in g], "x": x, "y": y})


# --- PSIS-LOO of the marginal log-likelihood against exact leave-one-group-out refits -------------------------

def _exact_left_out_density(refit, X: np.ndarray, Z: np.ndarray, y: np.ndarray) -> float:
    """log mean_s N(y | X gamma_s, Z T_s Z' + sigma_s^2 I) over the refit's draws, by dense algebra."""
    beta = refit.draws("beta").transpose("chain", "draw", ...).values.reshape(-1, X.shape[1])
    T = refit.draws("T_g").transpose("chain", "draw", ...).values.reshape(-1, Z.shape[1], Z.shape[1])
    sigma = refit.draws("sigma").transpose("chain", "draw").values.reshape(-1)
    values = [stats.multivariate_normal(X @ b, Z @ t @ Z.T + s ** 2 * np.eye(len(y))).logpdf(y)
              for b, t, s in zip(beta, T, sigma)]
    return float(special.logsumexp(values) - np.log(len(values)))


def test_leave_one_group_out_psis_matches_exact_refits():
    """8 groups of 8 rows, random slopes; 2 chains x 500 draws for the fit and for each of the 8 refits.
    The issue asks for agreement within 2 SE of the elpd (2 x 5.2 here); the test also holds the total to 0.6
    and each group to 0.2 (measured: total 0.31, PSIS-LOO slightly optimistic; largest group gap 0.08; every
    Pareto k below 0.43). With 0.9 log|M| in place of log|M| in the marginal density the total gap was 0.84.
    At full scale (4 chains x 1000 draws) the gaps are 0.2-0.5 in totals of -146 to -886: docs/calibration.md."""
    data = _random_slope_data(groups=8, size=8, slope_sd=0.5, seed=11)
    formula, options = "y ~ x + (x | g)", {"draws": 500, "tune": 300, "random_seed": 2026}
    loo = _loo(_fit(formula, data, **options).log_likelihood("marginal"))
    assert loo.n_data_points == 8

    design = bh.HLM(formula, data).design
    f = design.factor("g")
    exact = []
    for j in range(f.n_groups):
        inside = f.codes == j
        refit = _fit(formula, data[~inside].reset_index(drop=True), **options)
        exact.append(_exact_left_out_density(refit, design.X[inside], f.Z[inside], design.y[inside]))
    exact = np.array(exact)

    gap = loo.elpd - exact.sum()
    assert abs(gap) < 2 * loo.se  # the criterion
    assert abs(gap) < 0.6
    good = loo.pareto_k.values <= loo.good_k
    assert good.all()
    np.testing.assert_allclose(loo.elpd_i.values, exact, atol=0.2)


# --- ArviZ's tools on the four book data sets ---------------------------------------------------------------------

# data set: (richer model, smaller model, log-likelihood kind). Crossed factors (ScotsSec) do not split the data into
# independent groups, so their comparison is by observation.
BOOK_MODELS = {
    "hsb": ("mathach ~ ses + (ses | school)", "mathach ~ 1 + (1 | school)", "marginal"),
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "Reaction ~ 1 + (1 | Subject)", "marginal"),
    "egsingle": ("math ~ year + (year | childid) + (year | schoolid)", "math ~ 1 + (1 | childid) + (1 | schoolid)",
                 "marginal"),
    "scotssec": ("attain ~ verbal + sex + (1 | primary) + (1 | second)", "attain ~ 1 + (1 | primary) + (1 | second)",
                 "conditional"),
}


@pytest.mark.parametrize("dataset", sorted(BOOK_MODELS))
def test_arviz_loo_compare_and_predictive_plots_run_on_book_data(dataset):
    richer, smaller, kind = BOOK_MODELS[dataset]
    data = bh.datasets.load(dataset)
    fits = {"richer": _fit(richer, data, draws=50), "smaller": _fit(smaller, data, draws=50)}
    loos = {name: _loo(fit.log_likelihood(kind)) for name, fit in fits.items()}
    outcome = fits["richer"].design.outcome_name
    for name, loo in loos.items():
        fit = fits[name]
        units = fit.design.n_obs if kind == "conditional" else fit.design.chain[-1].n_groups
        assert loo.n_data_points == units and loo.n_samples == 100
        assert np.isfinite(loo.elpd) and np.isfinite(loo.se) and loo.se > 0
        k = np.asarray(loo.pareto_k)
        assert k.shape == (units,) and np.isfinite(k).all()
        # p_loo = lpd - elpd_loo, lpd = sum_i log mean_s p(y_i | theta_s) from the fit's log-likelihood group; it
        # is positive and below the number of units. It is not below every model's parameter count: sleepstudy's
        # random-slope model has p_loo near 12 with 6 parameters, confirmed by exact refits (docs/calibration.md)
        values = fit.posterior["log_likelihood"][outcome].transpose("chain", "draw", ...).values.reshape(100, -1)
        lpd = (special.logsumexp(values, axis=0) - np.log(100)).sum()
        assert loo.p == pytest.approx(lpd - loo.elpd, rel=1e-9)
        assert 0 < loo.p < units

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(loos, round_to="none")
    # each smaller model drops a strong predictor (and, except in ScotsSec, a random slope): clearly worse
    assert table.index[0] == "richer"
    assert -table.loc["smaller", "elpd_diff"] > 2 * table.loc["smaller", "dse"]
    assert table.loc["smaller", "elpd_diff"] == pytest.approx(loos["smaller"].elpd - loos["richer"].elpd, rel=1e-9)

    tree = fits["richer"].posterior_predictive(random_seed=1)
    assert tree["posterior_predictive"][outcome].shape == (2, 50, data.shape[0])
    assert az.plot_ppc_dist(tree, num_samples=20) is not None
    matplotlib.pyplot.close("all")


def test_loo_pit_of_the_conditional_log_likelihood():
    """LOO-PIT needs replicates and a per-observation log-likelihood on the same draws and rows; its values are
    the share of each row's replicates at or below y_i, weighted by the PSIS leave-one-out weights."""
    fit = _fit("Reaction ~ Days + (Days | Subject)", bh.datasets.load("sleepstudy"))
    fit.posterior_predictive(random_seed=2)
    tree = fit.log_likelihood("conditional")
    pit = az.loo_pit(tree)["Reaction"]
    assert pit.dims == ("obs",) and pit.size == 180
    assert np.isfinite(pit).all()
    assert pit.min() >= 0 and pit.max() <= 1 + 1e-12  # ArviZ's weighted sums can end at 1 + 2e-16
    # LOO-PIT is the leave-one-out weighted share of replicates below y_i: by hand with ArviZ's PSIS weights
    loo = _loo(tree)
    weights = np.exp(loo.log_weights.transpose("chain", "draw", "obs").values.reshape(-1, 180))
    replicates = tree["posterior_predictive"]["Reaction"].transpose("chain", "draw", "obs").values.reshape(-1, 180)
    by_hand = (weights * (replicates <= fit.design.y)).sum(0) / weights.sum(0)
    np.testing.assert_allclose(pit.values, by_hand, atol=1e-12)  # measured 9e-16
    assert abs(pit.mean() - 0.5) < 0.05  # a calibrated predictive has uniform LOO-PIT (measured mean 0.501)


# --- one level-1 variance per stratum (level1_variance=) ------------------------------------------------------------

def _stratum_sd(fit, column: str, data: pd.DataFrame) -> np.ndarray:
    """(chain, draw, n) each row's level-1 SD from the sigma_strata draws, matched by the stratum labels."""
    strata = fit.draws("sigma_strata")
    labels = [str(label).split("=", 1)[1] for label in strata["stratum"].values]
    codes = np.array([labels.index(str(v)) for v in data[column]])
    return strata.transpose("chain", "draw", "stratum").values[..., codes]


def test_level1_variance_strata_enter_predictive_draws_and_both_log_likelihoods(sleepstudy):
    """Refused before ('not implemented yet'). Checked against dense normals with each row's stratum SD; the
    replicates' level-1 noise has the stratum's variance in each stratum."""
    data = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 5, "early", "late"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bh.HLM("Reaction ~ Days + (Days | Subject)", data, level1_variance="phase").fit(
            "bayes", draws=60, tune=100, chains=2, random_seed=7)
    d, f = fit.design, fit.design.factor("Subject")
    sd = _stratum_sd(fit, "phase", data)
    assert np.median(sd[..., data["phase"].to_numpy() == "late"]) > 1.3 * np.median(sd[..., 0])  # distinct SDs
    beta, T = fit.draws("beta").values, fit.draws("T_Subject").values
    u = fit.draws("u_Subject").transpose("chain", "draw", "Subject", "Subject__coef").values
    eta = np.einsum("np,cdp->cdn", d.X, beta) + np.einsum("nq,cdnq->cdn", f.Z, u[:, :, f.codes])

    conditional = fit.log_likelihood("conditional")["log_likelihood"]["Reaction"].values
    np.testing.assert_allclose(conditional, stats.norm.logpdf(d.y, eta, sd), rtol=1e-10)
    marginal = fit.log_likelihood("marginal")["log_likelihood"]["Reaction"].values
    for c, s in [(0, 4), (1, 55)]:
        for j in (0, 9, 17):
            rows = f.codes == j
            V = f.Z[rows] @ T[c, s] @ f.Z[rows].T + np.diag(sd[c, s, rows] ** 2)
            dense = stats.multivariate_normal(d.X[rows] @ beta[c, s], V).logpdf(d.y[rows])
            assert marginal[c, s, j] == pytest.approx(dense, rel=1e-10)

    replicates = fit.posterior_predictive(random_seed=3)["posterior_predictive"]["Reaction"].values
    standardised = (replicates - eta) / sd  # N(0, 1) in every stratum: 60 x 2 x 90 values each
    for phase in ("early", "late"):
        assert standardised[..., data["phase"].to_numpy() == phase].var() == pytest.approx(1, abs=0.05)
    assert np.isfinite(_loo(fit.posterior).elpd)


def test_level1_variance_strata_in_the_three_level_marginal_log_likelihood():
    """Refused before. Without sampling (the PyMC graph of this model compiles for about 70 s): random parameter
    values in a stand-in for a fit (design + posterior draws), against dense normals per school."""
    from types import SimpleNamespace

    from bayeshlm.bayes import predictive_data
    from bayeshlm.bayes.plan import level1_strata

    rng = np.random.default_rng(8)
    school, kid, x = np.repeat(np.arange(6), 16), np.repeat(np.arange(24), 4), np.tile(np.arange(4.0), 24)
    data = pd.DataFrame({"school": school.astype(str), "kid": kid.astype(str), "x": x,
                         "sex": rng.choice(["f", "m"], size=96), "y": 50 + rng.normal(size=96)})
    d = bh.HLM("y ~ x + (1 | kid) + (x | school)", data, level1_variance="sex").design
    chains, draws = 2, 3

    def covariance(q):
        L = np.tril(rng.normal(size=(chains, draws, q, q)))
        return L @ np.swapaxes(L, -1, -2) + 0.1 * np.eye(q)

    sigma_strata = rng.uniform(0.3, 2.0, size=(chains, draws, 2))
    posterior = xr.Dataset({
        "beta": (("chain", "draw", "fixed"), rng.normal(size=(chains, draws, 2)) + [50, 0]),
        "sigma": (("chain", "draw"), sigma_strata[..., 0]),
        "sigma_strata": (("chain", "draw", "stratum"), sigma_strata),
        "T_kid": (("chain", "draw", "kid__coef", "kid__coef2"), covariance(1)),
        "T_school": (("chain", "draw", "school__coef", "school__coef2"), covariance(2))})
    fit = SimpleNamespace(design=d, posterior=xr.DataTree.from_dict({"posterior": posterior}))
    fit.draws = lambda name: posterior[name]
    values = predictive_data.log_likelihood(fit, "marginal")["log_likelihood"]["y"].values

    kids, schools = d.factor("kid"), d.factor("school")
    Z0 = indicator_matrix(kids.codes, kids.Z, 24).toarray()
    Z1 = indicator_matrix(schools.codes, schools.Z, 6).toarray()
    sd = sigma_strata[..., level1_strata(d).codes]
    for c, s in [(0, 0), (1, 2)]:
        for k in range(6):
            rows = schools.codes == k
            V = (Z0[rows] @ np.kron(np.eye(24), posterior["T_kid"].values[c, s]) @ Z0[rows].T
                 + Z1[rows] @ np.kron(np.eye(6), posterior["T_school"].values[c, s]) @ Z1[rows].T
                 + np.diag(sd[c, s, rows] ** 2))
            dense = stats.multivariate_normal(d.X[rows] @ posterior["beta"].values[c, s], V).logpdf(d.y[rows])
            assert values[c, s, k] == pytest.approx(dense, rel=1e-10)


def test_ar1_errors_enter_the_marginal_log_likelihood_and_are_refused_elsewhere(sleepstudy):
    """Refused before. AR(1) errors within subjects: log N(y_j | X_j gamma, Z_j T Z_j' + sigma^2 phi^|t - t'|)
    against dense normals; per-row log-likelihoods and replicates (rows not independent) are still refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bh.HLM("Reaction ~ Days + (Days | Subject)", sleepstudy, correlation="ar1", time="Days").fit(
            "bayes", draws=30, tune=100, chains=2, random_seed=1)
    values = fit.log_likelihood("marginal")["log_likelihood"]["Reaction"].values
    d, f = fit.design, fit.design.factor("Subject")
    beta, T = fit.draws("beta").values, fit.draws("T_Subject").values
    sigma, phi = fit.draws("sigma").values, fit.draws("phi").values
    days = sleepstudy["Days"].to_numpy()
    for c, s in [(0, 2), (1, 29)]:
        for j in (0, 8, 17):
            rows = f.codes == j
            t = days[rows]
            R = sigma[c, s] ** 2 * phi[c, s] ** np.abs(t[:, None] - t[None])
            dense = stats.multivariate_normal(d.X[rows] @ beta[c, s], f.Z[rows] @ T[c, s] @ f.Z[rows].T + R)
            assert values[c, s, j] == pytest.approx(dense.logpdf(d.y[rows]), rel=1e-10)
    assert np.isfinite(_loo(fit.posterior).elpd)
    for call in (lambda: fit.log_likelihood("conditional"), fit.posterior_predictive):
        with pytest.raises(OptionError, match="AR"):
            call()
