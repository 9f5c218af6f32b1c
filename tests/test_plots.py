"""Plots render headless and draw what they claim: one arrow and two markers per group."""

import matplotlib
import numpy as np
import pytest

import bayeshlm as bh

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def random_coefficient_fit():
    return bh.HLM("mathach ~ cses + (cses | school)", bh.datasets.load("hsb")).fit(method="reml")


def _arrows(ax):
    return [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]


def test_shrinkage_plane_draws_every_school(random_coefficient_fit, tmp_path):
    figure = bh.plots.shrinkage(random_coefficient_fit)
    ax = figure.axes[0]
    assert len(_arrows(ax)) == 160
    ols, eb, population = ax.collections
    assert len(ols.get_offsets()) == len(eb.get_offsets()) == 160 and len(population.get_offsets()) == 1
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("(Intercept)", "cses")
    figure.savefig(tmp_path / "shrinkage.png")
    assert (tmp_path / "shrinkage.png").stat().st_size > 10_000


def test_shrinkage_moves_estimates_toward_the_population_value(random_coefficient_fit):
    ax = bh.plots.shrinkage(random_coefficient_fit, coefficients=("cses",)).axes[0]
    ols, eb = (c.get_offsets()[:, 0] for c in ax.collections[:2])
    center = random_coefficient_fit.fixed_effects.loc["cses", "estimate"]
    assert abs(eb - center).max() < abs(ols - center).max() / 2  # EB slopes vary far less (R&B: .14 vs 2.66)
    assert len(_arrows(ax)) == 160


def test_shrinkage_rejects_unknown_coefficients(random_coefficient_fit):
    with pytest.raises(bh.OptionError, match="one or two of"):
        bh.plots.shrinkage(random_coefficient_fit, coefficients=("ses",))


def test_caterpillar_draws_one_interval_per_group_inside_the_band(random_coefficient_fit, tmp_path):
    figure = bh.plots.caterpillar(random_coefficient_fit, coefficient="(Intercept)")
    ax = figure.axes[0]
    intervals, points = ax.collections
    assert len(intervals.get_segments()) == 160 and len(points.get_offsets()) == 160
    estimates = points.get_offsets()[:, 1]
    assert (np.diff(estimates) >= 0).all()  # sorted
    assert len(ax.patches) == 1  # the band
    pv = random_coefficient_fit.plausible_values().loc["(Intercept)"]
    assert "plausible-value range (6.86, 18.41)" in [t.get_text() for t in ax.get_legend().get_texts()]
    inside = (estimates > pv["lower"]) & (estimates < pv["upper"])
    assert 0.9 < inside.mean() < 1  # shrunken estimates mostly, not all, fall in the 95% range
    figure.savefig(tmp_path / "caterpillar.png")
