"""Binomial outcomes: y successes out of n trials, P(success) = phi (R&B 2002, eqs. 10.1-10.4).

log p(y | phi) = log C(n, y) + y log(phi) + (n - y) log(1 - phi);  V(phi) = phi (1 - phi) per trial.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import Family, non_integer, refuse_rows


class Binomial(Family):
    name = "binomial"
    sampling = "Binomial({n}, {mean})"
    links = ("logit", "probit", "cloglog")
    canonical_link = "logit"
    mean_symbol = "phi"

    def loglik(self, y, eta, size):
        log_p, log_q = self.link.log_probabilities(eta)
        failures = size - y
        out = np.where(y > 0, y * log_p, 0.0) + np.where(failures > 0, failures * log_q, 0.0)
        return out + _log_choose(size, y)

    def variance(self, mu):
        return mu * (1.0 - mu)

    def saturated_loglik(self, y, size):
        failures = size - y
        out = np.where(y > 0, y * np.log(np.where(y > 0, y / size, 1.0)), 0.0)
        out += np.where(failures > 0, failures * np.log(np.where(failures > 0, failures / size, 1.0)), 0.0)
        return out + _log_choose(size, y)

    def check_outcome(self, y, size, positions, outcome):
        refuse_rows(~(size > 0) | non_integer(size), positions,
                    f"The numbers of trials for {outcome!r} must be positive whole numbers; some are not")
        refuse_rows((y < 0) | non_integer(y), positions,
                    f"The successes {outcome!r} must be whole numbers >= 0; some are not")
        refuse_rows(y > size, positions,
                    f"The successes {outcome!r} exceed the number of trials in some rows; check which column "
                    "holds the successes and which the trials (cbind(successes, failures) or trials=)")


def _log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1.0) - special.gammaln(k + 1.0) - special.gammaln(n - k + 1.0)
