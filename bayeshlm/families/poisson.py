"""Poisson counts with rate lambda: log p(y) = y log(lambda) - lambda - log(y!); V(lambda) = lambda.

With an exposure m_ij (time at risk, population), lambda_ij = m_ij exp(eta_ij): log(m) enters eta as an
offset (R&B 2002, eqs. 10.11-10.13).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import Family, non_integer, refuse_rows


class Poisson(Family):
    name = "poisson"
    sampling = "Poisson({mean})"
    links = ("log",)
    canonical_link = "log"
    mean_symbol = "lambda"
    counts = True

    def loglik(self, y, eta, size):
        mu = self.mean(eta)
        log_mu = eta if self.link.name == "log" else np.log(mu)
        return np.where(y > 0, y * log_mu, 0.0) - mu - special.gammaln(y + 1.0)

    def variance(self, mu):
        return mu

    def saturated_loglik(self, y, size):
        return np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0) - y - special.gammaln(y + 1.0)

    def check_outcome(self, y, size, positions, outcome):
        refuse_rows((y < 0) | non_integer(y), positions,
                    f"A poisson outcome is a count (a whole number >= 0); {outcome!r} has other values")
