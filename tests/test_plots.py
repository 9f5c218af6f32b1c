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


# --- issue 28: plots that mislead in conditional models, a flattened forest_compare, numbered studies --------------
from bayeshlm.results.contract import wide  # noqa: E402
from bayeshlm.results.hlm_statistics import fixed_part  # noqa: E402

CONDITIONAL = "mathach ~ meanses*cses + sector*cses + (cses | school)"


def _by_gid(ax, gid):
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, f"expected one artist with gid {gid!r}"
    return found[0]


@pytest.fixture(scope="module")
def conditional_fit():
    return bh.HLM(CONDITIONAL, bh.datasets.load("hsb")).fit(method="reml")


def test_shrinkage_pulls_each_school_toward_its_own_predicted_value():
    """Intercepts-as-outcomes: EB = W_j'gamma + lambda_j (OLS_j - W_j'gamma), so the point each arrow heads for is
    the school's predicted mean, not gamma_00 (the old plot drew one line at meanses = 0)."""
    fit = bh.HLM("mathach ~ meanses + (1 | school)", bh.datasets.load("hsb")).fit("reml")
    ax = bh.plots.shrinkage(fit).axes[0]
    ols, eb = (c.get_offsets()[:, 0] for c in ax.collections[:2])
    target = _by_gid(ax, "predicted").get_offsets()[:, 0]
    gamma = fit.fixed_effects["estimate"]
    np.testing.assert_allclose(target, wide(fit.group_effects())["(Intercept)"] - wide(fit.random_effects())[
        "(Intercept)"], rtol=1e-12)
    assert np.ptp(target) > 5 * gamma["meanses"] * 0.2  # the targets really differ between schools
    pulled = (eb - target) / (ols - target)  # the reliability lambda_j of each school's mean (R&B eq. 3.56)
    np.testing.assert_allclose(pulled, fit.reliability()["(Intercept)"], rtol=1e-6)
    assert not any(line.get_label() == "population value" for line in ax.lines)


def test_shrinkage_plane_marks_every_schools_predicted_coefficients(conditional_fit):
    ax = bh.plots.shrinkage(conditional_fit).axes[0]
    drawn = _by_gid(ax, "predicted").get_offsets()
    expected = fixed_part(conditional_fit.design, conditional_fit.gamma, "school")
    assert drawn.shape == (160, 2)
    np.testing.assert_allclose(drawn, expected, rtol=1e-12)


def test_caterpillar_bands_sit_at_each_schools_prediction(conditional_fit):
    ax = bh.plots.caterpillar(conditional_fit, coefficient="cses").axes[0]
    estimates = ax.collections[-1].get_offsets()[:, 1]
    order = np.argsort(wide(conditional_fit.group_effects())["cses"].to_numpy())
    np.testing.assert_allclose(estimates, wide(conditional_fit.group_effects())["cses"].to_numpy()[order])
    centers = fixed_part(conditional_fit.design, conditional_fit.gamma, "school")[order, 1]
    np.testing.assert_allclose(_by_gid(ax, "predicted").get_offsets()[:, 1], centers, rtol=1e-12)
    bars = [patch for patch in ax.patches if patch.get_gid() == "plausible"]
    assert len(bars) == 160
    half = 1.959964 * np.sqrt(conditional_fit.tau["school"].loc["cses", "cses"])
    np.testing.assert_allclose([b.get_y() for b in bars], centers - half, rtol=1e-5)
    np.testing.assert_allclose([b.get_height() for b in bars], 2 * half, rtol=1e-5)
    inside = np.abs(estimates - centers) < half
    assert inside.all()  # EB slopes stay within their own school's range (tau_11 is small: R&B Table 4.5)


def test_forest_compare_gives_each_parameter_its_own_scale(conditional_fit):
    """sigma^2 (36.7) shared an axis with var(cses) (0.10) and cov (0.19): those collapsed onto one point."""
    ml = bh.HLM(CONDITIONAL, bh.datasets.load("hsb")).fit("ml")
    figure = bh.plots.forest_compare(conditional_fit, ml)
    table = bh.compare(conditional_fit, ml)
    panels = {ax.get_title(loc="left"): ax for ax in figure.axes}
    assert list(panels) == [r.removeprefix("fixed: ") for r in table.index]
    for row in table.index:
        ax = panels[row.removeprefix("fixed: ")]
        xs = [line.get_xdata()[0] for line in ax.get_lines()]
        np.testing.assert_allclose(xs, table.loc[row, (slice(None), "estimate")].to_numpy(dtype=float))
        low, high = ax.get_xlim()
        assert low < min(xs) and max(xs) < high
        drawn = table.loc[row, (slice(None), ["estimate", "lower", "upper"])].to_numpy(dtype=float)
        span = np.nanmax(drawn) - np.nanmin(drawn)
        assert high - low < 1.5 * span + 0.5 * max(abs(x) for x in xs)  # its own scale: what it draws, padded
    var_cses = panels["school: var(cses)"].get_xlim()
    assert var_cses[1] - var_cses[0] < 1  # was 0 .. 36.7 on the shared variance axis (now with its intervals)
    sigma2 = panels["sigma^2"].get_xlim()
    assert sigma2[1] - sigma2[0] > 1  # equal point estimates without intervals are not blown up to 1e-5
    with pytest.raises(bh.OptionError, match="Unknown parameters"):
        bh.plots.forest_compare(conditional_fit, ml, parameters=["sigma2"])


def test_meta_forest_names_studies_by_author_and_year():
    data = bh.datasets.load("teacher_expectancy")
    fit = bh.meta("yi ~ 1", data, vi="vi")
    ax = bh.plots.forest(fit, labels=["author", "year"]).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:3] == ["Rosenthal et al. 1974", "Conn et al. 1968", "Jose & Cody 1971"]
    assert labels[-1] == "REML model" and len(labels) == 20
    by_author = [t.get_text() for t in bh.plots.forest(fit, labels="author").axes[0].get_yticklabels()]
    assert by_author[3] == "Pellegrini & Hicks"
    shuffled = data.sample(frac=1, random_state=4)  # labels follow the rows, not the positions
    again = bh.plots.forest(bh.meta("yi ~ 1", shuffled, vi="vi"), labels=["author", "year"]).axes[0]
    assert [t.get_text() for t in again.get_yticklabels()][:19] == [
        f"{a} {y}" for a, y in zip(shuffled["author"], shuffled["year"])]
    with pytest.raises(bh.OptionError, match="'autor' is not a column.*Did you mean 'author'"):
        bh.plots.forest(fit, labels="autor")
    with pytest.raises(bh.OptionError, match="'yr' is not a column"):
        bh.plots.forest(fit, labels=["author", "yr"])
