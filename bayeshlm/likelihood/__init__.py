"""REML / ML estimation by the profiled deviance (Bates et al. 2015), the likelihood twin of the Bayesian engine."""

from .fit import fit_likelihood
from .lrt import DevianceTest, deviance_test
from .result import BoundaryFitWarning, ConvergenceWarning, LikelihoodFit, RandomEffects

__all__ = ["BoundaryFitWarning", "ConvergenceWarning", "DevianceTest", "LikelihoodFit", "RandomEffects",
           "deviance_test", "fit_likelihood"]
