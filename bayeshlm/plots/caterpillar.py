"""Caterpillar plot: every group's coefficient with its 95% interval, sorted, over the plausible-value band
(R&B 2002, eq. 3.64-3.65 for the EB intervals and eq. 4.4 for the plausible-value range)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..errors import OptionError
from ..results import FitResult
from ._groups import group_coefficients, predicted_coefficients, varies_across_groups


def caterpillar(fit: FitResult, factor: str | None = None, coefficient: str | None = None,
                level: float = 0.95) -> Figure:
    """Sorted group estimates with intervals (EB +/- z SD, or posterior intervals) over the range in which
    ``level`` of the groups' true coefficients are expected to lie.

    Without level-2 predictors of the coefficient that range is one band, gamma_q0 +/- z sqrt(tau_qq). With
    them each group's estimate shrinks toward its own predicted value gamma_q'W_j, so each group gets its own
    band gamma_q'W_j +/- z sqrt(tau_qq) (bars with gid ``"plausible"``) and a tick at gamma_q'W_j (gid
    ``"predicted"``). Bayesian fits use posterior-predictive ranges that include the uncertainty about gamma, T.
    """
    name = fit._factor_name(factor)
    coefs = fit.design.factor(name).coef_names
    coefficient = coefficient or coefs[0]
    if coefficient not in coefs:
        raise OptionError(f"coefficient must be one of {list(coefs)}; got {coefficient!r}.")
    estimate, lower, upper = group_coefficients(fit, name, coefficient, level)
    order = np.argsort(estimate)
    rank = np.arange(len(order))
    center, band_lower, band_upper = predicted_coefficients(fit, name, coefficient, level)
    figure = Figure(figsize=(7, 4))
    ax = figure.add_subplot()
    if varies_across_groups(center):
        half = np.median(band_upper - band_lower) / 2
        ax.bar(rank, (band_upper - band_lower)[order], bottom=band_lower[order], width=1.0, color="C2", alpha=0.15,
               gid="plausible", label=f"plausible range at each group's predicted value (±{half:.2f})")
        ax.scatter(rank, center[order], marker="_", s=30, color="C2", zorder=2, gid="predicted",
                   label="predicted value γ'W_j")
    else:
        pv = fit.plausible_values(name, level).loc[coefficient]
        ax.axhspan(pv["lower"], pv["upper"], color="C2", alpha=0.15,
                   label=f"plausible-value range ({pv['lower']:.2f}, {pv['upper']:.2f})")
    ax.vlines(rank, lower[order], upper[order], color="0.5", lw=0.8)
    ax.scatter(rank, estimate[order], s=8, color="C0", zorder=3,
               label=fit.group_estimate_name)
    ax.set_xlabel(f"{name} (sorted by estimate)")
    ax.set_ylabel(coefficient)
    ax.set_title(f"{coefficient} in {len(order)} groups of {name}, {level:.0%} intervals")
    ax.legend(loc="upper left", frameon=False, fontsize="small")
    figure.tight_layout()
    return figure
