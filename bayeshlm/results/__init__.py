"""Result objects shared by the likelihood and Bayesian engines."""

from .base import FitResult

__all__ = ["FitResult"]
