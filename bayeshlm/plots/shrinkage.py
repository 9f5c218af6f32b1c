"""Shrinkage plot: each group's OLS estimate, its empirical-Bayes (or posterior-mean) estimate, and the
arrow between them, pulled toward the group's predicted value gamma'W_j -- one population value when the
coefficient has no level-2 predictors (R&B 2002, Figure 4.1 and eq. 3.56-3.57)."""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from ..results import FitResult
from ..results.contract import wide
from ..results.hlm_statistics import group_ols
from ._canvas import Canvas
from ._groups import varies_across_groups

PREDICTED_LABEL = "each group's predicted value γ'W_j"
TARGET_ROW = -0.8  # height of the predicted values' row in the one-coefficient plot


def shrinkage(fit: FitResult, factor: str | None = None, coefficients: tuple[str, ...] | None = None,
              backend: str = "matplotlib"):
    """Draw OLS -> shrunken estimates per group for one coefficient (strip plot) or two (plane).

    Marker area grows with group size; groups whose OLS estimate is not estimable are left out and the
    title says how many. With level-2 predictors of the coefficients each group's own predicted value
    gamma'W_j is marked (gid ``"predicted"``), else the one population value gamma_q0. Returns a matplotlib
    Figure (no pyplot state is touched), or with ``backend="bokeh"`` / ``"plotly"`` an interactive figure drawn
    through arviz-plots (the OLS and shrunken estimates carry gids ``"ols"`` and ``"shrunken"``).
    """
    name = fit.factor_name(factor)
    f = fit.design.factor(name)
    coefficients = tuple(coefficients or f.coef_names[:2])
    unknown = [c for c in coefficients if c not in f.coef_names]
    if unknown or not 1 <= len(coefficients) <= 2:
        raise OptionError(f"coefficients must be one or two of {list(f.coef_names)}; got {list(coefficients)}.")
    ols = group_ols(fit.design, fit.gamma, fit.sigma2, name)
    shrunk = wide(fit.group_effects(name))
    idx = [f.coef_names.index(c) for c in coefficients]
    keep = ols.usable
    raw = ols.estimates[keep][:, idx]
    eb = shrunk[list(coefficients)].to_numpy(dtype=float)[keep]
    target = ols.predicted[keep][:, idx]  # gamma_q'W_j: what each group's estimate shrinks toward (eq. 3.56)
    conditional = any(varies_across_groups(target[:, k]) for k in range(len(idx)))
    sizes = 10 + 60 * f.group_sizes[keep] / f.group_sizes.max()
    canvas = Canvas(backend, figsize=(6.5, 5 if len(idx) == 2 else 3.5))
    if len(idx) == 1:
        rows = np.arange(len(raw))
        canvas.points(0, raw[:, 0], np.ones_like(rows), size=sizes, hollow=True, color="C0", label="OLS",
                      gid="ols")
        canvas.points(0, eb[:, 0], np.zeros_like(rows), size=sizes, color="C1", label=_shrunk_label(fit),
                      gid="shrunken")
        canvas.segments(0, np.column_stack([raw[:, 0], np.ones(len(rows))]),
                        np.column_stack([eb[:, 0], np.zeros(len(rows))]), color="0.6", width=0.6, arrows=True)
        if conditional:  # a third row below: each group's target, joined to its shrunken estimate
            canvas.points(0, target[:, 0], np.full(len(rows), TARGET_ROW), marker="|", size=80, color="k",
                          zorder=3, gid="predicted", label=PREDICTED_LABEL)
            canvas.segments(0, np.column_stack([eb[:, 0], np.zeros(len(rows))]),
                            np.column_stack([target[:, 0], np.full(len(rows), TARGET_ROW)]), color="0.7",
                            width=0.5, style=":")
            canvas.yticks(0, [TARGET_ROW, 0, 1], ["predicted γ'W_j", _shrunk_label(fit), "OLS"])
            canvas.limits(0, y=(TARGET_ROW - 0.3, 1.9))
        else:
            canvas.vline(0, target[0, 0], color="k", width=1, style="--", label="population value")
            canvas.yticks(0, [0, 1], [_shrunk_label(fit), "OLS"])
            canvas.limits(0, y=(-0.3, 1.9))
        canvas.labels(0, xlabel=coefficients[0])
    else:
        canvas.points(0, raw[:, 0], raw[:, 1], size=sizes, hollow=True, color="C0", label="OLS", gid="ols")
        canvas.points(0, eb[:, 0], eb[:, 1], size=sizes, color="C1", label=_shrunk_label(fit), gid="shrunken")
        canvas.segments(0, raw, eb, color="0.6", width=0.6, arrows=True)
        if conditional:
            canvas.points(0, target[:, 0], target[:, 1], marker="x", size=14, lw=0.8, color="k", zorder=3,
                          gid="predicted", label=PREDICTED_LABEL)
        else:
            canvas.points(0, [target[0, 0]], [target[0, 1]], marker="*", size=250, color="k", zorder=3,
                          label="population value")
        canvas.labels(0, xlabel=coefficients[0], ylabel=coefficients[1])
    left_out = f.n_groups - int(keep.sum())
    canvas.labels(0, title=f"Shrinkage of {name} coefficients ({int(keep.sum())} groups"
                  + (f"; {left_out} without an OLS estimate left out" if left_out else "") + ")")
    if len(idx) == 1:  # one row of legend above the OLS row
        canvas.legend(0, loc="upper center", ncols=3, frameon=False, fontsize="small")
    else:
        canvas.legend(0, loc="upper right", frameon=False, fontsize="small")
    return canvas.finish()


def _shrunk_label(fit: FitResult) -> str:
    return fit.group_estimate_name
