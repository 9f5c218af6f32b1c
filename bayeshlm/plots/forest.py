"""Forest plot of a meta-analysis: each study's observed effect with its CI and, beside it, its empirical-Bayes
estimate with its interval (R&B 2002, Table 7.1; eq. 7.12), then the pooled estimate and the prediction
interval for a new study's true effect."""

from __future__ import annotations

import numpy as np

from ..errors import OptionError, closest_names
from ._canvas import Canvas

EB_OFFSET = 0.3  # vertical offset of the EB row below its study's observed-effect row


def forest(fit, title: str | None = None, labels: str | list[str] | None = None, backend: str = "matplotlib"):
    """Forest plot of a meta-analysis from :func:`~bayeshlm.meta` (95% intervals); REML, ML, DL or Bayes.

    Each study row is named by its label in ``meta(..., study=...)`` (numbers 1..k when none was given), or by
    ``labels``: a column, or a list of columns joined with spaces (``labels=["author", "year"]`` gives "Rosenthal
    et al. 1974"), of the data the meta-analysis was fitted on.

    Studies run top to bottom in data order. Squares (sized by the inverse-variance weight) with lines: the
    observed effects d_j +/- 1.96 sqrt(V_j). Circles below them: the EB estimates delta*_j +/- 1.96 SE. Bottom row
    (intercept-only models): the pooled estimate as a diamond spanning its CI, and the prediction interval
    as a line; with moderators each study's fitted value x_j'gamma is marked with a bar instead.

    A Bayesian fit shows the posterior mean and 95% interval of each true effect in place of the EB estimate, and
    the posterior mean of x'gamma with its credible and posterior-predictive intervals on the bottom row.

    The observed and EB markers carry gids ``"observed"`` and ``"eb"`` (one point per study). ``backend``:
    "matplotlib" (default), "bokeh" or "plotly" (through arviz-plots).
    """
    table, shrunk_label, tau2, i2 = _study_table(fit)
    k = len(table)
    y = np.arange(k, 0, -1, dtype=float)
    canvas = Canvas(backend, figsize=(9.5, 1.2 + 0.32 * (k + 2)))
    weight = 1.0 / table["se"].to_numpy() ** 2
    size = 15 + 85 * weight / weight.max()
    canvas.horizontal(0, y, table["ci_lower"], table["ci_upper"], color="C0", width=1)
    canvas.points(0, table["effect"], y, marker="s", size=size, color="C0", zorder=3,
                  label="observed effect, 95% CI", gid="observed")
    canvas.horizontal(0, y - EB_OFFSET, table["eb_lower"], table["eb_upper"], color="C1", width=1)
    canvas.points(0, table["eb"], y - EB_OFFSET, marker="o", size=18, color="C1", zorder=3, label=shrunk_label,
                  gid="eb")
    labels = _study_labels(fit, labels)
    if fit.p == 1:
        pred = fit.prediction()
        est, lo, hi = pred["estimate"], pred["ci_lower"], pred["ci_upper"]
        canvas.polygon(0, np.array([lo, est, hi]), np.array([0.0, -0.25, 0.0]), np.array([0.0, 0.25, 0.0]),
                       color="k", label=f"pooled estimate {est:.3f}, 95% CI")
        canvas.horizontal(0, [0.0], [pred["pi_lower"]], [pred["pi_upper"]], color="k", width=1, style="--",
                          label=f"prediction interval ({pred['pi_lower']:.3f}, {pred['pi_upper']:.3f})")
        canvas.vline(0, est, color="0.6", width=0.8, style=":")
        ticks, labels = np.append(y, 0.0), [*labels, f"{fit.method.upper()} model"]
    else:
        canvas.points(0, table["fitted"], y - EB_OFFSET / 2, marker="|", size=120, color="k", zorder=4,
                      label="fitted value (moderators)")
        ticks = y
    canvas.vline(0, 0.0, color="0.3", width=0.8)
    canvas.yticks(0, ticks, labels)
    canvas.limits(0, y=(-0.8 if fit.p == 1 else 0.2, k + 0.7))
    canvas.labels(0, xlabel=f"effect ({fit.design.outcome_name})",
                  title=title or f"{k} studies, tau^2 = {tau2:.3g} ({fit.method.upper()}), I^2 = {i2:.0f}%")
    canvas.legend(0, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize="small")
    return canvas.finish()


def _study_table(fit):
    """(per-study table with the MetaFit's column names, label of the shrunken estimates, tau^2, I^2): the meta
    fit's ``forest_rows()``."""
    if not hasattr(fit, "forest_rows"):
        raise OptionError(f"forest() draws a meta-analysis from bh.meta (MetaFit or MetaBayesFit); got "
                          f"{type(fit).__name__}.")
    return fit.forest_rows()


def _study_labels(fit, columns: str | list[str] | None) -> list[str]:
    """Row names of the studies: the fit's study labels, or the given data columns' values joined with spaces."""
    if columns is None:
        return [str(s) for s in fit.study_effects.index]
    columns = [columns] if isinstance(columns, str) else list(columns)
    data = fit.model.data
    for column in columns:
        if column not in data.columns:
            raise OptionError(f"labels: {column!r} is not a column of the meta-analysis data."
                              f"{closest_names(str(column), data.columns)} "
                              f"Columns: {', '.join(map(str, data.columns))}.")
    rows = data.loc[fit.design.row_labels, columns]
    return [" ".join(str(v) for v in row) for row in rows.itertuples(index=False)]
