"""Result objects of the likelihood and Bayesian engines: each engine optimises or samples, and its result class
here reads the tables of the result contract (:mod:`.contract`) from what the engine returns."""

from .base import FitResult
from .glmm_fit import GLMMFit
from .likelihood_fit import LikelihoodFit, RandomEffects, StructuredFit
from .lrt import DevianceTest, deviance_test
from .pql_fit import PQLFit

__all__ = ["BayesFit", "BayesGLMMFit", "DevianceTest", "FitResult", "GLMMFit", "GLMMPriorPredictive",
           "LikelihoodFit", "PQLFit", "RandomEffects", "StructuredFit", "deviance_test"]


def __getattr__(name: str):
    """The Bayesian result classes load on first use: their modules import the Bayesian engine (PyMC)."""
    if name == "BayesFit":
        from .bayes_fit import BayesFit

        return BayesFit
    if name in ("BayesGLMMFit", "GLMMPriorPredictive"):
        from . import bayes_glmm_fit

        return getattr(bayes_glmm_fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
