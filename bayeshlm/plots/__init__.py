"""Plots that return matplotlib figures (headless-safe): shrinkage of group estimates, and more to come."""

from .shrinkage import shrinkage

__all__ = ["shrinkage"]
