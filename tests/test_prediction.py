"""Predictions, fitted values, residuals, posterior predictive draws and pointwise log-likelihoods (issue 25).

REML numbers are checked against lme4 (tests/reference/make_predict_reference.R, lme4_predict.json); Bayesian
ones against the same formulas computed by hand from the posterior draws, and against dense brute force.
"""

import json
import warnings
from pathlib import Path

import arviz as az
import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeshlm as bh
from bayeshlm.design.design import indicator_matrix
from bayeshlm.errors import DataError, OptionError

matplotlib.use("Agg")
REFERENCE = json.loads((Path(__file__).parent / "reference" / "lme4_predict.json").read_text())
MODELS = {"sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
          "hsb": ("mathach ~ ses + (ses | school)", "hsb")}


@pytest.fixture(scope="module")
def reml_fits():
    return {key: bh.HLM(formula, bh.datasets.load(data)).fit("reml") for key, (formula, data) in MODELS.items()}


@pytest.fixture(scope="module")
def sleep_bayes():
    model = bh.HLM("Reaction ~ Days + (Days | Subject)", bh.datasets.load("sleepstudy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit("bayes", draws=60, tune=60, chains=2, random_seed=5)


# --- REML against lme4 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(MODELS))
def test_predictions_match_lme4(reml_fits, key):
    fit, ref = reml_fits[key], REFERENCE[key]
    newdata = pd.DataFrame(ref["newdata"])
    # known groups, new groups (allow.new.levels=TRUE) and re.form=NA, to 1e-6 relative
    np.testing.assert_allclose(fit.predict(newdata)["estimate"], ref["conditional"], rtol=1e-6)
    np.testing.assert_allclose(fit.predict(newdata, groups="population")["estimate"], ref["population"], rtol=1e-6)
    np.testing.assert_allclose(fit.fitted(), ref["fitted"], rtol=1e-6)
    y_scale = np.abs(fit.design.y).max()
    np.testing.assert_allclose(fit.residuals(), ref["residuals"], rtol=0, atol=1e-6 * y_scale)
    ranef = fit.residuals(level=2)
    assert list(ranef.index) == ref["ranef_levels"]
    np.testing.assert_allclose(ranef, ref["ranef"], rtol=0, atol=1e-6 * np.abs(ref["ranef"]).max())


def test_new_groups_get_the_population_part_and_say_so(reml_fits):
    fit = reml_fits["sleepstudy"]
    newdata = pd.DataFrame({"Days": [3.0, 3.0], "Subject": ["308", "nobody"]})
    conditional = fit.predict(newdata)
    population = fit.predict(newdata, groups="population")
    assert conditional["estimate"].iloc[1] == pytest.approx(population["estimate"].iloc[1], rel=1e-14)
    assert conditional["estimate"].iloc[0] != pytest.approx(population["estimate"].iloc[0], rel=1e-3)
    assert list(conditional["new_groups"]) == ["", "Subject"]


def _henderson_pev(fit, x, z_full):
    """sigma^2 [x; z]' C^-1 [x; z] with Henderson's dense mixed-model matrix C = [[X'X, X'Z], [Z'X, Z'Z + sigma^2
    G^-1]] (G = blockdiag of each factor's T over its groups): the prediction error variance of x'gamma + z'u."""
    d = fit.design
    Z = np.hstack([indicator_matrix(f.codes, f.Z, f.n_groups).toarray() for f in d.factors])
    G = np.zeros((Z.shape[1], Z.shape[1]))
    start = 0
    for f in d.factors:
        for _ in range(f.n_groups):
            G[start:start + f.n_coef, start:start + f.n_coef] = fit.tau[f.name].to_numpy()
            start += f.n_coef
    C = np.block([[d.X.T @ d.X, d.X.T @ Z], [Z.T @ d.X, Z.T @ Z + fit.sigma2 * np.linalg.inv(G)]])
    v = np.concatenate([x, z_full])
    return fit.sigma2 * v @ np.linalg.solve(C, v)


def test_standard_errors_and_prediction_intervals_follow_their_formulas(reml_fits):
    fit = reml_fits["sleepstudy"]
    newdata = pd.DataFrame({"Days": [4.0, 4.0], "Subject": ["309", "new"]}, index=["a", "b"])
    x = np.array([1.0, 4.0])
    V, T, s2 = fit.vcov.to_numpy(), fit.tau["Subject"].to_numpy(), fit.sigma2
    z_full = np.zeros(36)
    z_full[2 * list(fit.design.factor("Subject").levels).index("309") + np.arange(2)] = x
    pev = _henderson_pev(fit, x, z_full)
    mean = fit.predict(newdata, level=0.9)
    interval = fit.predict(newdata, kind="interval", level=0.9)
    assert list(mean.index) == ["a", "b"]
    np.testing.assert_allclose(mean["se"] ** 2, [pev, x @ V @ x], rtol=1e-9)
    np.testing.assert_allclose(interval["se"] ** 2, [pev + s2, x @ V @ x + x @ T @ x + s2], rtol=1e-9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(interval["upper"] - interval["estimate"], z * interval["se"], rtol=1e-12)
    # lme4's condVar alone (beta held fixed) would give x'Vx + x'Cx = 11.5^2; the equations give 7.7^2
    C = fit.conditional_modes("Subject").condvar[list(fit.design.factor("Subject").levels).index("309")]
    assert mean["se"].iloc[0] == pytest.approx(7.7207, abs=1e-3)
    assert mean["se"].iloc[0] < 0.7 * np.sqrt(x @ V @ x + x @ C @ x)


def test_prediction_standard_errors_match_a_parametric_simulation(reml_fits):
    """Refit the model to data simulated from the fit; the root mean squared error of the prediction of a known
    subject's true line is close to the reported SE (somewhat above: the SE ignores the variance parameters'
    uncertainty; 400 simulations give 8.3 against 7.7 at Days = 4 and 14.0 against 13.9 at Days = 9)."""
    fit = reml_fits["sleepstudy"]
    data = bh.datasets.load("sleepstudy")
    d, f = fit.design, fit.design.factor("Subject")
    gamma, s2 = fit.fixed_effects["estimate"].to_numpy(), fit.sigma2
    L = np.linalg.cholesky(fit.tau["Subject"].to_numpy())
    newdata = pd.DataFrame({"Days": [4.0, 9.0], "Subject": ["309", "309"]})
    x, j = newdata.assign(one=1.0)[["one", "Days"]].to_numpy(), list(f.levels).index("309")
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(100):
        u = (L @ rng.normal(size=(2, f.n_groups))).T
        y = d.X @ gamma + np.einsum("nq,nq->n", f.Z, u[f.codes]) + rng.normal(scale=np.sqrt(s2), size=d.n_obs)
        refit = bh.HLM("Reaction ~ Days + (Days | Subject)", data.assign(Reaction=y)).fit("reml")
        errors.append(refit.predict(newdata)["estimate"].to_numpy() - x @ (gamma + u[j]))
    rmse = np.sqrt(np.mean(np.square(errors), axis=0))
    ratio = rmse / fit.predict(newdata)["se"].to_numpy()
    assert ((0.88 < ratio) & (ratio < 1.3)).all(), ratio  # SEs from condVar alone: ratios about 0.7-0.8


def test_three_level_known_variance_standard_errors_match_dense_henderson():
    data = bh.datasets.load("konstantopoulos")
    fit = bh.HLM("yi ~ year + (1 | district/school)", data, known_variance="vi").fit("reml")
    d = fit.design
    Z = np.hstack([indicator_matrix(f.codes, f.Z, f.n_groups).toarray() for f in d.factors])
    G = np.diag(np.concatenate([np.full(f.n_groups, fit.tau[f.name].iloc[0, 0]) for f in d.factors]))
    W = np.diag(1 / d.known_variance)
    C = np.block([[d.X.T @ W @ d.X, d.X.T @ W @ Z], [Z.T @ W @ d.X, Z.T @ W @ Z + np.linalg.inv(G)]])
    dense = np.einsum("nk,kl,nl->n", np.hstack([d.X, Z]), np.linalg.inv(C), np.hstack([d.X, Z]))
    np.testing.assert_allclose(fit.predict()["se"] ** 2, dense, rtol=1e-8)


def test_sparse_solve_for_many_groups_gives_the_same_standard_errors(reml_fits, monkeypatch):
    from bayeshlm.results import prediction

    fit = reml_fits["hsb"]
    dense = fit.predict(pd.DataFrame(REFERENCE["hsb"]["newdata"]))
    monkeypatch.setattr(prediction, "DENSE_INVERSE_LIMIT", 0)  # as for more than 6000 group-effect columns
    sparse = fit.predict(pd.DataFrame(REFERENCE["hsb"]["newdata"]))
    np.testing.assert_allclose(sparse["se"], dense["se"], rtol=1e-10)


def test_population_interval_has_the_marginal_variance(reml_fits):
    fit = reml_fits["hsb"]
    row = pd.DataFrame({"ses": [0.5], "school": ["1224"]})
    x = np.array([1.0, 0.5])
    V, T = fit.vcov.to_numpy(), fit.tau["school"].to_numpy()
    got = fit.predict(row, groups="population", kind="interval")["se"].iloc[0]
    assert got ** 2 == pytest.approx(x @ V @ x + x @ T @ x + fit.sigma2, rel=1e-12)


def test_categories_centring_and_new_data_are_coded_as_the_fit(hsb):
    fit = bh.HLM("mathach ~ C(sector) + ses + I(ses**2) + (1 | school)", hsb, center={"ses": "grand"}).fit("reml")
    rows = hsb.iloc[::700]
    np.testing.assert_allclose(fit.predict(rows)["estimate"], fit.fitted().loc[rows.index], rtol=1e-12)
    # new data holding only one sector still get the other sector's coding right
    catholic = rows[rows["sector"] == 1]
    np.testing.assert_allclose(fit.predict(catholic)["estimate"], fit.fitted().loc[catholic.index], rtol=1e-12)
    with pytest.raises(DataError, match=r"'sector'.*'2'.*not among the fitted categories"):
        fit.predict(rows.assign(sector=2))


def test_each_factor_of_a_three_level_model_is_known_or_new_on_its_own(egsingle):
    fit = bh.HLM("math ~ year + (1 | childid) + (year | schoolid)", egsingle).fit("reml")
    row = egsingle.iloc[[0]]
    child, school = row["childid"].iloc[0], row["schoolid"].iloc[0]
    gamma = fit.fixed_effects["estimate"].to_numpy()
    x = np.array([1.0, row["year"].iloc[0]])
    u_child = fit.conditional_modes("childid").modes.loc[str(child)].to_numpy()
    u_school = fit.conditional_modes("schoolid").modes.loc[str(school)].to_numpy()
    cases = {(child, school): x @ gamma + u_child[0] + x @ u_school,
             ("new child", school): x @ gamma + x @ u_school,
             (child, "new school"): x @ gamma + u_child[0],
             ("new child", "new school"): x @ gamma}
    newdata = pd.DataFrame({"year": x[1], "childid": [c for c, _ in cases], "schoolid": [s for _, s in cases]})
    prediction = fit.predict(newdata)
    np.testing.assert_allclose(prediction["estimate"], list(cases.values()), rtol=1e-10)
    assert list(prediction["new_groups"]) == ["", "childid", "schoolid", "childid, schoolid"]
    assert prediction["estimate"].iloc[0] == pytest.approx(fit.fitted().iloc[0], rel=1e-12)


def test_crossed_factors_are_matched_separately():
    rng = np.random.default_rng(3)
    data = pd.DataFrame({"a": rng.integers(0, 12, 300).astype(str), "b": rng.integers(0, 9, 300).astype(str),
                         "x": rng.normal(size=300)})
    data["y"] = data["x"] + rng.normal(size=12)[data["a"].astype(int)] + rng.normal(size=9)[
        data["b"].astype(int)] + rng.normal(size=300)
    fit = bh.HLM("y ~ x + (1 | a) + (1 | b)", data).fit("reml")
    gamma = fit.fixed_effects["estimate"].to_numpy()
    u_b = fit.conditional_modes("b").modes.loc["4"].iloc[0]
    got = fit.predict(pd.DataFrame({"x": [0.5, 0.5], "a": ["unseen", "3"], "b": ["4", "4"]}))
    assert got["estimate"].iloc[0] == pytest.approx(gamma[0] + 0.5 * gamma[1] + u_b, rel=1e-12)
    assert list(got["new_groups"]) == ["a", ""]
    # SEs from the joint equations of both factors (their errors are correlated through shared rows)
    for row, known_a in [(0, False), (1, True)]:
        z_full = np.zeros(12 + 9)
        z_full[12 + 4] = 1.0
        if known_a:
            z_full[3] = 1.0
        pev = _henderson_pev(fit, np.array([1.0, 0.5]), z_full)
        assert got["se"].iloc[row] ** 2 == pytest.approx(pev, rel=1e-9)


# --- bad inputs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda f: f.predict(pd.DataFrame({"Day": [1.0], "Subject": ["308"]})), DataError, r"'Days' is missing"),
    (lambda f: f.predict(pd.DataFrame({"Days": [1.0, np.nan], "Subject": ["308", "308"]})), DataError,
     r"missing values in 'Days'.*row 1"),
    (lambda f: f.predict([[1.0, "308"]]), DataError, "must be a pandas DataFrame"),
    (lambda f: f.predict(pd.DataFrame({"Days": [], "Subject": []})), DataError, "empty"),
    (lambda f: f.predict(kind="median"), OptionError, r"kind='median'.*'mean'"),
    (lambda f: f.predict(groups="marginal"), OptionError, r"groups='marginal'.*'population'"),
    (lambda f: f.predict(level=1.5), OptionError, r"level=1.5.*between 0 and 1"),
    (lambda f: f.predict(level=True), OptionError, r"level=True"),
    (lambda f: f.predict(kind="draws"), OptionError, "likelihood fit does not have"),
    (lambda f: f.residuals(level=3), OptionError, r"level=3"),
    (lambda f: f.residuals(factor="Subject"), OptionError, "applies to level=2"),
])
def test_bad_prediction_inputs_are_refused_in_words(reml_fits, call, error, message):
    with pytest.raises(error, match=message):
        call(reml_fits["sleepstudy"])


def test_models_that_cannot_code_new_rows_refuse(hsb, tmp_path):
    grouped = bh.HLM("mathach ~ ses + (1 | school)", hsb, center={"ses": "group"}).fit("reml")
    with pytest.raises(OptionError, match="group means"):
        grouped.predict(hsb.iloc[:3])
    assert len(grouped.fitted()) == len(hsb)  # the fitted rows need no coding
    loaded = bh.load_fit(grouped.save(tmp_path / "fit.nc"))
    with pytest.raises(OptionError, match="loaded from a file"):
        loaded.predict(hsb.iloc[:3])
    np.testing.assert_allclose(loaded.fitted(), grouped.fitted(), rtol=1e-10)


def test_dask_built_model_refuses_per_row_predictions(hsb):
    dd = pytest.importorskip("dask.dataframe")
    fit = bh.HLM("mathach ~ ses + (1 | school)", dd.from_pandas(hsb, npartitions=2)).fit("reml")
    for call in (fit.fitted, lambda: fit.predict(hsb.iloc[:3]), fit.residuals):
        with pytest.raises(OptionError, match="Dask DataFrame"):
            call()


def test_category_level1_variances_enter_standard_errors_and_intervals(sleepstudy):
    data = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 5, "early", "late"))
    fit = bh.HLM("Reaction ~ Days + (Days | Subject)", data, level1_variance="phase").fit("reml")
    d, f = fit.design, fit.design.factor("Subject")
    r = fit.residual_parameters
    variance = np.where(data["phase"] == "early", r["sigma2 phase=early"], r["sigma2 phase=late"])
    Z = indicator_matrix(f.codes, f.Z, f.n_groups).toarray()
    W, G = np.diag(1 / variance), np.kron(np.eye(f.n_groups), fit.tau["Subject"].to_numpy())
    C = np.block([[d.X.T @ W @ d.X, d.X.T @ W @ Z], [Z.T @ W @ d.X, Z.T @ W @ Z + np.linalg.inv(G)]])
    A = np.hstack([d.X, Z])
    mean = fit.predict()
    np.testing.assert_allclose(mean["se"] ** 2, np.einsum("nk,kl,nl->n", A, np.linalg.inv(C), A), rtol=1e-9)
    interval = fit.predict(data.iloc[[0, 9]], kind="interval")
    np.testing.assert_allclose(interval["se"] ** 2 - mean["se"].iloc[[0, 9]].to_numpy() ** 2, variance[[0, 9]],
                               rtol=1e-9)
    with pytest.raises(DataError, match=r"'phase' has 'middle', not among the fitted categories"):
        fit.predict(data.iloc[:2].assign(phase="middle"), kind="interval")
    with pytest.raises(DataError, match=r"lacks the column 'phase'"):
        fit.predict(data.iloc[:2].drop(columns="phase"), kind="interval")


