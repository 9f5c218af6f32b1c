"""REML / ML estimation by the profiled deviance (Bates et al. 2015), the likelihood twin of the Bayesian engine.
It returns a :class:`LikelihoodOptimum`, from which :class:`bayeshlm.results.LikelihoodFit` reads the tables."""

from .fit import optimise_likelihood
from .optimize import BoundaryFitWarning, ConvergenceWarning
from .optimum import LikelihoodOptimum

__all__ = ["BoundaryFitWarning", "ConvergenceWarning", "LikelihoodOptimum", "optimise_likelihood"]
