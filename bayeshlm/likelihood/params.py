"""Relative covariance parameters theta and the relative covariance factors Lambda_theta.

For a grouping factor with q random coefficients, the random effects of group j are b_j = Lambda u_j with
u_j ~ N(0, sigma^2 I), so T = sigma^2 Lambda Lambda' (Bates et al. 2015, JSS 67(1), eq. 4-5). Lambda is
lower-triangular within each covariance block of the factor and zero between blocks; theta lists, block by
block, the lower triangle column by column (lme4's order). Diagonal entries are bounded below by 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..design import Design, GroupingFactor


@dataclass(frozen=True)
class FactorParameters:
    """Where one factor's Lambda entries sit in theta: rows, columns and positions of each entry."""

    factor: GroupingFactor
    rows: np.ndarray  # (k,) row of each theta entry in Lambda
    cols: np.ndarray  # (k,) column
    offset: int  # position of the factor's first entry in theta

    @property
    def size(self) -> int:
        return len(self.rows)

    def lam(self, theta: np.ndarray) -> np.ndarray:
        """The factor's q x q relative covariance factor Lambda."""
        q = self.factor.n_coef
        out = np.zeros((q, q))
        out[self.rows, self.cols] = theta[self.offset:self.offset + self.size]
        return out

    def names(self) -> list[str]:
        """lme4-style names: 'school.(Intercept)', 'school.cses.(Intercept)', 'school.cses'."""
        coef = self.factor.coef_names
        return [f"{self.factor.name}.{coef[r]}" if r == c else f"{self.factor.name}.{coef[r]}.{coef[c]}"
                for r, c in zip(self.rows, self.cols)]


class Parameterization:
    """theta <-> (Lambda per factor) for all grouping factors of a design."""

    def __init__(self, design: Design):
        self.factors: list[FactorParameters] = []
        offset = 0
        for f in design.factors:
            rows, cols = [], []
            for block in f.blocks:
                for j in range(len(block)):  # column-major lower triangle
                    for i in range(j, len(block)):
                        rows.append(block[i])
                        cols.append(block[j])
            fp = FactorParameters(f, np.array(rows, dtype=int), np.array(cols, dtype=int), offset)
            self.factors.append(fp)
            offset += fp.size
        self.size = offset

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        return [fp.lam(theta) for fp in self.factors]

    def canonical(self, theta: np.ndarray) -> np.ndarray:
        """theta with each Lambda column whose diagonal is negative flipped (the likelihood sees Lambda Lambda')."""
        theta = theta.copy()
        for fp in self.factors:
            block = theta[fp.offset:fp.offset + fp.size]
            for c in np.unique(fp.cols):
                diag = np.flatnonzero((fp.rows == c) & (fp.cols == c))[0]
                if block[diag] < 0:
                    block[fp.cols == c] *= -1
        return theta

    @property
    def lower_bounds(self) -> np.ndarray:
        return np.concatenate([np.where(fp.rows == fp.cols, 0.0, -np.inf) for fp in self.factors])

    @property
    def start(self) -> np.ndarray:
        """lme4's start: Lambda = I (each random-effect SD equal to sigma, no correlation)."""
        return np.concatenate([(fp.rows == fp.cols).astype(float) for fp in self.factors])

    def names(self) -> list[str]:
        return [n for fp in self.factors for n in fp.names()]
