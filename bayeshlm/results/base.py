"""The common shape of every fit, whatever the engine.

Likelihood fits (REML, ML) and Bayesian fits expose the same names, so tables, plots and comparisons
can take either. Point estimates are ML/REML estimates for likelihood fits and posterior means for
Bayesian fits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import pandas as pd

from ..design import Design


class FitResult(ABC):
    """A fitted hierarchical linear model.

    Attributes every engine provides:

    - ``method``: 'reml', 'ml' or 'bayes'.
    - ``design``: the :class:`~bayeshlm.design.Design` that was fitted.
    - ``fixed_effects``: DataFrame indexed by fixed-effect name (columns depend on the engine; always
      ``estimate`` and ``se`` -- the posterior mean and SD for Bayes).
    - ``tau``: dict grouping-factor name -> covariance DataFrame of its random coefficients.
    - ``sigma2``: level-1 variance (None for V-known models).
    - ``variance_components``: one row per variance / covariance parameter.
    """

    method: str
    design: Design

    @property
    @abstractmethod
    def fixed_effects(self) -> pd.DataFrame: ...

    @property
    @abstractmethod
    def tau(self) -> dict[str, pd.DataFrame]: ...

    @property
    @abstractmethod
    def sigma2(self) -> float | None: ...

    @property
    @abstractmethod
    def variance_components(self) -> pd.DataFrame: ...

    @abstractmethod
    def group_effects(self, factor: str | None = None) -> pd.DataFrame:
        """Per-group coefficients of ``factor`` (default: the first grouping factor)."""

    def _factor_name(self, factor: str | None) -> str:
        return self.design.factors[0].name if factor is None else self.design.factor(factor).name
