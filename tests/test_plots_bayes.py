"""Bayes-side results: plots, report sections and reliability posteriors, on HS&B random coefficients."""

import os
import warnings

import matplotlib
import numpy as np
import pytest

import bayeshlm as bh

matplotlib.use("Agg")
SCALE = float(os.environ.get("BAYESHLM_TEST_SCALE", "1"))
pytestmark = pytest.mark.sampling


@pytest.fixture(scope="module")
def fits():
    model = bh.HLM("mathach ~ cses + (cses | school)", bh.datasets.load("hsb"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bayes = model.fit("bayes", draws=max(100, int(300 * SCALE)), tune=max(100, int(300 * SCALE)), chains=2,
                          random_seed=11)
    return model.fit("reml"), bayes


def test_reliability_posterior_matches_the_plug_in_value(fits):
    reml, bayes = fits
    summary = bayes.reliability_summary()
    plug_in = reml.reliability().mean()
    assert summary.loc["(Intercept)", "reliability"] == pytest.approx(plug_in["(Intercept)"], abs=0.01)
    # the slope variance's posterior is right-skewed, so its average reliability sits above the REML plug-in
    assert plug_in["cses"] - 0.02 < summary.loc["cses", "reliability"] < plug_in["cses"] + 0.15
    assert (summary["eti_lower"] < summary["reliability"]).all()
    assert (summary["reliability"] < summary["eti_upper"]).all()
    assert bayes.reliability().shape == (160, 2)


def test_bayes_report_has_the_same_sections(fits):
    reml, bayes = fits
    titles = [t for t, _ in reml.report().sections]
    assert [t.replace("(REML)", "(Bayes)") for t in titles[:-1]] == [t for t, _ in bayes.report().sections][
        : len(titles) - 1]
    assert "divergences" in str(bayes.report())


def test_plausible_values_of_both_engines_agree(fits):
    reml, bayes = fits
    a, b = reml.plausible_values(), bayes.plausible_values()
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(b.loc["(Intercept)", ["lower", "upper"]], a.loc["(Intercept)", ["lower", "upper"]],
                               atol=0.5)


def test_forest_compare_draws_each_fit_for_each_parameter(fits, tmp_path):
    reml, bayes = fits
    figure = bh.plots.forest_compare(reml, bayes)
    fixed_ax, variance_ax = figure.axes
    assert len(fixed_ax.get_lines()) == 2 and len(variance_ax.get_lines()) == 2  # one marker series per fit
    assert [len(line.get_xdata()) for line in fixed_ax.get_lines()] == [2, 2]  # two fixed effects
    assert [len(line.get_xdata()) for line in variance_ax.get_lines()] == [4, 4]  # 3 T entries + sigma^2
    figure.savefig(tmp_path / "forest.png")


def test_variance_posterior_marks_reml_and_ml(fits, tmp_path):
    reml, bayes = fits
    ml = bh.HLM("mathach ~ cses + (cses | school)", bh.datasets.load("hsb")).fit("ml")
    figure = bh.plots.variance_posterior(bayes, reml, ml, coefficient="cses")
    ax = figure.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("REML 0.694") for label in labels)
    assert any(label.startswith("ML ") for label in labels)
    assert sum(label.startswith("posterior") for label in labels) == 4  # histogram, mean, median, mode
    figure.savefig(tmp_path / "variance.png")


def test_group_plots_work_for_a_bayesian_fit(fits):
    _, bayes = fits
    shrink = bh.plots.shrinkage(bayes).axes[0]
    assert len([t for t in shrink.texts if t.arrow_patch is not None]) == 160
    cater = bh.plots.caterpillar(bayes, coefficient="cses").axes[0]
    assert len(cater.collections[0].get_segments()) == 160


def test_compare_gives_posterior_spread_of_variances(fits):
    reml, bayes = fits
    table = bh.compare(reml, bayes)
    row = table.loc["school: var(cses)", "Bayes"]
    assert row["se"] > 0 and row["lower"] < row["estimate"] < row["upper"]
    assert np.isnan(table.loc["school: var(cses)", ("REML", "se")])
