"""Meta-analysis (V-known models, R&B 2002 ch. 7): univariate random- and mixed-effects models (:func:`meta`)
and multivariate models with a known within-study covariance (:func:`meta_mv`). Three-level meta-analyses are
``bh.HLM("yi ~ 1 + (1 | district/school)", data, known_variance="vi")``."""

from .multivariate import MetaMVFit, meta_mv
from .univariate import MetaFit, QTest, meta
from .univariate_bayes import MetaBayesFit

__all__ = ["MetaBayesFit", "MetaFit", "MetaMVBayesFit", "MetaMVFit", "QTest", "meta", "meta_mv"]


def __getattr__(name: str):
    """Load the multivariate Bayesian result class (and with it PyMC) only when it is asked for."""
    if name == "MetaMVBayesFit":
        from .multivariate_bayes import MetaMVBayesFit

        return MetaMVBayesFit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
