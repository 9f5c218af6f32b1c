"""How numbers and method names are written in reports, in the fits' own report sections and in the column
names of :func:`bayeshlm.compare`."""

from __future__ import annotations

import numpy as np


def number(value) -> str:
    """Four decimals, or four significant digits for values too large or too small for them (sigma^2 = 4.5e-15
    must not print as 0.0000)."""
    if not isinstance(value, float):
        return f"{value}"
    if np.isnan(value):
        return "NaN"
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"


def significant(value, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits (no exponent below 1e6)."""
    return "NaN" if value is None or np.isnan(value) else f"{float(value):.{digits}g}"


def decimals(value, places: int) -> str:
    """``value`` to ``places`` decimals, or 'not defined' for a missing value."""
    return "not defined" if value is None or np.isnan(value) else f"{float(value):.{places}f}"


def method_name(method: str) -> str:
    """The estimation method as written in reports and column names (REML, ML, Bayes)."""
    return {"reml": "REML", "ml": "ML", "bayes": "Bayes"}.get(method, method)
