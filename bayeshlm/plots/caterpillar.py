"""Caterpillar plot: every group's coefficient with its 95% interval, sorted, over the plausible-value band
(R&B 2002, eq. 3.64-3.65 for the EB intervals and eq. 4.4 for the plausible-value range)."""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from ..results import FitResult
from ._canvas import Canvas
from ._groups import group_coefficients, predicted_coefficients, varies_across_groups


def caterpillar(fit: FitResult, factor: str | None = None, coefficient: str | None = None,
                level: float = 0.95, backend: str = "matplotlib"):
    """Sorted group estimates with intervals (EB +/- z SD, or posterior intervals) over the range in which
    ``level`` of the groups' true coefficients are expected to lie.

    Without level-2 predictors of the coefficient that range is one band, gamma_q0 +/- z sqrt(tau_qq). With
    them each group's estimate shrinks toward its own predicted value gamma_q'W_j, so each group gets its own
    band gamma_q'W_j +/- z sqrt(tau_qq) (bars with gid ``"plausible"``) and a tick at gamma_q'W_j (gid
    ``"predicted"``). Bayesian fits use posterior-predictive ranges that include the uncertainty about gamma, T.

    ``backend``: "matplotlib" (a Figure, the default), "bokeh" or "plotly" (interactive figures, drawn through
    arviz-plots). The estimates carry gid ``"estimates"``, their intervals ``"intervals"``.
    """
    name = fit.factor_name(factor)
    coefs = fit.design.factor(name).coef_names
    coefficient = coefficient or coefs[0]
    if coefficient not in coefs:
        raise OptionError(f"coefficient must be one of {list(coefs)}; got {coefficient!r}.")
    estimate, lower, upper = group_coefficients(fit, name, coefficient, level)
    order = np.argsort(estimate)
    rank = np.arange(len(order))
    center, band_lower, band_upper = predicted_coefficients(fit, name, coefficient, level)
    canvas = Canvas(backend, figsize=(7, 4))
    if varies_across_groups(center):
        half = np.median(band_upper - band_lower) / 2
        canvas.columns(0, rank, band_lower[order], band_upper[order], color="C2", alpha=0.15, gid="plausible",
                       label=f"plausible range at each group's predicted value (±{half:.2f})")
        canvas.points(0, rank, center[order], marker="_", size=30, color="C2", zorder=2, gid="predicted",
                      label="predicted value γ'W_j")
    else:
        pv = fit.plausible_values(name, level).loc[coefficient]
        canvas.hspan(0, pv["lower"], pv["upper"], color="C2", alpha=0.15,
                     label=f"plausible-value range ({pv['lower']:.2f}, {pv['upper']:.2f})")
    canvas.vertical(0, rank, lower[order], upper[order], color="0.5", width=0.8, gid="intervals")
    canvas.points(0, rank, estimate[order], size=8, color="C0", zorder=3, label=fit.group_estimate_name,
                  gid="estimates")
    canvas.labels(0, xlabel=f"{name} (sorted by estimate)", ylabel=coefficient,
                  title=f"{coefficient} in {len(order)} groups of {name}, {level:.0%} intervals")
    canvas.legend(0, loc="upper left", frameon=False, fontsize="small")
    return canvas.finish()