def test_other_level1_error_structures_give_estimates_without_standard_errors(sleepstudy):
    fit = bh.HLM("Reaction ~ Days + (1 | Subject)", sleepstudy, correlation="ar1", time="Days").fit("reml")
    with pytest.warns(UserWarning, match="not implemented yet"):
        mean = fit.predict(sleepstudy.iloc[:2])  # kind="mean": the estimates, no SEs yet
    np.testing.assert_allclose(mean["estimate"], fit.fitted().iloc[:2], rtol=1e-12)
    assert mean["se"].isna().all()
    with pytest.raises(OptionError, match="level-1 errors"):
        fit.predict(sleepstudy.iloc[:2], kind="interval")


# --- Bayes ---------------------------------------------------------------------------------------------------

def _by_hand(fit, newdata):
    """Per-draw x'gamma + z'u for known subjects (u = 0 for new ones), by a plain loop."""
    beta = fit.draws("beta").values.reshape(-1, 2)
    u = fit.draws("u_Subject").transpose("chain", "draw", "Subject", "Subject__coef")
    out = []
    for _, row in newdata.iterrows():
        x = np.array([1.0, row["Days"]])
        known = row["Subject"] in u["Subject"].values
        effect = u.sel(Subject=row["Subject"]).values.reshape(-1, 2) @ x if known else 0.0
        out.append(beta @ x + effect)
    return np.column_stack(out)


