"""Diagnostic plots of R&B (2002) ch. 9: normal Q-Q plots of the standardised EB residuals with the Mahalanobis
distance Q-Q plot (Fig. 9.5), and level-1 residuals against fitted values. The numbers come from
:mod:`bayeshlm.results.diagnostics`; matplotlib loads when a plot is drawn."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..results import diagnostics as dg


def eb_qq(fit, factor: str | None = None):
    """One panel per random coefficient: its standardised EB residuals u_qj / sd(u_qj) against normal quantiles;
    last panel: each group's Mahalanobis distance against the chi-square(q) quantiles. Points on the line:
    normal random effects; points far above it at the right end: outlying groups. Points carry gid ``"eb_qq"``
    and ``"mahalanobis"``."""
    from matplotlib.figure import Figure

    residuals = dg.eb_residuals(fit, factor)
    distances = dg.mahalanobis(fit, factor)
    terms = list(dict.fromkeys(residuals.index.get_level_values("term")))
    figure = Figure(figsize=(3.6 * (len(terms) + 1), 3.6), layout="constrained")
    axes = figure.subplots(1, len(terms) + 1, squeeze=False)[0]
    for ax, term in zip(axes, terms):
        z = np.sort(residuals.xs(term, level="term")["standardised"].dropna().to_numpy())
        expected = stats.norm.ppf((np.arange(1, len(z) + 1) - 0.5) / len(z))
        ax.scatter(expected, z, s=12, gid="eb_qq")
        _identity(ax, expected, z)
        ax.set(title=f"EB residuals: {term}", xlabel="normal quantile", ylabel="standardised EB residual")
    ok = distances.dropna(subset=["distance"])
    ax = axes[-1]
    ax.scatter(ok["expected"], ok["distance"], s=12, gid="mahalanobis")
    _identity(ax, ok["expected"].to_numpy(), ok["distance"].to_numpy())
    ax.set(title="Mahalanobis distances", xlabel=f"chi-square({int(ok['df'].max())}) quantile",
           ylabel="distance")
    return figure


def residuals_vs_fitted(fit):
    """Level-1 standardised residuals against fitted values, with the +-3 SD lines and a running median of the
    residuals (a trend away from 0: the mean model misses something; a funnel: the variance changes with the
    fitted value). Points carry gid ``"residuals"``."""
    from matplotlib.figure import Figure

    table = dg.level1_residuals(fit)
    figure = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.scatter(table["fitted"], table["standardised"], s=6, alpha=0.4, gid="residuals")
    for level in (-3.0, 0.0, 3.0):
        ax.axhline(level, color="grey", lw=0.8, ls="-" if level == 0 else "--")
    ordered = table.sort_values("fitted")
    window = max(len(ordered) // 20, 5)
    running = ordered["standardised"].rolling(window, center=True, min_periods=1).median()
    ax.plot(ordered["fitted"], running, color="C3", lw=1.5, gid="running_median")
    ax.set(xlabel="fitted value", ylabel="standardised residual", title="Level-1 residuals vs fitted")
    return figure


def _identity(ax, x: np.ndarray, y: np.ndarray) -> None:
    if len(x):
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([low, high], [low, high], color="grey", lw=0.8)
