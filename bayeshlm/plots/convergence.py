"""Convergence pictures of a Bayesian fit, drawn by arviz-plots (a PlotCollection per picture): the trace and
marginal of each chain, the rank plots of the chains (Vehtari et al. 2021: with good mixing each chain's ranks are
uniform), and the energy plot (Betancourt 2017: the marginal energy and its transitions should overlap; a narrow
transition distribution means the sampler explores the tails slowly, BFMI < 0.3)."""

from __future__ import annotations

from ..errors import OptionError, closest_names
from ._canvas import check_backend

KINDS = {"trace": "plot_trace_dist", "rank": "plot_rank", "energy": "plot_energy"}


def convergence(fit, kind: str = "trace", var_names: list[str] | None = None, backend: str = "matplotlib"):
    """The ``kind`` ("trace", "rank" or "energy") picture of a Bayesian fit's posterior; returns arviz-plots'
    PlotCollection (``.show()``, ``.savefig(path)``; its figure is ``.viz["figure"].item()``).

    ``var_names``: posterior variables (default: the fixed effects ``beta``, ``sigma`` and each factor's SDs
    ``tau_<factor>``); the energy plot reads the sampler's energy and takes none. ``backend``: "matplotlib"
    (default; arviz-plots draws it through pyplot), "bokeh" or "plotly".
    """
    if getattr(fit, "method", None) != "bayes" or not hasattr(fit, "posterior"):
        raise OptionError(f"convergence() draws the posterior of a Bayesian fit (method='bayes'); got "
                          f"{type(fit).__name__} with method={getattr(fit, 'method', None)!r}.")
    if kind not in KINDS:
        raise OptionError(f"kind={kind!r}: use one of {', '.join(map(repr, KINDS))}."
                          f"{closest_names(str(kind), KINDS)}")
    backend = check_backend(backend)
    import arviz_plots  # a dependency of arviz >= 1.0

    posterior = fit.posterior["posterior"]
    if kind == "energy":
        if var_names is not None:
            raise OptionError("kind='energy' reads the sampler's energy; it takes no var_names.")
        return arviz_plots.plot_energy(fit.posterior, backend=backend)
    available = list(posterior.data_vars)
    if var_names is None:
        var_names = [v for v in available if v in ("beta", "sigma") or v.startswith("tau_")]
    unknown = [v for v in var_names if v not in available]
    if unknown:
        raise OptionError(f"var_names: {unknown[0]!r} is not a posterior variable."
                          f"{closest_names(unknown[0], available)} Variables: {', '.join(available)}.")
    return getattr(arviz_plots, KINDS[kind])(fit.posterior, var_names=list(var_names), backend=backend)
