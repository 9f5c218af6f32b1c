"""Growth plot: observed trajectories, per-person fitted lines and the population line with its interval
(R&B 2002, ch. 6: person-specific growth pi_0i + pi_1i a_ti around the population trajectory)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import OptionError
from ..results import FitResult
from ._canvas import Canvas
from ._groups import random_effect_means


def growth(fit: FitResult, time: str, person: str | None = None, n_persons: int = 12, level: float = 0.95,
           seed: int = 0, data: pd.DataFrame | None = None, backend: str = "matplotlib"):
    """Observed outcome against ``time`` for ``n_persons`` persons (thin lines), each person's fitted
    trajectory (fixed part + empirical-Bayes / posterior-mean random effects of every grouping factor,
    dashed), and the population line x_bar(t)' gamma with its ``level`` interval from the fixed effects'
    covariance (x_bar(t): the mean fixed-effects row at time t).

    ``person`` is the grouping factor of persons (default: the innermost one); the persons shown are a
    random sample (``seed``) when there are more than ``n_persons``. ``time`` is a fixed-effect column of the
    model, or a column of ``data`` (the frame the model was built on). ``backend``: "matplotlib" (default),
    "bokeh" or "plotly" (through arviz-plots).
    """
    design = fit.design
    chain = design.chain
    person = person or (chain[0].name if chain else design.factors[0].name)
    factor = design.factor(person)
    t = _time(fit, time, data)
    gamma = fit.gamma
    fitted = design.X @ gamma
    for f in design.factors:
        u = random_effect_means(fit, f.name)
        fitted = fitted + np.einsum("nq,nq->n", f.Z, u[f.codes])
    rng = np.random.default_rng(seed)
    chosen = np.arange(factor.n_groups)
    if factor.n_groups > n_persons:
        chosen = np.sort(rng.choice(factor.n_groups, n_persons, replace=False))
    canvas = Canvas(backend, figsize=(7, 4.5))
    for k, g in enumerate(chosen):
        rows = np.flatnonzero(factor.codes == g)
        rows = rows[np.argsort(t[rows], kind="stable")]
        color = f"C{k % 10}"
        canvas.line(0, t[rows], design.y[rows], width=0.7, alpha=0.7, color=color, marker=".")
        canvas.line(0, t[rows], fitted[rows], width=1.0, style="--", color=color)
    times = np.unique(t)
    x_bar = pd.DataFrame(design.X).groupby(t).mean().loc[times].to_numpy()
    vcov = fit.vcov.to_numpy()
    mean = x_bar @ gamma
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(np.einsum("ta,ab,tb->t", x_bar, vcov, x_bar))
    canvas.fill_between(0, times, mean - half, mean + half, color="k", alpha=0.15,
                        label=f"population {level:.0%} interval")
    canvas.line(0, times, mean, color="k", width=2.5, label="population trajectory")
    canvas.labels(0, xlabel=time, ylabel=design.outcome_name,
                  title=f"{len(chosen)} of {factor.n_groups} {person}: observed (solid) and fitted (dashed)")
    canvas.legend(0, loc="best", frameon=False, fontsize="small")
    return canvas.finish()


def _time(fit: FitResult, time: str, data: pd.DataFrame | None) -> np.ndarray:
    design = fit.design
    if data is not None:
        if time not in data.columns:
            raise OptionError(f"time={time!r} is not a column of data; columns: {', '.join(map(str, data.columns))}.")
        return data.loc[design.row_labels, time].to_numpy(dtype=float)
    if time in design.fixed_names:
        return design.X[:, design.fixed_names.index(time)]
    raise OptionError(f"time={time!r} is not a fixed-effect column of the model ({', '.join(design.fixed_names)}); "
                      "pass the data frame the model was built on as data=... to take it from there.")
