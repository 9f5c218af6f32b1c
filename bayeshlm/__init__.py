"""bayeshlm: Bayesian hierarchical linear models with an ML/REML companion.

One model description (lme4-style formula or Raudenbush & Bryk level equations) compiles to one
backend-free Design, fitted by REML/ML (``model.fit("reml")``) or by full Bayes (``model.fit("bayes")``).

PyMC, PyTensor, Numba, nutpie and matplotlib load on first use (the first Bayesian fit or plot), so
``import bayeshlm`` and ``bayeshlm --help`` stay quick.
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, growth
from .errors import DataError, FormulaError, InputError, OptionError
from .meta import MetaBayesFit, MetaFit, MetaMVFit, meta, meta_mv
from .model import HLM
from .model_file import load_model
from .results import deviance_test
from .results.comparison import compare
from .results.storage import load_fit

try:
    __version__ = version("bayeshlm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "HLM", "load_model", "load_fit", "compare", "deviance_test", "meta", "meta_mv", "MetaFit", "MetaMVFit",
    "MetaBayesFit", "MetaMVBayesFit", "DataError", "FormulaError", "InputError", "OptionError", "datasets", "growth",
    "plots", "checks", "compare_models", "__version__",
]


def __getattr__(name: str):
    """Load the plotting package, the predictive checks (and compare_models) and the multivariate Bayesian result
    class on first use."""
    if name in ("plots", "checks"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name == "compare_models":
        from .checks import compare_models

        return compare_models
    if name == "MetaMVBayesFit":
        from .meta import MetaMVBayesFit

        return MetaMVBayesFit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
