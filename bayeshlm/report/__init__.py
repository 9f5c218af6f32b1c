"""Human-readable output: model equations and (later) HLM-style reports."""

from .equations import Equations, render_equations
from .report import Report, build_report, compare

__all__ = ["Equations", "Report", "build_report", "compare", "render_equations"]
