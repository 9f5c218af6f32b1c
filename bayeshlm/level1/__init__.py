"""Level-1 error structures (R&B 2002, ch. 5-6; Pinheiro & Bates 2000, ch. 5): one module per structure, one
registration line each.

A variance function (one sigma^2, one per stratum, log-linear) and a correlation structure (none, AR(1),
CAR(1)) make the level-1 error model of a design (:class:`Level1Errors`); each engine asks the objects for
what it needs (parameters, relative variances and correlations with their derivatives, scale behaviour, the
Bayesian engine's strata and AR(1) pairs, text).

>>> from bayeshlm.level1 import level1_errors
>>> from bayeshlm.spec import ResidualStructure
>>> level1_errors(ResidualStructure(variance_by="sector", correlation="ar1", time="t")).describe()
'level-1 variance by sector; AR1 errors in t'
"""

from __future__ import annotations

from ..errors import OptionError, closest_names
from .ar1 import AR1, AR1Pairs, ar1_pairs
from .base import CorrelationStructure, Level1Errors, Strata, VarianceFunction
from .by_stratum import ByStratum
from .car1 import CAR1
from .homogeneous import Homogeneous
from .log_linear import LogLinear

VARIANCE_FUNCTIONS: dict[str, type[VarianceFunction]] = {
    "homogeneous": Homogeneous,
    "by_stratum": ByStratum,
    "log_linear": LogLinear,
}

CORRELATIONS: dict[str, type[CorrelationStructure]] = {
    "ar1": AR1,
    "car1": CAR1,
}


def level1_errors(structure) -> Level1Errors:
    """The level-1 error model of a :class:`~bayeshlm.spec.ResidualStructure` (None: one sigma^2, independent).

    ``level1_variance='<column>'`` gives :class:`ByStratum`, ``'~ ...'`` :class:`LogLinear`;
    ``correlation='<name>'`` the structure registered under that name in :data:`CORRELATIONS`."""
    if structure is None:
        return Level1Errors(VARIANCE_FUNCTIONS["homogeneous"]())
    if structure.variance_by:
        variance = VARIANCE_FUNCTIONS["by_stratum"](structure.variance_by)
    elif structure.variance_formula:
        variance = VARIANCE_FUNCTIONS["log_linear"](structure.variance_formula)
    else:
        variance = VARIANCE_FUNCTIONS["homogeneous"]()
    return Level1Errors(variance, None if structure.correlation is None else correlation(structure.correlation,
                                                                                          structure.time))


def correlation(name: str, time: str) -> CorrelationStructure:
    """The correlation structure registered as ``name``, over the times in column ``time``."""
    if name not in CORRELATIONS:
        raise OptionError(f"correlation={name!r} is not available.{closest_names(str(name), CORRELATIONS)} "
                          f"Use one of: {', '.join(map(repr, CORRELATIONS))} ('ar1': integer occasions, "
                          "'car1': continuous times).")
    return CORRELATIONS[name](time)


__all__ = ["AR1", "CAR1", "CORRELATIONS", "VARIANCE_FUNCTIONS", "AR1Pairs", "ByStratum", "CorrelationStructure",
           "Homogeneous", "Level1Errors", "LogLinear", "Strata", "VarianceFunction", "ar1_pairs", "correlation",
           "level1_errors"]
