"""The Bayesian engine: PyMC models built from a Design, sampled with nutpie (default) or PyMC's NUTS.

Gaussian outcomes: :mod:`.gaussian` (``fit_bayes(design, ...)`` is what ``HLM.fit(method="bayes", ...)`` calls;
``pymc_model(design, ...)`` is the model it samples); nested group effects are integrated out (:mod:`.marginal`),
the effects of crossed factors beyond one nested chain are sampled (:mod:`.build`). Binomial and count outcomes:
:mod:`.glmm`. Each engine loads on first use, so an HGLM fit does not import the Gaussian kernels and their Numba
code (0.15-0.2 CPU s).
"""

from .diagnostics import SamplingWarning
from .priors import LKJ, Prior, valid_prior_names

__all__ = ["LKJ", "Prior", "SamplingWarning", "fit_bayes", "prior_predictive", "pymc_model",
           "sampled_model", "valid_prior_names"]

_GAUSSIAN = ("fit_bayes", "labelled_correlations", "prior_predictive", "pymc_model", "sampled_model")


def __getattr__(name: str):
    """The Gaussian engine's functions, loaded on first use."""
    if name in _GAUSSIAN:
        from . import gaussian

        return getattr(gaussian, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
