"""Continuous-time AR(1) errors (nlme ``corCAR1``; Pinheiro & Bates 2000, sec. 5.3.1):

    cor(e_ti, e_t'i) = phi^|t - t'| for real times,  0 < phi < 1,  phi = 1 / (1 + exp(-z)).

On unit scales time is counted in steps of k, the median within-unit lag: phi* = phi^k.
"""

from __future__ import annotations

import numpy as np

from .base import CorrelationStructure


class CAR1(CorrelationStructure):
    name = "car1"
    label = "CAR1"
    transform_name = "logit phi"

    def phi(self, z):
        return 1.0 / (1.0 + np.exp(-z))

    def phi_derivative(self, phi):
        return phi * (1.0 - phi)

    def transform(self, phi):
        return np.log(phi / (1.0 - phi))

    def time_step(self, lags):
        return float(np.median(lags))
