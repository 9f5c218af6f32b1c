"""What a REML / ML fit hands on: the optimum of the criterion in the engine's own terms (lme4's stages, where
``optimizeLmer`` returns the optimiser's state and ``mkMerMod`` builds the fit object from it). The tables are
read from it one layer up, by :class:`bayeshlm.results.LikelihoodFit`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..design import Design
from ..design.scaling import Scaling


@dataclass(frozen=True, eq=False)
class LikelihoodOptimum:
    """The end point of the optimisation of ``design``'s REML / ML criterion.

    ``objective`` is the criterion of the standardised design (:func:`bayeshlm.likelihood.fit.standardised`;
    a ``ProfiledDeviance`` or, with a level-1 error structure, a ``StructuredDeviance``), ``theta`` its
    parameters there, ``scaling`` the map back to the user's ``design``; then the optimiser's record.
    """

    design: Design
    objective: object
    theta: np.ndarray
    scaling: Scaling
    converged: bool
    optimizer_message: str
    n_evaluations: int

    @property
    def method(self) -> str:
        return "reml" if self.objective.reml else "ml"

    @cached_property
    def factorization(self):
        """The objective's factorisation at ``theta`` (L_theta, R_X, beta*, r^2; see ``nested``/``crossed``)."""
        return self.objective.factorize(self.theta)

    @cached_property
    def scale(self) -> float:
        """sigma*^2 on the standardised scale: r^2 / (n - p) (REML) or r^2 / n (ML); 1 when the level-1
        variances are known (Bates et al. 2015, eqs. 34 and 41)."""
        if self.design.known_variance is not None:
            return 1.0
        n, p = self.design.n_obs, self.design.n_fixed
        return float(self.factorization.r2 / (n - p if self.objective.reml else n))

    @cached_property
    def lambdas(self) -> list[np.ndarray]:
        """The relative covariance factor Lambda of each design factor (standardised scale)."""
        return self.objective.params.lambdas(self.theta)

    @property
    def gamma(self) -> np.ndarray:
        """The fixed effects in the user's units and the design's column order."""
        return self.scaling.fixed(self.factorization.beta)

    def conditional_modes(self) -> dict[str, np.ndarray]:
        """Conditional modes b = Lambda u per design factor, (J, q), standardised scale (profiled criterion only:
        a level-1 error structure has its own, see :class:`bayeshlm.results.StructuredFit`)."""
        u = self.factorization.modes()
        return {self.design.factors[i].name: u[k] @ self.lambdas[i].T
                for k, i in enumerate(self.objective.position)}
