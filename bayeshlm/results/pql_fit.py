""":class:`PQLFit`, the result of :func:`bayeshlm.likelihood.pql.fit_pql` (penalised quasi-likelihood, Breslow &
Clayton 1993): the last working linear mixed model's estimates, read on the link scale. See
:mod:`bayeshlm.likelihood.pql` for the iteration and its known biases.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..likelihood.pql import PQLOptimum
from .contract import RESIDUAL_FACTOR
from .glmm_fit import _quantile, group_table
from .hlm_statistics import fixed_part
from .likelihood_fit import LikelihoodFit


class PQLFit:
    """A PQL fit: the last linear mixed model's estimates, read on the link scale (no likelihood)."""

    method = "pql"
    loglik = deviance = aic = bic = None  # PQL maximises no likelihood

    def __init__(self, optimum: PQLOptimum):
        """The fit where PQL stopped (:func:`bayeshlm.likelihood.pql.fit_pql`)."""
        self._fit = LikelihoodFit.of(optimum.linear)
        self.design = self._fit.design
        self.family = optimum.family
        self.iterations = optimum.iterations
        self.converged = optimum.converged

    @property
    def fixed_effects(self) -> pd.DataFrame:
        """estimate, se, 95% Wald interval, z, p (from the final working model; sigma^2 = 1)."""
        return self.fixed_effects_at(0.95)

    def fixed_effects_at(self, level: float = 0.95) -> pd.DataFrame:
        """``fixed_effects`` with ``level`` Wald intervals."""
        est = self._fit.fixed_effects["estimate"].to_numpy()
        se = np.sqrt(np.diag(self._fit.vcov.to_numpy()))
        z = est / se
        half = _quantile(level) * se
        return pd.DataFrame({"estimate": est, "se": se, "lower": est - half, "upper": est + half,
                             "z": z, "p": 2 * stats.norm.sf(np.abs(z))},
                            index=pd.Index(self.design.fixed_names, name="term"))

    @property
    def variance_components(self) -> pd.DataFrame:
        """The final working model's variances and covariances of the random effects (link scale)."""
        return self.variance_components_at(0.95)

    def variance_components_at(self, level: float = 0.95) -> pd.DataFrame:
        table = self._fit.variance_components_at(level)
        return table[table["factor"] != RESIDUAL_FACTOR].reset_index(drop=True)

    @property
    def tau(self) -> dict[str, pd.DataFrame]:
        return self._fit.tau

    def random_effects(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Conditional modes of the final working model (link scale) and their conditional SDs, as the
        contract's long table (group, term): estimate, se, lower, upper, n."""
        f, modes, sd = self._effects(factor)
        return group_table(f, modes, sd, level)

    def group_effects(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Each group's coefficients: the fixed part (R&B eq. 3.56) plus the conditional mode; se its SD."""
        f, modes, sd = self._effects(factor)
        fixed = fixed_part(self.design, self.fixed_effects["estimate"].to_numpy(), f)
        return group_table(f, fixed + modes, sd, level)

    def _effects(self, factor: str | None):
        f = self.design.factor(factor or self.design.factors[0].name)
        effects = self._fit.conditional_modes(f.name)
        sd = np.sqrt(np.diagonal(effects.condvar, axis1=1, axis2=2))
        return f, effects.modes.to_numpy(), sd

    @property
    def messages(self) -> list[str]:
        out = [] if self.converged else [f"PQL stopped after {self.iterations} iterations without eta settling; "
                                         "the estimates are not reliable (try fit(method='ml'))."]
        return out + [m for m in self._fit.messages if "sigma" not in m]

    def __repr__(self) -> str:
        return f"PQLFit({self.family.name}/{self.family.link.name}; {self.iterations} iterations)"
