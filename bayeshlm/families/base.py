"""The outcome-family interface: what an estimation engine asks of a family.

A family holds its link and answers, per observation and with numpy arrays:

- ``check_outcome``: refuse impossible outcomes (naming the rows) before anything is fitted;
- ``loglik(y, eta, size)``: log p(y | eta) with every normalising constant (log-choose, -log y!);
- ``variance(mu)``: the variance function V(mu);
- ``working(y, eta, size)``: the IRLS weights w = size (dmu/deta)^2 / V(mu) and the score on the eta scale
  s = size (y/size - mu)(dmu/deta) / V(mu), so that one Fisher-scoring step on eta solves (X'WX) d = X's.

``size`` is the number of trials of a binomial row (1 for Bernoulli and Poisson rows). The weights are the
expected (Fisher) information, as in R's ``glm`` and lme4's PIRLS; for canonical links (logit with the
binomial, log with the Poisson) they equal the observed information.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError, OptionError, closest_names, describe_rows
from .links import LINKS, Link


class Family:
    """Base class: set ``name``, ``links`` (first = default), ``mean_symbol`` and the numeric methods."""

    name = ""
    links: tuple[str, ...] = ()
    mean_symbol = "mu"
    sampling = ""  # level-1 sampling model with {mean} and {n} placeholders, e.g. "Binomial({n}, {mean})"
    gaussian = False
    counts = False  # outcomes are counts (0 is the lower bound that can separate)
    canonical_link = ""
    observed_weights_exact = False  # observed_weights in closed form (not differences of the score)
    extra_names: tuple[str, ...] = ()  # parameters of the family estimated with the model (e.g. log_shape)

    def __init__(self, link: str | None = None):
        if link is None:
            link = self.links[0]
        if link not in self.links:
            hint = closest_names(str(link), self.links)
            raise OptionError(f"link={link!r} is not available for the {self.name} family.{hint} "
                              f"Use one of: {', '.join(self.links)} (default {self.links[0]!r}).")
        self.link: Link = LINKS[link]()

    @property
    def canonical(self) -> bool:
        """True for the canonical link, where the expected and observed information coincide."""
        return self.link.name == self.canonical_link

    # --- numbers ----------------------------------------------------------------------------------
    def mean(self, eta: np.ndarray) -> np.ndarray:
        return self.link.inverse(eta)

    def loglik(self, y: np.ndarray, eta: np.ndarray, size: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def variance(self, mu: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def working(self, y: np.ndarray, eta: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, d = self.link.inverse_and_derivative(eta)
        if self.canonical:  # d mu / d eta = V(mu): w = size V, s = y - size mu
            return size * d, y - size * mu
        v = np.maximum(self.variance(mu), np.finfo(float).tiny)
        return size * d * d / v, (y - size * mu) * d / v

    def observed_weights(self, y: np.ndarray, eta: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Observed information -ds/deta per row (central differences of the score unless the link is canonical)."""
        if self.canonical:
            return self.working(y, eta, size)[0]
        h = 1e-5 * np.maximum(1.0, np.abs(eta))
        return -(self.working(y, eta + h, size)[1] - self.working(y, eta - h, size)[1]) / (2.0 * h)

    def saturated_loglik(self, y: np.ndarray, size: np.ndarray) -> np.ndarray:
        """log p(y | mu = y) per row: the saturated model, against which deviance residuals are measured."""
        raise NotImplementedError

    def set_extra(self, values: np.ndarray) -> None:
        """Set the family's own parameters (``extra_names``) for the next evaluations."""

    def extra_start(self, y: np.ndarray) -> np.ndarray:
        return np.zeros(len(self.extra_names))

    # --- checks and text --------------------------------------------------------------------------
    def check_outcome(self, y: np.ndarray, size: np.ndarray, positions: np.ndarray, outcome: str) -> None:
        """Raise DataError when an outcome value is impossible for the family (``positions``: input rows)."""

    def equation(self) -> str:
        """Level-1 model on the link scale, e.g. 'eta = log(phi / (1 - phi))'."""
        return self.link.equation(self.mean_symbol)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(link={self.link.name!r})"


def refuse_rows(bad: np.ndarray, positions: np.ndarray, message: str) -> None:
    """Raise DataError ``message`` naming the input rows where ``bad`` is True (nothing when none are)."""
    if np.any(bad):
        raise DataError(f"{message} ({describe_rows(positions[bad])}).")


def non_integer(values: np.ndarray) -> np.ndarray:
    return np.abs(values - np.round(values)) > 1e-8 * np.maximum(1.0, np.abs(values))
