"""Human-readable output: model equations and (later) HLM-style reports."""

from .equations import Equations, render_equations

__all__ = ["Equations", "render_equations"]
