"""Negative binomial (NB2) counts: E(y) = lambda, var(y) = lambda + lambda^2 / k, with shape k > 0 estimated.

log p(y) = log Gamma(y + k) - log Gamma(k) - log(y!) + k log(k / (k + lambda)) + y log(lambda / (k + lambda)).
k is lme4's ``glmer.nb`` theta and glmmTMB's ``nbinom2`` sigma; it is optimised on the log scale with the
other parameters. The log link is not canonical here: the expected information per row is
lambda k / (k + lambda), the observed one lambda k (k + y) / (k + lambda)^2.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import Family, non_integer, refuse_rows


class NegativeBinomial(Family):
    name = "negative_binomial"
    sampling = "NegativeBinomial({mean}, k)"
    links = ("log",)
    mean_symbol = "lambda"
    counts = True
    observed_weights_exact = True
    extra_names = ("log_shape",)

    def __init__(self, link: str | None = None):
        super().__init__(link)
        self.shape = 1.0

    def set_extra(self, values):
        self.shape = float(np.exp(values[0]))

    def extra_start(self, y):
        """Moment estimate k = mean^2 / (var - mean), within [0.1, 100]."""
        mean, var = float(np.mean(y)), float(np.var(y))
        k = mean * mean / (var - mean) if var > mean else 100.0
        return np.array([np.log(np.clip(k, 0.1, 100.0))])

    def loglik(self, y, eta, size):
        k = self.shape
        log_k_mu = np.logaddexp(np.log(k), eta)
        return (special.gammaln(y + k) - special.gammaln(k) - special.gammaln(y + 1.0)
                + k * (np.log(k) - log_k_mu) + np.where(y > 0, y * (eta - log_k_mu), 0.0))

    def variance(self, mu):
        return mu + mu * mu / self.shape

    def saturated_loglik(self, y, size):
        return self.loglik(y, np.log(np.maximum(y, np.finfo(float).tiny)), size)

    def observed_weights(self, y, eta, size):
        k, mu = self.shape, np.exp(eta)
        return k * mu * (k + y) / (k + mu) ** 2

    def check_outcome(self, y, size, positions, outcome):
        refuse_rows((y < 0) | non_integer(y), positions,
                    f"A negative_binomial outcome is a count (a whole number >= 0); {outcome!r} has other values")
