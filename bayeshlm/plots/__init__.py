"""Plots that return matplotlib figures (headless-safe; no pyplot state is touched)."""

from .caterpillar import caterpillar
from .compare import forest_compare, variance_posterior
from .forest import forest
from .growth import growth
from .shrinkage import shrinkage

__all__ = ["caterpillar", "forest", "forest_compare", "growth", "shrinkage", "variance_posterior"]
