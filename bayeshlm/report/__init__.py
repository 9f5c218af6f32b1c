"""Human-readable output: model equations and HLM-style reports. The report reads a fit only through its public
methods (the result contract of :mod:`bayeshlm.results`), so this package sits below the results layer and imports
none of it; fits side by side are :func:`bayeshlm.compare` (:mod:`bayeshlm.results.comparison`)."""

from .equations import Equations, render_equations
from .report import Report, build_report

__all__ = ["Equations", "Report", "build_report", "render_equations"]
