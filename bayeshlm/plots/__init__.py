"""Plots that return matplotlib figures (headless-safe; no pyplot state is touched), or with ``backend="plotly"`` /
``"bokeh"`` interactive figures drawn through arviz-plots' backends (``pip install 'bayeshlm[interactive]'``; a
plotly figure shows itself in a notebook, a bokeh layout with ``bokeh.plotting.show``).

In Jupyter a returned figure shows inline: matplotlib registers its picture formatter for figures only when
pyplot loads the inline backend, and these figures are built without pyplot, so the formatter is registered
here when the plots are imported inside IPython (unless the user has set one for figures already).
"""

import sys

from matplotlib.figure import Figure

from .caterpillar import caterpillar
from .compare import forest_compare, variance_posterior
from .convergence import convergence
from .diagnostics import eb_qq, residuals_vs_fitted
from .forest import forest
from .growth import growth
from .shrinkage import shrinkage

__all__ = ["caterpillar", "convergence", "eb_qq", "forest", "forest_compare", "growth", "residuals_vs_fitted",
           "shrinkage", "variance_posterior"]


def _show_figures_inline_in_ipython() -> None:
    if "IPython" not in sys.modules:  # a plain script or a test: nothing to display to
        return
    from IPython import get_ipython
    from IPython.core.pylabtools import print_figure

    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    png = shell.display_formatter.formatters["image/png"]
    if Figure not in png.type_printers:
        png.for_type(Figure, lambda figure: print_figure(figure, "png"))
    html = shell.display_formatter.formatters["text/html"]  # bokeh layouts, by name: bokeh loads only when used
    for module, name in (("bokeh.models.plots", "GridPlot"), ("bokeh.plotting._figure", "figure")):
        if (module, name) not in html.deferred_printers:
            html.for_type_by_name(module, name, bokeh_html)


def bokeh_html(layout) -> str:
    """A bokeh layout as the HTML of a notebook cell: BokehJS from its CDN, then the plot (a bokeh layout
    otherwise shows as a table of its attributes)."""
    from bokeh.embed import components
    from bokeh.resources import CDN

    script, div = components(layout)
    return CDN.render_js() + script + div


_show_figures_inline_in_ipython()
