"""Plots that return matplotlib figures (headless-safe; no pyplot state is touched)."""

from .caterpillar import caterpillar
from .shrinkage import shrinkage

__all__ = ["caterpillar", "shrinkage"]
