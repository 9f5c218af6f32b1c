"""bayeshlm: Bayesian hierarchical linear models with an ML/REML companion.

One model description (lme4-style formula or Raudenbush & Bryk level equations) compiles to one
backend-free Design, fitted by REML/ML (``model.fit("reml")``) or by full Bayes (``model.fit("bayes")``).
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, growth, plots
from .errors import DataError, FormulaError, InputError, OptionError
from .likelihood import deviance_test
from .meta import MetaBayesFit, MetaFit, MetaMVBayesFit, MetaMVFit, meta, meta_mv
from .model import HLM
from .model_file import load_model
from .report import compare
from .results.storage import load_fit

try:
    __version__ = version("bayeshlm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "HLM", "load_model", "load_fit", "compare", "deviance_test", "meta", "meta_mv", "MetaFit", "MetaMVFit",
    "MetaBayesFit", "MetaMVBayesFit", "DataError", "FormulaError", "InputError", "OptionError", "datasets", "growth",
    "plots", "__version__",
]