@pytest.mark.sampling
def test_bayes_predictions_are_the_posterior_of_the_linear_predictor(sleep_bayes):
    fit = sleep_bayes
    newdata = pd.DataFrame(REFERENCE["sleepstudy"]["newdata"])
    eta = _by_hand(fit, newdata)
    mean = fit.predict(newdata)
    np.testing.assert_allclose(mean["estimate"], eta.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mean["se"], eta.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(mean["lower"], np.quantile(eta, 0.025, axis=0), rtol=1e-12)
    population = fit.predict(newdata, groups="population")
    np.testing.assert_allclose(population["estimate"].iloc[3:], mean["estimate"].iloc[3:], rtol=1e-14)
    # close to lme4 for known subjects (a 120-draw posterior mean: within a few of its SDs)
    gap = np.abs(mean["estimate"] - REFERENCE["sleepstudy"]["conditional"]) / mean["se"]
    assert gap.iloc[:3].max() < 1.0

    draws = fit.predict(newdata, kind="draws", random_seed=1)
    assert draws.dims == ("chain", "draw", "obs") and draws.shape == (2, 60, 6)
    np.testing.assert_array_equal(draws, fit.predict(newdata, kind="draws", random_seed=1))
    # known subjects add N(0, sigma^2) to eta; a new one also N(0, T): the draws' variance is the sum
    # (to Monte Carlo error: the variance of 120 draws has a relative SE of about 13%)
    s2 = (fit.draws("sigma") ** 2).mean().item()
    X = np.column_stack([np.ones(6), newdata["Days"]])
    xTx = np.einsum("nq,cdqr,nr->n", X, fit.draws("T_Subject").values, X) / 120
    expected = eta.var(0, ddof=1) + s2 + np.r_[0, 0, 0, xTx[3:]]
    np.testing.assert_allclose(draws.var(("chain", "draw"), ddof=1).values, expected, rtol=0.35)
    assert draws.var(("chain", "draw")).values[5] > 3 * s2
    interval = fit.predict(newdata, kind="interval", random_seed=1)
    np.testing.assert_allclose(interval["estimate"], draws.mean(("chain", "draw")), rtol=1e-12)


@pytest.mark.sampling
def test_bayes_fitted_residuals_and_posterior_predictive(sleep_bayes):
    fit = sleep_bayes
    y = fit.design.y
    np.testing.assert_allclose(fit.residuals(), y - fit.fitted(), rtol=1e-12)
    u = fit.draws("u_Subject").mean(("chain", "draw")).values
    np.testing.assert_allclose(fit.residuals(level=2), u, rtol=1e-12)

    tree = fit.posterior_predictive(random_seed=2)
    replicates = tree["posterior_predictive"]["Reaction"]
    assert replicates.dims == ("chain", "draw", "obs") and replicates.shape == (2, 60, 180)
    np.testing.assert_array_equal(tree["observed_data"]["Reaction"], y)
    # y_rep = eta + N(0, sigma^2): the replicates' mean is the fitted value up to Monte Carlo error
    sigma = fit.draws("sigma").mean().item()
    gap = (replicates.mean(("chain", "draw")).values - fit.fitted().to_numpy()).mean()
    assert abs(gap) < 4 * sigma / np.sqrt(120 * 180)
    residual_sd = (replicates.values - fit.fitted().to_numpy()).std()
    assert residual_sd == pytest.approx(np.sqrt((fit.draws("sigma") ** 2).mean().item()), rel=0.1)
    assert az.plot_ppc_dist(tree) is not None


@pytest.mark.sampling
def test_pointwise_log_likelihoods_match_brute_force(sleep_bayes):
    fit = sleep_bayes
    y = fit.design.y
    tree = fit.log_likelihood("conditional")
    values = tree["log_likelihood"]["Reaction"]
    assert values.dims == ("chain", "draw", "obs")
    beta, sigma = fit.draws("beta").values, fit.draws("sigma").values
    u = fit.draws("u_Subject").transpose("chain", "draw", "Subject", "Subject__coef").values
    f = fit.design.factor("Subject")
    for c, d in [(0, 0), (1, 37)]:
        eta = fit.design.X @ beta[c, d] + np.einsum("nq,nq->n", f.Z, u[c, d][f.codes])
        np.testing.assert_allclose(values.values[c, d], stats.norm.logpdf(y, eta, sigma[c, d]), rtol=1e-10)
    loo = az.loo(tree)
    assert np.isfinite(loo.elpd) and loo.n_data_points == 180

    tree = fit.log_likelihood("marginal")
    values = tree["log_likelihood"]["Reaction"]
    assert values.dims == ("chain", "draw", "Subject") and values.shape == (2, 60, 18)
    T = fit.draws("T_Subject").values
    for c, d in [(0, 5), (1, 59)]:
        for j in (0, 11):
            rows = f.codes == j
            V = f.Z[rows] @ T[c, d] @ f.Z[rows].T + sigma[c, d] ** 2 * np.eye(rows.sum())
            dense = stats.multivariate_normal(fit.design.X[rows] @ beta[c, d], V).logpdf(y[rows])
            assert values.values[c, d, j] == pytest.approx(dense, rel=1e-10)
    assert np.isfinite(az.loo(tree).elpd)


@pytest.mark.sampling
def test_leave_one_group_out_prefers_the_true_random_slope():
    rng = np.random.default_rng(2026)
    groups, per_group = 30, 8
    g = np.repeat(np.arange(groups), per_group)
    x = rng.normal(size=g.size)
    data = pd.DataFrame({"g": g.astype(str), "x": x,
                         "y": 1.0 + 0.5 * x + rng.normal(size=groups)[g] + 1.5 * rng.normal(size=groups)[g] * x
                         + rng.normal(scale=0.7, size=g.size)})
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, formula in [("slope", "y ~ x + (x | g)"), ("intercept", "y ~ x + (1 | g)")]:
            fits[name] = bh.HLM(formula, data).fit("bayes", draws=100, tune=100, chains=2, random_seed=4)
        table = bh.compare_models(fits)
    assert table.index[0] == "slope"
    # ArviZ 1.x reports elpd_diff <= 0 for the worse model (about -100 here, dse about 20)
    assert abs(table.loc["intercept", "elpd_diff"]) > 3 * table.loc["intercept", "dse"]
    assert table.attrs["unit"] == "group of 'g' (leave one group out)"
    # the table keeps ArviZ's numbers unrounded (its "auto" rounding had shown an elpd_diff of -104.3 as -100)
    for name, fit in fits.items():
        loo = az.loo(fit.log_likelihood("marginal"))
        assert table.loc[name, "elpd"] == pytest.approx(loo.elpd, rel=1e-12)
        assert table.loc[name, "se"] == pytest.approx(loo.se, rel=1e-12)
    assert az.compare({k: f.posterior for k, f in fits.items()}).index[0] == "slope"  # ArviZ directly, same order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_row = bh.compare_models(list(fits.values()), kind="conditional", names=["s", "i"])
    assert by_row.attrs["unit"] == "observation (leave one row out)" and set(by_row.index) == {"s", "i"}
    for message in by_row.attrs["messages"]:
        assert "Pareto k above" in message and "kind='marginal'" in message


@pytest.mark.sampling
@pytest.mark.parametrize("seed", [11, 12])
def test_leave_one_group_out_prefers_neither_model_without_slope_variance(seed):
    """The reduced form of benchmarks/compare_models_simulation.py (docs/calibration.md): with no slope variance
    in the data, neither the random-slope nor the random-intercept model is preferred (the rule of that script)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(30), 10)
    x = rng.normal(size=g.size)
    data = pd.DataFrame({"g": g.astype(str), "x": x, "y": 1.0 + 0.5 * x + rng.normal(size=30)[g]
                         + rng.normal(size=g.size)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = {name: bh.HLM(formula, data).fit("bayes", draws=150, tune=150, chains=2, random_seed=seed)
                for name, formula in [("slope", "y ~ x + (x | g)"), ("intercept", "y ~ x + (1 | g)")]}
        table = bh.compare_models(fits)
    # a preference needs |elpd_diff| >= 4 (below that ArviZ flags "models make similar predictions") and > 2 dse
    difference, dse = -table["elpd_diff"].iloc[1], table["dse"].iloc[1]
    assert not (difference >= 4 and difference > 2 * dse), f"{table.index[0]} preferred: {difference:.2f} ({dse:.2f})"


@pytest.mark.sampling
def test_bad_bayes_requests_are_refused(sleep_bayes):
    with pytest.raises(OptionError, match=r"kind='pointwise'.*'marginal'"):
        sleep_bayes.log_likelihood("pointwise")
    with pytest.raises(OptionError, match="applies to kind='marginal'"):
        sleep_bayes.log_likelihood("conditional", factor="Subject")
    with pytest.raises(OptionError, match=r"kind='sample'"):
        sleep_bayes.predict(kind="sample")


@pytest.mark.sampling
@pytest.mark.parametrize("stat", ["mean", "var", "min", "max"])
def test_group_statistics_compare_each_group_with_its_replicates(sleep_bayes, stat):
    fit = sleep_bayes
    table = bh.checks.group_statistics(fit, stat=stat, random_seed=8)
    codes = fit.design.factor("Subject").codes
    observed = pd.Series(fit.design.y).groupby(codes).agg(stat).to_numpy()
    np.testing.assert_allclose(table["observed"], observed, rtol=1e-12)
    replicates = fit.posterior["posterior_predictive"]["Reaction"].values.reshape(120, -1)
    by_hand = pd.DataFrame(replicates.T).groupby(codes).agg(stat).to_numpy().T  # (draws, groups)
    np.testing.assert_allclose(table["predictive_mean"], by_hand.mean(0), rtol=1e-10)
    np.testing.assert_allclose(table["ppp"], (by_hand >= observed).mean(0), rtol=0, atol=1e-12)
    assert list(table.index) == list(fit.design.factor("Subject").levels) and (table["n"] == 10).all()
    if stat == "mean":  # each subject's own effects reproduce its mean: no extreme p-values
        assert table["ppp"].between(0.02, 0.98).all()


def test_group_statistics_refuse_bad_requests(reml_fits):
    with pytest.raises(OptionError, match="only a Bayesian fit"):
        bh.checks.group_statistics(reml_fits["sleepstudy"])


@pytest.mark.sampling
def test_known_variance_log_likelihoods_use_each_rows_variance():
    data = bh.datasets.load("konstantopoulos")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bh.HLM("yi ~ 1 + (1 | district)", data, known_variance="vi").fit("bayes", draws=60, tune=60, chains=2,
                                                                              random_seed=1)
    d, f = fit.design, fit.design.factor("district")
    beta, T, u = fit.draws("beta").values, fit.draws("T_district").values, fit.draws("u_district").values
    marginal = fit.log_likelihood("marginal")["log_likelihood"]["yi"].values
    for c, s, j in [(0, 3, 0), (1, 50, 4)]:
        rows = f.codes == j
        V = f.Z[rows] @ T[c, s] @ f.Z[rows].T + np.diag(d.known_variance[rows])
        dense = stats.multivariate_normal(d.X[rows] @ beta[c, s], V).logpdf(d.y[rows])
        assert marginal[c, s, j] == pytest.approx(dense, rel=1e-10)
    conditional = fit.log_likelihood("conditional")["log_likelihood"]["yi"].values
    eta = d.X @ beta[0, 3] + u[0, 3, f.codes, 0]
    np.testing.assert_allclose(conditional[0, 3], stats.norm.logpdf(d.y, eta, np.sqrt(d.known_variance)), rtol=1e-10)
    with pytest.raises(OptionError, match="sampling variances are unknown"):
        fit.predict(data.iloc[:2], kind="interval")


@pytest.mark.sampling
def test_compare_models_refuses_what_it_cannot_compare(sleep_bayes, reml_fits, hsb):
    with pytest.raises(OptionError, match="at least two fits"):
        bh.compare_models([sleep_bayes])
    with pytest.raises(OptionError, match="compares Bayesian fits.*LikelihoodFit"):
        bh.compare_models([sleep_bayes, reml_fits["sleepstudy"]])
    with pytest.raises(OptionError, match="one distinct name per fit"):
        bh.compare_models([sleep_bayes, sleep_bayes], names=["a"])
    with pytest.raises(OptionError, match=r"kind='sideways'.*'marginal'"):
        bh.compare_models({"a": sleep_bayes, "b": sleep_bayes}, kind="sideways")
    other = bh.HLM("Reaction ~ Days + (Days | Subject)", bh.datasets.load("sleepstudy").iloc[:170])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smaller = other.fit("bayes", draws=60, tune=60, chains=2, random_seed=5)
    with pytest.raises(OptionError, match="same data.*170 rows"):
        bh.compare_models({"all": sleep_bayes, "fewer": smaller})


@pytest.mark.sampling
def test_three_level_marginal_log_likelihood_integrates_both_levels():
    rng = np.random.default_rng(4)
    school, kid, x = np.repeat(np.arange(8), 16), np.repeat(np.arange(32), 4), np.tile(np.arange(4.0), 32)
    y = (1 + 0.5 * x + rng.normal(size=8)[school] + 0.3 * rng.normal(size=8)[school] * x + rng.normal(size=32)[kid]
         + 0.4 * rng.normal(size=32)[kid] * x + rng.normal(scale=0.5, size=128))
    data = pd.DataFrame({"school": school.astype(str), "kid": kid.astype(str), "x": x, "y": y})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bh.HLM("y ~ x + (x | kid) + (x | school)", data).fit("bayes", draws=60, tune=60, chains=2,
                                                                       random_seed=1)
    values = fit.log_likelihood("marginal")["log_likelihood"]["y"]
    assert values.dims == ("chain", "draw", "school")
    d = fit.design
    kids, schools = d.factor("kid"), d.factor("school")
    Z0 = indicator_matrix(kids.codes, kids.Z, 32).toarray()
    Z1 = indicator_matrix(schools.codes, schools.Z, 8).toarray()
    beta, sigma = fit.draws("beta").values, fit.draws("sigma").values
    T0, T1 = fit.draws("T_kid").values, fit.draws("T_school").values
    for c, s, k in [(0, 3, 0), (1, 40, 5)]:
        rows = schools.codes == k
        V = (Z0[rows] @ np.kron(np.eye(32), T0[c, s]) @ Z0[rows].T + Z1[rows] @ np.kron(np.eye(8), T1[c, s])
             @ Z1[rows].T + sigma[c, s] ** 2 * np.eye(rows.sum()))
        dense = stats.multivariate_normal(d.X[rows] @ beta[c, s], V).logpdf(d.y[rows])
        assert values.values[c, s, k] == pytest.approx(dense, rel=1e-10)
    with pytest.raises(OptionError, match="leaves out one 'school' group at a time"):
        fit.log_likelihood("marginal", factor="kid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bh.compare_models({"a": fit, "b": fit}).attrs["unit"] == "group of 'school' (leave one group out)"
