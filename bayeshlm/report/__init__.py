"""Human-readable output: model equations and (later) HLM-style reports."""

from ..results.comparison import compare
from .equations import Equations, render_equations
from .report import Report, build_report

__all__ = ["Equations", "Report", "build_report", "compare", "render_equations"]
