"""bh.plots on the three backends of arviz-plots (issue 28): one plot function draws the same numbers as a matplotlib
Figure, a plotly Figure or a bokeh layout. Elements are found by their gid (plotly trace ``meta``, bokeh renderer
name). REML fits here; the Bayesian fits of test_plots_bayes.py run the same plots on both interactive backends."""

import importlib.util
import warnings

import matplotlib
import numpy as np
import pytest

import bayeshlm as bh

matplotlib.use("Agg")
pytest.importorskip("arviz_plots")
go = pytest.importorskip("plotly.graph_objects")
bokeh_models = pytest.importorskip("bokeh.models")


@pytest.fixture(scope="module")
def reml():
    return bh.HLM("mathach ~ meanses*cses + (cses | school)", bh.datasets.load("hsb")).fit("reml")


def plotly_trace(figure, gid):
    found = [t for t in figure.data if isinstance(t.meta, dict) and t.meta.get("gid") == gid]
    assert len(found) == 1, f"expected one trace with gid {gid!r}"
    return found[0]


def bokeh_renderer(layout, gid):
    found = [r for child in layout.children for r in child[0].renderers if r.name == gid]
    assert len(found) == 1, f"expected one renderer named {gid!r}"
    return found[0]


def segment_count(x):
    """Segments drawn as one NaN-broken polyline: (start, end, NaN) per segment."""
    x = np.asarray(x, dtype=float)
    assert len(x) % 3 == 0 and np.isnan(x[2::3]).all()
    return len(x) // 3


def mpl_offsets(figure, gid):
    return [c for c in figure.axes[0].collections if c.get_gid() == gid][0].get_offsets()


def test_caterpillar_draws_the_same_groups_on_every_backend(reml):
    mpl = bh.plots.caterpillar(reml, coefficient="cses")
    expected = mpl_offsets(mpl, "estimates")
    predicted = mpl_offsets(mpl, "predicted")
    figure = bh.plots.caterpillar(reml, coefficient="cses", backend="plotly")
    assert isinstance(figure, go.Figure)
    np.testing.assert_allclose(plotly_trace(figure, "estimates").y, expected[:, 1], rtol=1e-12)
    np.testing.assert_allclose(plotly_trace(figure, "predicted").y, predicted[:, 1], rtol=1e-12)
    assert segment_count(plotly_trace(figure, "intervals").x) == 160
    assert len(plotly_trace(figure, "plausible").y) == 160  # one band per school at its own prediction
    layout = bh.plots.caterpillar(reml, coefficient="cses", backend="bokeh")
    assert isinstance(layout, bokeh_models.GridPlot)
    np.testing.assert_allclose(bokeh_renderer(layout, "estimates").data_source.data["y"], expected[:, 1])
    assert segment_count(bokeh_renderer(layout, "intervals").data_source.data["x"]) == 160


def test_shrinkage_draws_one_marker_per_school_and_one_arrow_each(reml):
    mpl = bh.plots.shrinkage(reml)
    for backend in ("plotly", "bokeh"):
        figure = bh.plots.shrinkage(reml, backend=backend)
        if backend == "plotly":
            ols, shrunk = plotly_trace(figure, "ols"), plotly_trace(figure, "shrunken")
            drawn = [np.column_stack([t.x, t.y]) for t in (ols, shrunk)]
            arrows = [t for t in figure.data if t.mode == "lines"]
        else:
            drawn = [np.column_stack([bokeh_renderer(figure, g).data_source.data[a] for a in "xy"])
                     for g in ("ols", "shrunken")]
            arrows = [r for r in figure.children[0][0].renderers if isinstance(r.glyph, bokeh_models.Line)]
        assert [len(d) for d in drawn] == [160, 160]
        np.testing.assert_allclose(drawn[1], mpl.axes[0].collections[1].get_offsets(), rtol=1e-12)
        assert len(arrows) == 1 and segment_count(arrows[0].x if backend == "plotly"
                                                  else arrows[0].data_source.data["x"]) == 160


def test_forest_compare_one_panel_per_parameter_on_plotly(reml):
    ml = bh.HLM("mathach ~ meanses*cses + (cses | school)", bh.datasets.load("hsb")).fit("ml")
    table = bh.compare(reml, ml)
    figure = bh.plots.forest_compare(reml, ml, backend="plotly")
    markers = [t for t in figure.data if t.mode == "markers"]
    assert len(markers) == 2 * len(table)  # one marker per fit per parameter
    np.testing.assert_allclose([t.x[0] for t in markers],
                               table.loc[:, (slice(None), "estimate")].to_numpy(dtype=float).ravel())
    assert sum(t.showlegend for t in markers) == 2  # one legend entry per fit


