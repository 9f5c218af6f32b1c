"""One level-1 variance per category of a column (nlme ``varIdent``; Pinheiro & Bates 2000, sec. 5.2.1; R&B 2002,
ch. 6: sigma^2_t per occasion).

sigma_s^2 = sigma^2 exp(2 delta_s) for stratum s, with delta_ref = 0 for the reference stratum (code 0, the
first category in natural order): ln w_i = 2 delta_s(i). The parameters are the log SD ratios delta_s.
"""

from __future__ import annotations

import numpy as np

from .base import Strata, VarianceFunction


class ByStratum(VarianceFunction):
    name = "by_stratum"

    def __init__(self, column: str):
        self.column = column

    def size(self, residual) -> int:
        return len(residual.strata_levels) - 1

    def parameter_names(self, residual) -> list[str]:
        return [f"log sd ratio {residual.strata_levels.name}={level}" for level in residual.strata_levels[1:]]

    def log_relative_variances(self, residual, delta, n):
        return 2.0 * np.concatenate([[0.0], delta])[residual.strata]

    def gradient(self, residual, g):
        """d ln w_i / d delta_s = 2 on the rows of stratum s."""
        return 2.0 * np.bincount(residual.strata, weights=g, minlength=len(residual.strata_levels))[1:]

    def natural_parameters(self, residual, delta, log_sigma2, scaling):
        """Each stratum's variance sigma^2 exp(2 delta_s), then the SD ratios exp(delta_s) to the reference."""
        sigma2, delta = float(np.exp(log_sigma2)), np.concatenate([[0.0], delta])
        levels = residual.strata_levels
        out = {f"sigma2 {levels.name}={level}": sigma2 * np.exp(2.0 * d) for level, d in zip(levels, delta)}
        return out | {f"sd ratio {levels.name}={level}": np.exp(d) for level, d in zip(levels[1:], delta[1:])}

    def strata(self, residual) -> Strata:
        column = residual.strata_levels.name or self.column
        return Strata(residual.strata, tuple(f"{column}={level}" for level in residual.strata_levels))

    def describe(self) -> str:
        return f"level-1 variance by {self.column}"

    def variance_text(self, sub):
        return f"sigma^2[{self.column}_{sub}]", rf"\sigma^2_{{\mathrm{{{_tex_name(self.column)}}}_{{{sub}}}}}"

    def __repr__(self) -> str:
        return f"ByStratum(column={self.column!r})"


def _tex_name(name: str) -> str:
    return name.replace("\\", "").replace("_", r"\_")
