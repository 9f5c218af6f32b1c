"""REML / ML estimation by the profiled deviance (Bates et al. 2015), the likelihood twin of the Bayesian engine.
The fits' tables are :class:`bayeshlm.results.LikelihoodFit`."""

from .fit import fit_likelihood
from .optimize import BoundaryFitWarning, ConvergenceWarning

__all__ = ["BoundaryFitWarning", "ConvergenceWarning", "fit_likelihood"]