def test_meta_forest_and_growth_on_the_interactive_backends():
    fit = bh.meta("yi ~ 1", bh.datasets.load("teacher_expectancy"), vi="vi")
    figure = bh.plots.forest(fit, labels=["author", "year"], backend="plotly")
    np.testing.assert_allclose(plotly_trace(figure, "observed").x, fit.study_effects["effect"], rtol=1e-12)
    assert figure.layout.yaxis.ticktext[0] == "Rosenthal et al. 1974"
    data = bh.datasets.load("sleepstudy")
    growth = bh.HLM("Reaction ~ Days + (Days | Subject)", data).fit("reml")
    layout = bh.plots.growth(growth, time="Days", n_persons=4, backend="bokeh")
    lines = [r for r in layout.children[0][0].renderers if isinstance(r.glyph, bokeh_models.Line)]
    assert len(lines) == 2 * 4 + 1  # observed and fitted per person, and the population line


def test_bokeh_layouts_show_as_html_in_a_notebook(reml):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        bh.plots._show_figures_inline_in_ipython()
        layout = bh.plots.caterpillar(reml, backend="bokeh")
        html = shell.display_formatter.format(layout)[0]["text/html"]
    finally:
        InteractiveShell.clear_instance()
    assert "cdn.bokeh.org/bokeh/release/bokeh-" in html and layout.id in html and "<table" not in html


def test_a_backend_that_is_not_there_is_named(reml, monkeypatch):
    with pytest.raises(bh.OptionError, match="backend must be one of 'matplotlib', 'bokeh', 'plotly'; got 'ggplot'"):
        bh.plots.caterpillar(reml, backend="ggplot")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bokeh" else real(name, *a))
    with pytest.raises(bh.OptionError, match=r"needs the bokeh package: pip install 'bayeshlm\[interactive\]'"):
        bh.plots.shrinkage(reml, backend="bokeh")


def test_bayesian_fits_on_plotly_and_bokeh():
    """The same plots on a (tiny) Bayesian fit: posterior means and intervals, the variance posterior."""
    data = bh.datasets.load("sleepstudy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: low-ESS warnings are expected
        bayes = bh.HLM("Reaction ~ Days + (Days | Subject)", data).fit("bayes", draws=60, tune=60, chains=2,
                                                                          random_seed=5, progressbar=False)
    figure = bh.plots.caterpillar(bayes, coefficient="Days", backend="plotly")
    posterior = bayes.group_effects("Subject").xs("Days", level="term")["estimate"].to_numpy()
    np.testing.assert_allclose(plotly_trace(figure, "estimates").y, np.sort(posterior), rtol=1e-12)
    shrink = bh.plots.shrinkage(bayes, backend="plotly")
    np.testing.assert_allclose(plotly_trace(shrink, "shrunken").y,
                               bayes.group_effects("Subject").xs("Days", level="term")["estimate"], rtol=1e-12)
    reml = bh.HLM("Reaction ~ Days + (Days | Subject)", data).fit("reml")
    panels = bh.plots.forest_compare(bayes, reml, backend="bokeh")
    figures = [child[0] for child in panels.children]
    assert len(figures) == 6  # gamma_0, gamma_1, three entries of T, sigma^2
    assert sum(isinstance(r.glyph, bokeh_models.Scatter) for f in figures for r in f.renderers) == 2 * 6
    layout = bh.plots.variance_posterior(bayes, reml, factor="sigma2", backend="bokeh")
    bars = [r for r in layout.children[0][0].renderers if isinstance(r.glyph, bokeh_models.Quad)]
    assert len(bars) == 1 and len(bars[0].data_source.data["top"]) == 60
    density = np.asarray(bars[0].data_source.data["top"])
    width = np.asarray(bars[0].data_source.data["right"]) - np.asarray(bars[0].data_source.data["left"])
    assert np.sum(density * width) == pytest.approx(1.0, abs=1e-9)  # a density histogram
    _convergence_pictures(bayes, reml)


def _convergence_pictures(bayes, reml):
    """Trace, rank and energy plots are arviz-plots' own PlotCollections, on every backend."""
    from arviz_plots import PlotCollection

    for backend, figure_type in (("matplotlib", matplotlib.figure.Figure), ("plotly", go.Figure),
                                 ("bokeh", bokeh_models.GridPlot)):
        for kind in ("trace", "rank", "energy"):
            collection = bh.plots.convergence(bayes, kind, backend=backend)
            assert isinstance(collection, PlotCollection)
            assert isinstance(collection.viz["figure"].item(), figure_type)
    trace = bh.plots.convergence(bayes, "trace", var_names=["sigma"], backend="plotly").viz["figure"].item()
    drawn = np.concatenate([t.y for t in trace.data if t.mode == "lines" and len(t.y) == 60])  # one line per chain
    np.testing.assert_allclose(np.sort(drawn), np.sort(bayes.draws("sigma").values.ravel()), rtol=1e-12)
    with pytest.raises(bh.OptionError, match="'sigm' is not a posterior variable. Did you mean 'sigma'"):
        bh.plots.convergence(bayes, var_names=["sigm"])
    with pytest.raises(bh.OptionError, match="kind='ranks': use one of 'trace', 'rank', 'energy'. Did you mean"):
        bh.plots.convergence(bayes, "ranks")
    with pytest.raises(bh.OptionError, match="Bayesian fit"):
        bh.plots.convergence(reml)
