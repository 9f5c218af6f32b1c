"""Bayes-vs-likelihood pictures: a forest plot of several fits' estimates and intervals, and the
posterior of a variance with the REML and ML point estimates marked (R&B 2002, ch. 13, Figure 13.1)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..errors import OptionError
from ..report.report import compare
from ..results import FitResult


def forest_compare(*fits: FitResult, names: list[str] | None = None, level: float = 0.95,
                   parameters: list[str] | None = None) -> Figure:
    """One row per parameter (fixed effects, then variance components), one marker and interval per fit.

    Intervals are estimate +/- z SE for likelihood fits (none for their variances, which have no SE here)
    and equal-tailed posterior intervals for Bayesian fits.
    """
    table = compare(*fits, names=names, level=level)
    labels = list(table.columns.get_level_values("fit").unique())
    rows = parameters or list(table.index)
    missing = [r for r in rows if r not in table.index]
    if missing:
        raise OptionError(f"Unknown parameters {missing}; choose from {list(table.index)}.")
    figure = Figure(figsize=(7, 0.45 * len(rows) * max(1, len(labels) / 2) + 1.2))
    axes = figure.subplots(1, 2, width_ratios=[3, 2], sharey=True)
    fixed = [r for r in rows if r.startswith("fixed: ")]
    variances = [r for r in rows if not r.startswith("fixed: ")]
    offsets = np.linspace(-0.25, 0.25, len(labels)) if len(labels) > 1 else np.zeros(1)
    for ax, group in zip(axes, (fixed, variances)):
        for k, label in enumerate(labels):
            part = table.loc[group, label] if group else None
            if part is None or part.empty:
                continue
            y = np.array([rows.index(r) for r in group]) + offsets[k]
            ax.hlines(y, part["lower"], part["upper"], color=f"C{k}", lw=1.5)
            ax.plot(part["estimate"], y, "o", color=f"C{k}", label=label, ms=4)
    axes[0].set_yticks(range(len(rows)), [r.removeprefix("fixed: ") for r in rows])
    axes[0].invert_yaxis()
    axes[0].set_title("fixed effects")
    axes[1].set_title("variance components")
    axes[0].legend(loc="best", frameon=False, fontsize="small")
    figure.tight_layout()
    return figure


def variance_posterior(bayes: FitResult, *point_fits: FitResult, factor: str | None = None,
                       coefficient: str | None = None) -> Figure:
    """Histogram of the posterior of tau_qq (or of sigma^2 with ``factor="sigma2"``) with the point
    estimates of REML/ML fits drawn as vertical lines, and the posterior mean, median and mode marked."""
    if bayes.method != "bayes":
        raise OptionError("variance_posterior() needs a Bayesian fit first; likelihood fits follow it.")
    if factor == "sigma2":
        draws = (bayes.draws("sigma").values ** 2).reshape(-1)
        label, points = "sigma^2", [(f.method, f.sigma2) for f in point_fits]
    else:
        name = bayes._factor_name(factor)
        coefs = bayes.design.factor(name).coef_names
        coefficient = coefficient or coefs[0]
        if coefficient not in coefs:
            raise OptionError(f"coefficient must be one of {list(coefs)}; got {coefficient!r}.")
        k = coefs.index(coefficient)
        draws = bayes.draws(f"T_{name}").values[..., k, k].reshape(-1)
        label = f"var({coefficient}) in {name}"
        points = [(f.method, f.tau[name].loc[coefficient, coefficient]) for f in point_fits]
    figure = Figure(figsize=(6.5, 3.8))
    ax = figure.add_subplot()
    counts, edges, _ = ax.hist(draws, bins=60, density=True, color="0.75", label="posterior")
    mode = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    for value, style, name in ((draws.mean(), "-", "mean"), (np.median(draws), "--", "median"),
                               (mode, ":", "mode")):
        ax.axvline(value, color="k", ls=style, lw=1, label=f"posterior {name} {value:.3g}")
    for k, (method, value) in enumerate(points):
        ax.axvline(value, color=f"C{k + 1}", lw=2, label=f"{method.upper()} {value:.3g}")
    ax.set_xlabel(label)
    ax.set_ylabel("posterior density")
    ax.set_title(f"Posterior of {label}")
    ax.legend(frameon=False, fontsize="small")
    figure.tight_layout()
    return figure
