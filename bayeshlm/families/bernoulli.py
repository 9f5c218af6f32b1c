"""Bernoulli (0/1) outcomes: the binomial family with one trial per row (R&B 2002, section 10.2)."""

from __future__ import annotations

import numpy as np

from .base import refuse_rows
from .binomial import Binomial


class Bernoulli(Binomial):
    name = "bernoulli"
    sampling = "Bernoulli({mean})"

    def loglik(self, y, eta, size):
        log_p, log_q = self.link.log_probabilities(eta)
        return np.where(y > 0.5, log_p, log_q)

    def check_outcome(self, y, size, positions, outcome):
        refuse_rows((y != 0) & (y != 1), positions,
                    f"A bernoulli outcome must be 0 or 1 (1 = the event); {outcome!r} has other values. "
                    "For counts of successes out of several trials use family='binomial' with trials= or "
                    "cbind(successes, failures)")
