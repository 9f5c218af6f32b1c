"""One result contract for every engine (issue 22): the same model fitted by REML, ML and Bayes returns
fixed_effects, variance_components, group_effects(f) and random_effects(f) with the same index names, leading
columns and rows (bayeshlm/results/contract.py); report, compare and every plot read only those tables, so they
run on both engines; REML intervals are the t(df) intervals of the t tests, Bayes intervals the equal-tailed
quantiles of the draws."""

import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeshlm as bh
from bayeshlm.results.contract import (
    FIXED_EFFECTS_COLUMNS,
    GROUP_EFFECT_COLUMNS,
    VARIANCE_COMPONENT_COLUMNS,
    contract_problems,
    wide,
)
from bayeshlm.results.hlm_statistics import fixed_part

matplotlib.use("Agg")

FORMULA = "Reaction ~ Days + (Days | Subject)"
KINDS = ("fixed_effects", "variance_components", "group_effects", "random_effects")


def _quiet(fit, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: low-ESS warnings are expected
        return fit(*args, **kwargs)


@pytest.fixture(scope="module")
def likelihood_fits(sleepstudy):
    model = bh.HLM(FORMULA, sleepstudy)
    return {"reml": model.fit("reml"), "ml": model.fit("ml")}


@pytest.fixture(scope="module")
def bayes_fit(sleepstudy):
    return _quiet(bh.HLM(FORMULA, sleepstudy).fit, "bayes", draws=100, tune=100, chains=2, random_seed=3)


def _tables(fit, factor: str = "Subject") -> dict[str, pd.DataFrame]:
    return {"fixed_effects": fit.fixed_effects, "variance_components": fit.variance_components,
            "group_effects": fit.group_effects(factor), "random_effects": fit.random_effects(factor)}


def _rows(kind: str, table: pd.DataFrame) -> list:
    """What a table's rows are about: index labels, or (factor, term, term2) for the variance components."""
    if kind == "variance_components":
        return table[["factor", "term", "term2"]].values.tolist()
    return list(table.index)


# --- shapes ------------------------------------------------------------------------------------------------

def test_contract_checker_flags_the_old_layouts():
    """The checker is not vacuous: the tables the engines returned before the contract break it."""
    old_reml_vc = pd.DataFrame(columns=["factor", "term1", "term2", "estimate", "sd", "corr"])
    old_bayes_fixed = pd.DataFrame(columns=["estimate", "se", "eti_lower", "eti_upper"],
                                   index=pd.Index([], name="fixed"))
    old_reml_groups = pd.DataFrame(columns=pd.MultiIndex.from_tuples([("coef", "Days"), ("u", "Days")]),
                                   index=pd.Index([], name="Subject"))
    assert len(contract_problems("variance_components", old_reml_vc)) == 1
    assert len(contract_problems("fixed_effects", old_bayes_fixed)) == 2
    assert len(contract_problems("group_effects", old_reml_groups, "Subject")) == 2
    with pytest.raises(ValueError, match="unknown table kind"):
        contract_problems("ranef", old_reml_vc)


@pytest.mark.sampling
def test_both_engines_return_the_same_tables(likelihood_fits, bayes_fit):
    fits = {**likelihood_fits, "bayes": bayes_fit}
    tables = {method: _tables(fit) for method, fit in fits.items()}
    for method, by_kind in tables.items():
        for kind, table in by_kind.items():
            assert contract_problems(kind, table, "Subject") == [], (method, kind)
    reference = tables["reml"]
    for method in ("ml", "bayes"):
        for kind in KINDS:
            mine, theirs = tables[method][kind], reference[kind]
            width = 5 if kind in ("group_effects", "random_effects") else len(FIXED_EFFECTS_COLUMNS)
            if kind == "variance_components":
                width = len(VARIANCE_COMPONENT_COLUMNS)
            assert list(mine.columns[:width]) == list(theirs.columns[:width]), (method, kind)
            assert list(mine.index.names) == list(theirs.index.names), (method, kind)
            assert _rows(kind, mine) == _rows(kind, theirs), (method, kind)
    assert list(reference["group_effects"].columns) == list(GROUP_EFFECT_COLUMNS)
    assert reference["variance_components"]["term"].iloc[-1] == "(residual)"


def test_structured_and_three_level_fits_keep_the_contract(egsingle, sleepstudy):
    three = bh.HLM("math ~ year + (year | childid) + (1 | schoolid)", egsingle.iloc[:1500]).fit("reml")
    for factor in ("childid", "schoolid"):
        for kind, table in _tables(three, factor).items():
            assert contract_problems(kind, table, factor) == [], (factor, kind)
    structured = _quiet(bh.HLM(FORMULA, sleepstudy, correlation="ar1", time="Days").fit, "reml")  # boundary fit
    vc = structured.variance_components
    assert contract_problems("variance_components", vc) == []
    phi = vc[vc["term"] == "phi (AR1)"]
    assert len(phi) == 1 and phi["term2"].iloc[0] == "phi (AR1)" and phi["factor"].iloc[0] == "Residual"


def test_wide_keeps_the_groups_and_terms_in_order(likelihood_fits):
    fit = likelihood_fits["reml"]
    f = fit.design.factor("Subject")
    table = fit.group_effects()
    layout = wide(table, "se")
    assert list(layout.index) == list(f.levels) and list(layout.columns) == list(f.coef_names)
    assert layout.loc["309", "Days"] == table.loc[("309", "Days"), "se"]
    np.testing.assert_array_equal(table["n"].to_numpy(), np.repeat(f.group_sizes, 2))


# --- intervals -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_likelihood_fixed_effect_intervals_use_the_t_df_of_the_t_tests(likelihood_fits, method, level):
    fit = likelihood_fits[method]
    table = fit.fixed_effects_at(level)
    half = stats.t.ppf(0.5 + level / 2, table["df"]) * table["se"]
    np.testing.assert_allclose(table["lower"], table["estimate"] - half, rtol=1e-12, atol=0)
    np.testing.assert_allclose(table["upper"], table["estimate"] + half, rtol=1e-12, atol=0)
    tests = fit.ttest(level=level)
    np.testing.assert_allclose(table[["lower", "upper"]], tests[["lower", "upper"]], rtol=1e-12)
    assert (table["df"] == 17).all()  # J - S - 1 with 18 subjects: narrower normal intervals would pass 1.96


def test_likelihood_group_and_variance_tables_agree_with_their_sources(likelihood_fits):
    fit = likelihood_fits["reml"]
    f = fit.design.factor("Subject")
    groups, effects = fit.group_effects(level=0.9), fit.random_effects(level=0.9)
    fixed = fixed_part(fit.design, fit.fixed_effects["estimate"].to_numpy(), f)
    np.testing.assert_allclose(wide(groups) - wide(effects), fixed, rtol=1e-12)
    np.testing.assert_array_equal(groups["se"], effects["se"])
    modes = fit.conditional_modes("Subject")
    np.testing.assert_allclose(wide(effects), modes.modes, rtol=1e-12)
    np.testing.assert_allclose(wide(effects, "se") ** 2, np.diagonal(modes.condvar, axis1=1, axis2=2), rtol=1e-12)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(groups["upper"] - groups["estimate"], z * groups["se"], rtol=1e-12)
    vc = fit.variance_components
    tau = fit.tau["Subject"]
    np.testing.assert_allclose(vc["estimate"], [tau.iloc[0, 0], tau.iloc[1, 0], tau.iloc[1, 1], fit.sigma2],
                               rtol=1e-12)
    wald = fit.variance_intervals()
    wald = wald[wald["parameter"].isin(["variance", "covariance", "sigma2"])]
    np.testing.assert_allclose(vc[["se", "lower", "upper"]], wald[["se", "lower", "upper"]], rtol=1e-12)


@pytest.mark.sampling
def test_bayes_intervals_are_quantiles_of_the_draws(bayes_fit):
    level = 0.8
    beta = bayes_fit.draws("beta").transpose("chain", "draw", "fixed").values.reshape(-1, 2)
    fixed = bayes_fit.fixed_effects_at(level)
    np.testing.assert_allclose(fixed["lower"], np.quantile(beta, 0.1, axis=0), rtol=1e-12)
    np.testing.assert_allclose(fixed["upper"], np.quantile(beta, 0.9, axis=0), rtol=1e-12)
    np.testing.assert_allclose(fixed["se"], beta.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(bayes_fit.vcov, np.cov(beta, rowvar=False), rtol=1e-12)
    T = bayes_fit.draws("T_Subject").values.reshape(-1, 2, 2)
    vc = bayes_fit.variance_components_at(level)
    np.testing.assert_allclose(vc["estimate"].iloc[:3], [T[:, 0, 0].mean(), T[:, 1, 0].mean(), T[:, 1, 1].mean()],
                               rtol=1e-12)
    np.testing.assert_allclose(vc["upper"].iloc[1], np.quantile(T[:, 1, 0], 0.9), rtol=1e-12)
    coefs = bayes_fit.group_coefficient_draws("Subject").values.reshape(-1, 18, 2)
    groups = bayes_fit.group_effects(level=level)
    np.testing.assert_allclose(wide(groups), coefs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(wide(groups, "lower"), np.quantile(coefs, 0.1, axis=0), rtol=1e-12)
    u = bayes_fit.draws("u_Subject").transpose("chain", "draw", "Subject", "Subject__coef").values.reshape(-1, 18, 2)
    np.testing.assert_allclose(wide(bayes_fit.random_effects()), u.mean(0), rtol=1e-12, atol=1e-12)


def test_intervals_refuse_a_level_outside_zero_and_one(likelihood_fits):
    fit = likelihood_fits["reml"]
    for level in (0, 1, 1.5, -0.2, True, "0.95"):
        with pytest.raises(bh.OptionError, match="level="):
            fit.fixed_effects_at(level)
    with pytest.raises(bh.OptionError, match="level="):
        fit.group_effects("Subject", level=95)
    with pytest.raises(bh.OptionError, match="level="):
        fit.variance_components_at(level=0.0)


# --- readers of the contract: report, compare, plots, on both engines ---------------------------------------

@pytest.mark.sampling
def test_report_and_compare_run_on_both_engines(likelihood_fits, bayes_fit):
    reml = likelihood_fits["reml"]
    for fit in (reml, bayes_fit):
        text = str(fit.report())
        assert "Fixed effects" in text and "Variance components" in text and "(residual)" in text
        assert fit.report()._repr_markdown_().count("###") >= 5
        assert fit.describe_estimates() in str(fit.report(style="plain"))
    assert "Fit\n---\ndeviance:" in str(reml.report())
    assert "Sampling" in str(bayes_fit.report()) and "Diagnostics" in str(bayes_fit.report())
    table = bh.compare(reml, bayes_fit, level=0.8)
    fixed = reml.fixed_effects_at(0.8)
    np.testing.assert_allclose(table.loc["fixed: Days", ("REML", ["lower", "upper"])].to_numpy(dtype=float),
                               fixed.loc["Days", ["lower", "upper"]].to_numpy(dtype=float), rtol=1e-12)
    posterior = bayes_fit.variance_components_at(0.8)
    assert table.loc["sigma^2", ("Bayes", "upper")] == pytest.approx(posterior["upper"].iloc[-1], rel=1e-12)


@pytest.mark.sampling
def test_every_plot_runs_on_both_engines(likelihood_fits, bayes_fit, tmp_path):
    for fit in (likelihood_fits["reml"], bayes_fit):
        label = fit.group_estimate_name
        assert label in [t.get_text() for t in bh.plots.shrinkage(fit).axes[0].get_legend().get_texts()]
        cater = bh.plots.caterpillar(fit, coefficient="Days", level=0.8).axes[0]
        segments = cater.collections[0].get_segments()
        estimate, lower = wide(fit.group_effects(level=0.8))["Days"], wide(fit.group_effects(level=0.8), "lower")
        assert sorted(s[0][1] for s in segments) == pytest.approx(sorted(lower["Days"]), rel=1e-12)
        assert len(estimate) == 18
        bh.plots.growth(fit, time="Days", n_persons=3).savefig(tmp_path / f"growth_{fit.method}.png")
    assert len(bh.plots.forest_compare(likelihood_fits["reml"], bayes_fit).axes) == 6
    assert len(bh.plots.variance_posterior(bayes_fit, likelihood_fits["reml"]).axes) == 1
    data = bh.datasets.load("teacher_expectancy")
    for meta in (bh.meta("yi ~ 1", data, vi="vi"),
                 _quiet(bh.meta, "yi ~ 1", data, vi="vi", method="bayes", draws=100, tune=100, chains=2,
                        random_seed=1)):
        assert len(bh.plots.forest(meta).axes) == 1


def test_equal_tailed_interval_of_arviz_stats_equals_numpy_quantiles_and_gives_numbers():
    """The ETI comes from arviz-stats' eti; one-dimensional draws gave 0-d arrays in the variance table's lower /
    upper columns (object dtype), which the report printed unrounded (186.47479159469364)."""
    from bayeshlm.results.contract import equal_tailed_interval

    draws = np.random.default_rng(3).gamma(2.0, size=(2000, 3, 2))
    for axis in (0, 1):
        lower, upper = equal_tailed_interval(draws, 0.9, axis=axis)
        np.testing.assert_allclose(np.stack([lower, upper]), np.quantile(draws, [0.05, 0.95], axis=axis), rtol=1e-14)
    lower, upper = equal_tailed_interval(draws[:, 0, 0], 0.95)
    assert type(lower) is np.float64 and type(upper) is np.float64
    table = pd.DataFrame({"lower": [lower], "upper": [upper]})
    assert all(pd.api.types.is_float_dtype(t) for t in table.dtypes)
