"""Bayes-vs-likelihood pictures: a forest plot of several fits' estimates and intervals, and the
posterior of a variance with the REML and ML point estimates marked (R&B 2002, ch. 13, Figure 13.1)."""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from ..results import FitResult
from ..results.comparison import compare
from ._canvas import Canvas


def forest_compare(*fits: FitResult, names: list[str] | None = None, level: float = 0.95,
                   parameters: list[str] | None = None, backend: str = "matplotlib"):
    """One small panel per parameter (fixed effects, then variance components), each on its own scale, with one
    marker and interval per fit: sigma^2 and the T entries differ by orders of magnitude, and on one shared
    axis the smaller ones collapse onto a point.

    Intervals are estimate +/- z SE for likelihood fits (none for their variances, which have no SE here)
    and equal-tailed posterior intervals for Bayesian fits. Each panel's title is the parameter. ``backend``:
    "matplotlib" (default), "bokeh" or "plotly" (through arviz-plots).
    """
    table = compare(*fits, names=names, level=level)
    labels = list(table.columns.get_level_values("fit").unique())
    rows = parameters or list(table.index)
    missing = [r for r in rows if r not in table.index]
    if missing:
        raise OptionError(f"Unknown parameters {missing}; choose from {list(table.index)}.")
    columns = 2 if len(rows) > 3 else 1
    panel_rows = -(-len(rows) // columns)
    canvas = Canvas(backend, figsize=(4.2 * columns, panel_rows * (0.55 + 0.22 * len(labels)) + 0.6),
                    rows=panel_rows, cols=columns)
    for panel, row in enumerate(rows):
        for k, label in enumerate(labels):
            part = table.loc[row, label]
            canvas.horizontal(panel, [k], [part["lower"]], [part["upper"]], color=f"C{k}", width=1.5)
            canvas.markers(panel, [part["estimate"]], [k], color=f"C{k}", size=4, label=label if panel == 0 else None)
        drawn = table.loc[row, (slice(None), ["estimate", "lower", "upper"])]
        canvas.limits(panel, x=_panel_range(drawn.to_numpy(dtype=float)), y=(len(labels) - 0.5, -0.5))
        canvas.labels(panel, title=row.removeprefix("fixed: "), title_size="small", title_loc="left")
        canvas.yticks(panel, [])
        if canvas.mpl:
            canvas.panels[panel].tick_params(axis="x", labelsize="small")
    for panel in range(len(rows), len(canvas.panels)):
        canvas.hide(panel)
    canvas.legend(None, loc="upper center", ncols=len(labels), frameon=False, fontsize="small")
    return canvas.finish(rect=(0, 0, 1, 1 - 0.35 / canvas.figure.get_figheight()) if canvas.mpl else None)


def _panel_range(values: np.ndarray) -> tuple[float, float]:
    """x-limits around a parameter's estimates and interval ends, padded by 10% of their spread and at least 5% of
    their size, so that near-equal point estimates without intervals are not blown up into a difference."""
    values = values[np.isfinite(values)]
    low, high = values.min(), values.max()
    pad = max(0.1 * (high - low), 0.05 * np.abs(values).max(), 1e-12)
    return low - pad, high + pad


def variance_posterior(bayes: FitResult, *point_fits: FitResult, factor: str | None = None,
                       coefficient: str | None = None, backend: str = "matplotlib"):
    """Histogram of the posterior of tau_qq (or of sigma^2 with ``factor="sigma2"``) with the point
    estimates of REML/ML fits drawn as vertical lines, and the posterior mean, median and mode marked.
    ``backend``: "matplotlib" (default), "bokeh" or "plotly" (through arviz-plots)."""
    if bayes.method != "bayes":
        raise OptionError("variance_posterior() needs a Bayesian fit first; likelihood fits follow it.")
    if factor == "sigma2":
        draws = (bayes.draws("sigma").values ** 2).reshape(-1)
        label, points = "sigma^2", [(f.method, f.sigma2) for f in point_fits]
    else:
        name = bayes.factor_name(factor)
        coefs = bayes.design.factor(name).coef_names
        coefficient = coefficient or coefs[0]
        if coefficient not in coefs:
            raise OptionError(f"coefficient must be one of {list(coefs)}; got {coefficient!r}.")
        k = coefs.index(coefficient)
        draws = bayes.draws(f"T_{name}").values[..., k, k].reshape(-1)
        label = f"var({coefficient}) in {name}"
        points = [(f.method, f.tau[name].loc[coefficient, coefficient]) for f in point_fits]
    canvas = Canvas(backend, figsize=(6.5, 3.8))
    counts, edges = canvas.histogram(0, draws, bins=60, color="0.75", label="posterior")
    mode = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    for value, style, name in ((draws.mean(), "-", "mean"), (np.median(draws), "--", "median"),
                               (mode, ":", "mode")):
        canvas.vline(0, value, color="k", style=style, width=1, label=f"posterior {name} {value:.3g}")
    for k, (method, value) in enumerate(points):
        canvas.vline(0, value, color=f"C{k + 1}", width=2, label=f"{method.upper()} {value:.3g}")
    canvas.labels(0, xlabel=label, ylabel="posterior density", title=f"Posterior of {label}")
    canvas.legend(0, frameon=False, fontsize="small")
    return canvas.finish()
