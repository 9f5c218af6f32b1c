"""Plots render headless and draw what they claim: one arrow and two markers per group."""

import matplotlib
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
