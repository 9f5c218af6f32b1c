"""The level-1 error interface: what an estimation engine asks of an error structure.

The level-1 errors of a Gaussian HLM are e ~ N(0, sigma^2 R), R_j = W_j^{1/2} C_j(phi) W_j^{1/2} within each
group j (Pinheiro & Bates 2000, sec. 5.1-5.3; R&B 2002, eq. 14.65). As in nlme, R is built from two parts:

- a :class:`VarianceFunction` (nlme's ``varFunc``): the relative variances w_i = sigma_i^2 / sigma^2, with
  ln w_i = a_i'delta linear in its parameters delta (one sigma^2, one per stratum, a log-linear model);
- a :class:`CorrelationStructure` (nlme's ``corStruct``): cor(e_i, e_k) = c(``|t_i - t_k|``; phi) between the rows
  of one unit (the innermost grouping factor), e.g. phi^|t - t'| for AR(1) and CAR(1); none: independent.

The objects hold names only; the numbers they read (stratum codes, variance predictors, times) are the
design's :class:`~bayeshlm.design.ResidualDesign`, passed in as ``residual``. :class:`Level1Errors` joins the
two parts and is what a design and a fit record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class Strata:
    """Rows grouped by their level-1 variance, as the Bayesian engine models it (one sigma per stratum): stratum
    codes and labels, and for a log-linear variance model ln sigma^2_k = alpha_0 + c_k'alpha the saturated map
    from stratum variances to the alphas (``solve``: alpha = solve @ ln sigma^2)."""

    codes: np.ndarray  # (n,) stratum of each row, 0 = reference
    labels: tuple[str, ...]
    terms: tuple[str, ...] = ()  # 'alpha0', 'alpha <C column>' ... (log-linear model only)
    solve: np.ndarray | None = None  # (m + 1, K)


class VarianceFunction:
    """Relative level-1 variances w_i = sigma_i^2 / sigma^2, ln w_i = a_i'delta (``log_relative_variances``).

    Subclasses set ``name`` (the registry key) and the methods below; the default is one sigma^2 (no
    parameters, w_i = 1)."""

    name = ""

    def size(self, residual) -> int:
        """Number of parameters delta."""
        return 0

    def parameter_names(self, residual) -> list[str]:
        return []

    def log_relative_variances(self, residual, delta: np.ndarray, n: int) -> np.ndarray:
        """ln w_i for every row (n,)."""
        return np.zeros(n)

    def gradient(self, residual, g: np.ndarray) -> np.ndarray:
        """d f / d delta from g_i = d f / d ln w_i (chain rule: A'g, A the rows a_i')."""
        return np.zeros(0)

    def standardised(self, residual) -> tuple[dict, dict]:
        """(changes to the ResidualDesign, fields of the Scaling) when the design is put on unit scales."""
        return {}, {}

    def convert(self, delta: np.ndarray, scaling, to_standard: bool) -> tuple[np.ndarray, float]:
        """delta on the standardised design's scale (``to_standard``) or the user's, and ln(s_y^2 sigma*^2 /
        sigma^2), the shift of ln sigma^2 that standardising the variance predictors makes (0 by default)."""
        return delta, 0.0

    def natural_parameters(self, residual, delta: np.ndarray, log_sigma2: float, scaling) -> dict[str, float]:
        """The parameters as a report shows them, from the standardised delta and the fit's ln sigma^2."""
        return {}

    def strata(self, residual) -> Strata | None:
        """The rows' variance strata for the Bayesian engine (None: one sigma^2). Refused unless the structure
        gives them, so that the Bayesian engine never fits one sigma^2 in place of a variance function."""
        raise OptionError(f"The Bayesian engine does not fit {type(self).__name__} level-1 variances; fit this "
                          "model with 'reml' or 'ml'.")

    def describe(self) -> str:
        """One line for the design summary and the report ('' for one sigma^2)."""
        return ""

    def variance_text(self, sub: str) -> tuple[str, str]:
        """The level-1 variance in the model equations, (text, LaTeX), for rows subscripted ``sub`` ('ij')."""
        return "sigma^2", r"\sigma^2"

    def equation_lines(self, error: str, sub: str) -> list[tuple[str, str]]:
        """Lines (text, LaTeX) that define the variance symbol, if it needs them."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CorrelationStructure:
    """cor(e_i, e_k) = phi^lag_ik between rows of one unit, lag = ``|t_i - t_k|`` (``correlations``), with phi a
    function of one unconstrained parameter z (``phi``). Subclasses set ``name`` (the registry key, as the
    ``correlation=`` option spells it), ``label``, ``transform_name`` and the transform."""

    name = ""
    label = ""  # as reports print it, e.g. 'AR1'
    transform_name = ""  # the unconstrained parameter, e.g. 'atanh phi'
    start = 0.0  # starting value of the unconstrained parameter

    def __init__(self, time: str):
        self.time = time

    # --- the parameter ---------------------------------------------------------------------------------
    def phi(self, z: float) -> float:
        raise NotImplementedError

    def phi_derivative(self, phi: float) -> float:
        """d phi / d z at phi."""
        raise NotImplementedError

    def transform(self, phi: float) -> float:
        """z from phi (the inverse of :meth:`phi`)."""
        raise NotImplementedError

    # --- lags and correlations ---------------------------------------------------------------------------
    def lags(self, lag: np.ndarray) -> np.ndarray:
        """The lags the correlation is a function of, from the absolute time differences."""
        return lag

    def correlations(self, phi: float, lags: np.ndarray) -> np.ndarray:
        """phi^lag."""
        return phi ** lags

    def correlation_derivatives(self, phi: float, lags: np.ndarray) -> np.ndarray:
        """d phi^lag / d phi = lag phi^(lag - 1), 0 at lag 0."""
        positive = lags > 0
        return np.where(positive, lags * phi ** np.where(positive, lags - 1.0, 0.0), 0.0)

    # --- data and scales -----------------------------------------------------------------------------------
    def check_times(self, t: np.ndarray, column: str) -> None:
        """Raise DataError naming the rows whose time (column ``column``) the structure cannot use."""

    def time_step(self, lags: np.ndarray) -> float:
        """The step k of the standardised time t* = t / k, from the positive within-unit lags."""
        raise NotImplementedError

    def standardised(self, step: float) -> str:
        """The registry name of the structure that holds on the standardised time t / ``step``."""
        return self.name

    def check_bayes(self) -> None:
        """Raise OptionError, naming the likelihood engine, unless the Bayesian engine fits this structure."""
        raise OptionError(f"The Bayesian engine fits correlation='ar1' (integer occasions) but not {self.name!r}; "
                          "fit this model with 'reml' or 'ml'.")

    def pairs(self, residual, unit_codes: np.ndarray):
        """What the Bayesian engine needs of the structure: the row pairs of its tridiagonal precision
        (structures it does not fit refuse, :meth:`check_bayes`)."""
        self.check_bayes()

    # --- text ----------------------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.label} errors in {self.time}"

    def equation_lines(self, error: str, sub: str) -> list[tuple[str, str]]:
        """The within-unit correlation in the model equations, (text, LaTeX) lines, for the error symbol
        ``error`` ('r') of rows subscripted ``sub`` ('ij')."""
        i, rest = sub[0], sub[1:]
        other, lag = f"{error}_{i}'{rest}", f"|t_{sub} - t_{i}'{rest}|"
        other_tex, lag_tex = f"{error}_{{{i}'{rest}}}", f"|t_{{{sub}}} - t_{{{i}'{rest}}}|"
        return [(f"cor({error}_{sub}, {other}) = phi^{lag}  ({self.label}, t = {self.time})",
                 rf"$ \mathrm{{cor}}({error}_{{{sub}}}, {other_tex}) = \phi^{{{lag_tex}}} $ "
                 rf"({self.label}, $t$ = `{self.time}`)")]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(time={self.time!r})"


@dataclass(frozen=True)
class Level1Errors:
    """The level-1 error model of a design: a variance function and, optionally, a correlation structure.

    The parameters are ordered variance function first, then the transformed phi (the order of the
    likelihood engine's theta after the random-effect parameters)."""

    variance: VarianceFunction
    correlation: CorrelationStructure | None = None

    @property
    def homogeneous(self) -> bool:
        """One sigma^2 and independent errors: the plain engines' model."""
        return self.variance.name == "homogeneous" and self.correlation is None

    def size(self, residual) -> int:
        return self.variance.size(residual) + (self.correlation is not None)

    def parameter_names(self, residual) -> list[str]:
        names = self.variance.parameter_names(residual)
        return names + ([self.correlation.transform_name] if self.correlation is not None else [])

    def start(self, residual) -> np.ndarray:
        """Starting values: every variance-function parameter at 0 (one sigma^2), the correlation's own start."""
        return np.r_[np.zeros(self.variance.size(residual)), [self.correlation.start] if self.correlation else []]

    def split(self, residual, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(delta, phi) from the level-1 part ``x`` of the parameters."""
        k = self.variance.size(residual)
        phi = None if self.correlation is None else self.correlation.phi(x[k])
        return x[:k], phi

    def equation_lines(self, error: str, sub: str) -> list[tuple[str, str]]:
        """(text, LaTeX) lines of the model equations that define the level-1 variance and correlation of the
        errors ``error`` ('r' or 'e') of rows subscripted ``sub`` ('ij' or 'ijk')."""
        lines = self.variance.equation_lines(error, sub)
        return lines + (self.correlation.equation_lines(error, sub) if self.correlation is not None else [])

    def describe(self) -> str:
        """'' for one sigma^2 and independent errors, else e.g. 'level-1 variance by sector; AR1 errors in t'."""
        return "; ".join(part for part in (self.variance.describe(),
                                           self.correlation.describe() if self.correlation else "") if part)

    def __repr__(self) -> str:
        return f"Level1Errors({self.variance!r}, {self.correlation!r})"
