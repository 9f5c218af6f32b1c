"""Several fits of one model side by side (R&B 2002, Table 13.4): estimates, SEs (posterior SDs) and intervals
read from each fit's result contract (:mod:`bayeshlm.results.contract`)."""

from __future__ import annotations

import pandas as pd

from ..errors import OptionError
from ..report.formatting import method_name
from .base import FitResult
from .contract import RESIDUAL_FACTOR, RESIDUAL_TERM


def compare(*fits: FitResult, names: list[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Estimates, SEs (posterior SDs) and intervals of several fits of one model, side by side.

    The layout of R&B (2002) Table 13.4: one row per parameter, one column group per fit. ``diff/se``
    columns give each fit's difference from the first fit in units of the first fit's SE (or posterior
    SD), so large disagreements stand out.
    """
    if len(fits) < 2:
        raise OptionError("compare() needs at least two fits.")
    first = fits[0]
    for other in fits[1:]:
        if other.design.spec != first.design.spec or other.design.n_obs != first.design.n_obs:
            raise OptionError("compare() sets fits of the same model on the same data side by side; "
                              f"got {first.design.spec.formula()!r} and {other.design.spec.formula()!r}.")
    names = names or [method_name(f.method) for f in fits]
    if len(set(names)) != len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    columns = {}
    for name, fit in zip(names, fits):
        table = _parameters(fit, level)
        for statistic in ("estimate", "se", "lower", "upper"):
            columns[(name, statistic)] = table[statistic]
    out = pd.DataFrame(columns)
    base, base_se = out[(names[0], "estimate")], out[(names[0], "se")]
    for name in names[1:]:
        out[(name, "diff/se")] = (out[(name, "estimate")] - base) / base_se
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["fit", "statistic"])
    return out


def _parameters(fit: FitResult, level: float = 0.95) -> pd.DataFrame:
    """Fixed effects, then each factor's T entries and sigma^2, with estimate, se and ``level`` interval from the
    fit's contract tables: the posterior's equal-tailed interval; for likelihood fits the t(df) interval of their t
    tests and the observed-information Wald interval of the variances, clipped to the parameter's range (NaN
    where :meth:`variance_intervals` is not defined, e.g. under level-1 error structures)."""
    columns = ["estimate", "se", "lower", "upper"]
    fixed = fit.fixed_effects_at(level)[columns]
    fixed.index = [f"fixed: {n}" for n in fixed.index]
    vc = fit.variance_components_at(level)
    vc = vc[(vc["factor"] != RESIDUAL_FACTOR) | (vc["term"] == RESIDUAL_TERM)]
    labels = ["sigma^2" if r.factor == RESIDUAL_FACTOR else f"{r.factor}: var({r.term})" if r.term == r.term2
              else f"{r.factor}: cov({r.term}, {r.term2})" for r in vc.itertuples()]
    variances = pd.DataFrame(vc[columns].to_numpy(dtype=float), index=labels, columns=columns)
    return pd.concat([fixed, variances])

