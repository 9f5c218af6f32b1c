"""One level-1 variance: e_ij ~ N(0, sigma^2) (R&B 2002, eq. 2.1), w_i = 1 and no parameters."""

from __future__ import annotations

from .base import VarianceFunction


class Homogeneous(VarianceFunction):
    name = "homogeneous"

    def strata(self, residual):
        """One sigma^2: no strata."""
        return None
