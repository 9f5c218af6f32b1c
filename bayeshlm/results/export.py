"""Write a fit's estimates as a labelled xarray Dataset (netCDF-ready)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .base import FitResult
from .storage import package_version


def output_datasets(fit) -> dict:
    """name -> dataset to write as ``<name>.nc`` (``bayeshlm fit --out``): the estimates, and the posterior
    draws (ArviZ DataTree) of a fit that has them."""
    out = {"estimates": estimates_dataset(fit)}
    if getattr(fit, "posterior", None) is not None:
        out["posterior"] = fit.posterior
    return out


def estimates_dataset(fit: FitResult) -> xr.Dataset:
    """Fixed effects (estimate, se), each factor's T and sigma^2 with named dimensions.

    Variables: ``fixed_<column>`` over ``term``; ``tau_<factor>`` over ``<factor>__coef`` x ``<factor>__coef_``;
    ``sigma2``. Attributes record the method and the model formula.
    """
    fixed = fit.fixed_effects
    data = {f"fixed_{column}": ("term", fixed[column].to_numpy(dtype=float))
            for column in fixed.columns if np.issubdtype(fixed[column].dtype, np.number)}
    coords: dict = {"term": list(fixed.index)}
    for factor, tau in fit.tau.items():
        dim = f"{factor}__coef"
        coords[dim] = list(tau.index)
        coords[dim + "_"] = list(tau.index)
        data[f"tau_{factor}"] = ((dim, dim + "_"), tau.to_numpy(dtype=float))
    if getattr(fit, "sigma2", None) is not None:  # HGLM fits have no level-1 variance
        data["sigma2"] = ((), float(fit.sigma2))
    attrs = {"method": fit.method, "formula": fit.design.spec.formula(), "bayeshlm_version": package_version(),
             "rows_analysed": fit.design.n_obs, "rows_dropped": fit.design.dropped.count}
    for name in ("deviance", "aic", "bic"):
        value = getattr(fit, name, None)
        if value is not None:
            attrs[name] = float(value)
    return xr.Dataset(data, coords=coords, attrs=attrs)
