"""Gaussian outcomes with the identity link: the family of the REML/ML and Bayesian engines' own code paths.

Represented here so that a fit can say which family it holds; the Gaussian engines do not call these methods.
"""

from __future__ import annotations

import numpy as np

from .base import Family


class Gaussian(Family):
    name = "gaussian"
    sampling = "N({mean}, sigma^2)"
    links = ("identity",)
    canonical_link = "identity"
    mean_symbol = "mu"
    gaussian = True

    def loglik(self, y, eta, size, sigma2: float = 1.0):
        """log N(y | eta, sigma2 / size) (size: precision weights)."""
        var = sigma2 / size
        return -0.5 * (np.log(2.0 * np.pi * var) + np.square(y - eta) / var)

    def variance(self, mu):
        return np.ones_like(mu)

    def equation(self) -> str:
        return "Y = mu + r, r ~ N(0, sigma^2)"
