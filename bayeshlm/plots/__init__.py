"""Plots that return matplotlib figures (headless-safe; no pyplot state is touched)."""

from .caterpillar import caterpillar
from .compare import forest_compare, variance_posterior
from .forest import forest
from .shrinkage import shrinkage

__all__ = ["caterpillar", "forest", "forest_compare", "shrinkage", "variance_posterior"]
