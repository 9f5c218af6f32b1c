"""Growth models (Raudenbush & Bryk 2002, ch. 6 and 8): codings of time, and growth-specific summaries.

Time codings add columns to a copy of the data frame, so the same columns serve the lme4-style formula
and the level equations:

>>> import bayeshlm as bh
>>> ox = bh.growth.polynomial_time(bh.datasets.load("oxboys"), "age", center=0.0, degree=2)
>>> model = bh.HLM("height ~ age_c + age_c2 + (age_c | Subject)", ox)

* :func:`polynomial_time` -- (a - L), (a - L)^2, ...: the intercept is status at age L, the linear
  coefficient the instantaneous growth rate at L, twice the quadratic one the acceleration
  (R&B 2002, eq. 6.11-6.14: rate at a = pi_1 + 2 pi_2 (a - L)).
* :func:`piecewise_time` -- the two-piece linear codings of R&B (2002) Table 6.9 (eq. 6.19-6.20).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError, OptionError

PIECEWISE_SCHEMES = ("two_rate", "increment")


def _time_values(data: pd.DataFrame, time: str) -> np.ndarray:
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame; got {type(data).__name__}.")
    if time not in data.columns:
        from .errors import closest_names

        raise DataError(f"{time!r} is not a column.{closest_names(time, data.columns)} "
                        f"The data has columns: {', '.join(map(str, data.columns))}.")
    if not pd.api.types.is_numeric_dtype(data[time]) or pd.api.types.is_bool_dtype(data[time]):
        raise DataError(f"The time variable {time!r} must be numeric (ages, grades, occasions); "
                        f"its column has type {data[time].dtype}.")
    return data[time].to_numpy(dtype=float)


def _add_columns(data: pd.DataFrame, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    out = data.copy()
    for name, values in columns.items():
        out[name] = values
    return out


def polynomial_time(data: pd.DataFrame, time: str, *, center: float = 0.0, degree: int = 2,
                    names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Add the polynomial growth codings (a - L)^k, k = 1..degree, centred at age L = ``center``.

    With Y_ti = pi_0i + pi_1i (a_ti - L) + pi_2i (a_ti - L)^2 + e_ti (R&B 2002, eq. 6.11), pi_0i is person
    i's status at age L, pi_1i the instantaneous growth rate at L and 2 pi_2i the acceleration; the rate at
    age a is pi_1i + 2 pi_2i (a - L) (eq. 6.14). Default column names ``<time>_c``, ``<time>_c2``,
    ``<time>_c3``...; ``names`` overrides them (one per power). Returns a new frame.
    """
    a = _time_values(data, time)
    if int(degree) != degree or degree < 1:
        raise OptionError(f"degree={degree!r}: give a positive whole number (1 linear, 2 quadratic, ...).")
    degree = int(degree)
    if names is None:
        names = tuple(f"{time}_c" if k == 1 else f"{time}_c{k}" for k in range(1, degree + 1))
    if len(names) != degree:
        raise OptionError(f"names={names!r}: give one column name per power (degree={degree}).")
    centred = a - float(center)
    return _add_columns(data, {name: centred ** k for k, name in zip(range(1, degree + 1), names)})


def piecewise_time(data: pd.DataFrame, time: str, *, knot: float, origin: float | None = None,
                   scheme: str = "two_rate", names: tuple[str, str] = ("a1", "a2")) -> pd.DataFrame:
    """Add the two-piece linear codings a1, a2 of R&B (2002) Table 6.9 for a change of slope at ``knot``.

    Y_ti = pi_0i + pi_1i a1_ti + pi_2i a2_ti + e_ti (eq. 6.19-6.20); pi_0i is status at time ``origin``
    (default: the earliest time in the data). With k the knot and o the origin:

    * ``scheme="two_rate"`` (Table 6.9 a): a1 = min(a, k) - min(o, k), a2 = max(0, a - k) - max(0, o - k);
      pi_1 is the growth rate before the knot and pi_2 the rate after it.
    * ``scheme="increment"`` (Table 6.9 b): a1 = a - o, a2 as above; pi_1 is the base rate and pi_2 the
      increment to it after the knot (the rate after the knot is pi_1 + pi_2).

    Grades 1-6 with the knot at grade 3 give, for ``two_rate`` and origin 1, a1 = 0 1 2 2 2 2 and
    a2 = 0 0 0 1 2 3; with origin 3, a1 = -2 -1 0 0 0 0. Returns a new frame.
    """
    if scheme not in PIECEWISE_SCHEMES:
        raise OptionError(f"scheme={scheme!r}: use 'two_rate' (separate rates before and after the knot) or "
                          "'increment' (a base rate and its increment after the knot).")
    if len(names) != 2:
        raise OptionError(f"names={names!r}: give two column names (first and second piece).")
    a = _time_values(data, time)
    o = float(np.nanmin(a)) if origin is None else float(origin)
    k = float(knot)
    if not np.nanmin(a) < k < np.nanmax(a):
        raise OptionError(f"knot={knot!r} is not inside the observed range of {time!r} "
                          f"({np.nanmin(a):g} to {np.nanmax(a):g}): each piece needs observations.")
    second = np.maximum(0.0, a - k) - max(0.0, o - k)
    first = np.minimum(a, k) - min(o, k) if scheme == "two_rate" else a - o
    return _add_columns(data, {names[0]: first, names[1]: second})
