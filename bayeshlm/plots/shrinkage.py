"""Shrinkage plot: each group's OLS estimate, its empirical-Bayes (or posterior-mean) estimate, and the
arrow between them, pulled toward the group's predicted value gamma'W_j -- one population value when the
coefficient has no level-2 predictors (R&B 2002, Figure 4.1 and eq. 3.56-3.57)."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ..errors import OptionError
from ..results import FitResult
from ..results.contract import wide
from ..results.hlm_statistics import group_ols
from ._groups import varies_across_groups

PREDICTED_LABEL = "each group's predicted value γ'W_j"
TARGET_ROW = -0.8  # height of the predicted values' row in the one-coefficient plot


def shrinkage(fit: FitResult, factor: str | None = None, coefficients: tuple[str, ...] | None = None) -> Figure:
    """Draw OLS -> shrunken estimates per group for one coefficient (strip plot) or two (plane).

    Marker area grows with group size; groups whose OLS estimate is not estimable are left out and the
    title says how many. With level-2 predictors of the coefficients each group's own predicted value
    gamma'W_j is marked (gid ``"predicted"``), else the one population value gamma_q0. Returns a matplotlib
    Figure (no pyplot state is touched).
    """
    name = fit._factor_name(factor)
    f = fit.design.factor(name)
    coefficients = tuple(coefficients or f.coef_names[:2])
    unknown = [c for c in coefficients if c not in f.coef_names]
    if unknown or not 1 <= len(coefficients) <= 2:
        raise OptionError(f"coefficients must be one or two of {list(f.coef_names)}; got {list(coefficients)}.")
    ols = group_ols(fit.design, fit._gamma(), fit.sigma2, name)
    shrunk = wide(fit.group_effects(name))
    idx = [f.coef_names.index(c) for c in coefficients]
    keep = ols.usable
    raw = ols.estimates[keep][:, idx]
    eb = shrunk[list(coefficients)].to_numpy(dtype=float)[keep]
    target = ols.predicted[keep][:, idx]  # gamma_q'W_j: what each group's estimate shrinks toward (eq. 3.56)
    conditional = any(varies_across_groups(target[:, k]) for k in range(len(idx)))
    sizes = 10 + 60 * f.group_sizes[keep] / f.group_sizes.max()
    figure = Figure(figsize=(6.5, 5 if len(idx) == 2 else 3.5))
    ax = figure.add_subplot()
    if len(idx) == 1:
        rows = np.arange(len(raw))
        ax.scatter(raw[:, 0], np.ones_like(rows), s=sizes, facecolors="none", edgecolors="C0", label="OLS")
        ax.scatter(eb[:, 0], np.zeros_like(rows), s=sizes, color="C1", label=_shrunk_label(fit))
        for a, b in zip(raw[:, 0], eb[:, 0]):
            ax.annotate("", xy=(b, 0), xytext=(a, 1), arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.6})
        if conditional:  # a third row below: each group's target, joined to its shrunken estimate
            ax.scatter(target[:, 0], np.full(len(rows), TARGET_ROW), marker="|", s=80, color="k", zorder=3,
                       gid="predicted", label=PREDICTED_LABEL)
            joins = [[(b, 0), (t, TARGET_ROW)] for b, t in zip(eb[:, 0], target[:, 0])]
            ax.add_collection(LineCollection(joins, colors="0.7", linewidths=0.5, linestyles=":"))
            ax.set_yticks([TARGET_ROW, 0, 1], ["predicted γ'W_j", _shrunk_label(fit), "OLS"])
            ax.set_ylim(TARGET_ROW - 0.3, 1.9)
        else:
            ax.axvline(target[0, 0], color="k", lw=1, ls="--", label="population value")
            ax.set_yticks([0, 1], [_shrunk_label(fit), "OLS"])
            ax.set_ylim(-0.3, 1.9)
        ax.set_xlabel(coefficients[0])
    else:
        ax.scatter(raw[:, 0], raw[:, 1], s=sizes, facecolors="none", edgecolors="C0", label="OLS")
        ax.scatter(eb[:, 0], eb[:, 1], s=sizes, color="C1", label=_shrunk_label(fit))
        for (x0, y0), (x1, y1) in zip(raw, eb):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.6})
        if conditional:
            ax.scatter(target[:, 0], target[:, 1], marker="x", s=14, lw=0.8, color="k", zorder=3, gid="predicted",
                       label=PREDICTED_LABEL)
        else:
            ax.scatter(*target[0], marker="*", s=250, color="k", zorder=3, label="population value")
        ax.set_xlabel(coefficients[0])
        ax.set_ylabel(coefficients[1])
    left_out = f.n_groups - int(keep.sum())
    ax.set_title(f"Shrinkage of {name} coefficients ({int(keep.sum())} groups"
                 + (f"; {left_out} without an OLS estimate left out" if left_out else "") + ")")
    if len(idx) == 1:  # one row of legend above the OLS row
        ax.legend(loc="upper center", ncols=3, frameon=False, fontsize="small")
    else:
        ax.legend(loc="upper right", frameon=False, fontsize="small")
    figure.tight_layout()
    return figure


def _shrunk_label(fit: FitResult) -> str:
    return fit.group_estimate_name
