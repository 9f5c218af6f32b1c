"""Link functions g: the linear predictor eta = g(mu) and its inverse, for the families of :mod:`bayeshlm.families`.

Each link gives mu = g^{-1}(eta), d mu / d eta and, for links of a probability, log(mu) and log(1 - mu)
computed from eta without cancellation (what the Bernoulli/binomial log-likelihood needs far in the tails).
``equation(mean)`` writes the level-1 structural model on the link scale as Raudenbush & Bryk (2002, eqs.
10.3, 10.13, 10.21) do, e.g. ``eta = log(phi / (1 - phi))``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

_EPS = np.finfo(float).eps


class Link:
    """A link function; subclasses define ``inverse``, ``mu_eta`` and ``equation``."""

    name = ""

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """d mu / d eta."""
        raise NotImplementedError

    def inverse_and_derivative(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, d mu / d eta) in one pass."""
        return self.inverse(eta), self.mu_eta(eta)

    def log_probabilities(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log mu, log(1 - mu)) for a probability mu = g^{-1}(eta)."""
        mu = self.inverse(eta)
        return np.log(mu), np.log1p(-mu)

    def equation(self, mean: str = "phi") -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Link({self.name!r})"


class Identity(Link):
    name = "identity"

    def inverse(self, eta):
        return np.asarray(eta, dtype=float)

    def mu_eta(self, eta):
        return np.ones_like(eta, dtype=float)

    def equation(self, mean="mu"):
        return f"eta = {mean}"


class Logit(Link):
    """eta = log(phi / (1 - phi)) (R&B eq. 10.3)."""

    name = "logit"

    def inverse(self, eta):
        return special.expit(eta)

    def mu_eta(self, eta):
        return self.inverse_and_derivative(eta)[1]

    def inverse_and_derivative(self, eta):
        mu = special.expit(eta)
        return mu, np.maximum(mu * (1.0 - mu), _EPS)

    def log_probabilities(self, eta):
        softplus = np.maximum(eta, 0.0) + np.log1p(np.exp(-np.abs(eta)))  # log(1 + e^eta), no overflow
        return eta - softplus, -softplus

    def equation(self, mean="phi"):
        return f"eta = log({mean} / (1 - {mean}))"


class Probit(Link):
    """eta = Phi^{-1}(phi), Phi the standard normal distribution function."""

    name = "probit"

    def inverse(self, eta):
        return special.ndtr(eta)

    def mu_eta(self, eta):
        return np.maximum(np.exp(-0.5 * np.square(eta)) / np.sqrt(2.0 * np.pi), _EPS)

    def log_probabilities(self, eta):
        return special.log_ndtr(eta), special.log_ndtr(-eta)

    def equation(self, mean="phi"):
        return f"eta = Phi^-1({mean})"


class CLogLog(Link):
    """eta = log(-log(1 - phi)): complementary log-log (R&B eq. 10.21 for discrete-time hazards)."""

    name = "cloglog"

    def inverse(self, eta):
        return -np.expm1(-np.exp(eta))

    def mu_eta(self, eta):
        eta = np.minimum(eta, 700.0)
        return np.maximum(np.exp(eta - np.exp(eta)), _EPS)

    def log_probabilities(self, eta):
        rate = np.exp(np.minimum(eta, 700.0))
        return np.log(-np.expm1(-np.maximum(rate, 1e-300))), -rate

    def equation(self, mean="phi"):
        return f"eta = log(-log(1 - {mean}))"


class Log(Link):
    """eta = log(lambda) (R&B eq. 10.13)."""

    name = "log"

    def inverse(self, eta):
        return np.exp(eta)

    def mu_eta(self, eta):
        return np.maximum(np.exp(eta), _EPS)

    def inverse_and_derivative(self, eta):
        mu = np.exp(eta)
        return mu, np.maximum(mu, _EPS)

    def equation(self, mean="lambda"):
        return f"eta = log({mean})"


LINKS: dict[str, type[Link]] = {cls.name: cls for cls in (Identity, Logit, Probit, CLogLog, Log)}
