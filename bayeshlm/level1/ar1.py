"""AR(1) errors at integer occasions (nlme ``corAR1``; Pinheiro & Bates 2000, sec. 5.3.1; R&B 2002, eq. 6.31):

    cor(e_ti, e_t'i) = phi^|t - t'|,  -1 < phi < 1,  phi = tanh(z).

Lags are whole steps (a negative phi needs integer powers). On unit scales time is counted in steps of k, the
greatest common divisor of the within-unit lags: phi* = phi^k, which for an even k lies in [0, 1), so the
standardised design holds CAR(1) errors there.

The Bayesian engine uses the tridiagonal precision of consecutive occasions (:func:`ar1_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError, OptionError, describe_rows
from .base import CorrelationStructure


@dataclass(frozen=True)
class AR1Pairs:
    """Consecutive occasions within each unit (the innermost grouping factor): the rows of each pair, how many
    pairs each row belongs to, and whether it is interior (has a neighbour on both sides)."""

    first: np.ndarray
    second: np.ndarray
    in_pairs: np.ndarray  # (n,) 0, 1 or 2
    interior: np.ndarray  # (n,) 0 or 1

    @property
    def n_pairs(self) -> int:
        return len(self.first)


def ar1_pairs(unit_codes: np.ndarray, time: np.ndarray, unit_name: str) -> AR1Pairs:
    """Pairs of rows at occasions t and t + 1 of one unit. With AR(1) errors cor = φ^|t - t'| and no gaps,
    the precision of a unit's errors is tridiagonal (Pinheiro & Bates 2000, sec. 5.3.1):

        C^{-1} = [I + φ² I_interior - φ (pairs)] / (1 - φ²),    log|C| = (n_j - 1) log(1 - φ²),

    so R^{-1} = (1/σ²) C^{-1} is a weighted sum of three row sets: all rows (weight 1), the consecutive pairs
    (-φ, both cross terms) and the interior rows (φ²). Occasions with a gap are refused."""
    order = np.lexsort((time, unit_codes))
    same_unit = unit_codes[order][1:] == unit_codes[order][:-1]
    step = np.diff(time[order])
    gaps = same_unit & (step != 1)
    if np.any(gaps):
        raise OptionError(
            f"correlation='ar1' by Bayes needs consecutive occasions within each {unit_name} (no gaps), because "
            f"it uses the tridiagonal AR(1) precision; row {order[1:][gaps][0]} follows an occasion "
            f"{step[gaps][0]:g} steps earlier. Fit this model with 'reml' or 'ml', which handle gaps.")
    first, second = order[:-1][same_unit], order[1:][same_unit]
    in_pairs = np.bincount(first, minlength=len(time)) + np.bincount(second, minlength=len(time))
    return AR1Pairs(first, second, in_pairs.astype(float), (in_pairs == 2).astype(float))


class AR1(CorrelationStructure):
    name = "ar1"
    label = "AR1"
    transform_name = "atanh phi"

    def phi(self, z):
        return np.tanh(z)

    def phi_derivative(self, phi):
        return 1.0 - phi ** 2

    def transform(self, phi):
        return np.arctanh(phi)

    def lags(self, lag):
        return np.rint(lag)

    def check_times(self, t, column):
        bad = np.flatnonzero(t != np.round(t))
        if len(bad):
            raise DataError(
                f"correlation='ar1' needs equally spaced integer occasions in {column!r}, but {describe_rows(bad)} "
                f"hold non-integer times (e.g. {t[bad[0]]:g}). Use an occasion number column (1, 2, 3, ...), or "
                "correlation='car1' for continuous-time AR(1) errors, cor = phi^|t - t'|.")

    def time_step(self, lags):
        return float(np.gcd.reduce(np.round(lags).astype(np.int64)))

    def standardised(self, step):
        return "car1" if step % 2 == 0 else self.name

    def check_bayes(self):
        """The Bayesian engine fits AR(1) errors (at consecutive occasions, :func:`ar1_pairs`)."""

    def pairs(self, residual, unit_codes):
        return ar1_pairs(unit_codes, residual.time, residual.unit)
