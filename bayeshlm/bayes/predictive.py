"""Prior predictive simulation: what data the priors expect, before seeing the outcome.

Parameters (β, σ, the SDs and correlations of T) are drawn from the model's priors with
``pm.sample_prior_predictive``; group effects u_j ~ N(0, T) and outcomes y = Xβ + Σ_f Z_f u_f + r,
r ~ N(0, σ²) (or N(0, V) with known V, or AR(1) within units), are then simulated in NumPy, the same way
for every route (the marginal route has no group effects in its graph).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..design import Design
from .plan import cholesky_draws, level1_ar1

if TYPE_CHECKING:
    import pymc as pm


def prior_predictive(design: Design, model: pm.Model, draws: int = 500, seed: int | None = None) -> xr.DataTree:
    """DataTree with group ``prior`` (parameters, ``T_<factor>``, ``u_<factor>``) and ``prior_predictive`` (y)."""
    import pymc as pm

    params = [v.name for v in model.free_RVs if not v.name.startswith(("z_", "u_", "coef_"))]
    params += [v.name for v in model.deterministics
               if v.name in ("sigma", "sigma_strata", "beta") or v.name.startswith("tau_")]
    rng = np.random.default_rng(seed)
    with model, warnings.catch_warnings():
        # the marginal route's Potential is the likelihood, which a prior predictive rightly leaves out
        warnings.filterwarnings("ignore", message="The effect of Potentials")
        tree = pm.sample_prior_predictive(draws, var_names=sorted(set(params)), random_seed=rng,
                                          compile_kwargs={"mode": "FAST_COMPILE"})
    prior = tree["prior"].to_dataset()
    beta = prior["beta"].values  # (1, draws, p)
    eta = np.einsum("np,cdp->cdn", design.X, beta)
    for f in design.factors:
        L = cholesky_draws(f, prior)
        u = np.einsum("cdij,cdgj->cdgi", L, rng.standard_normal((*L.shape[:2], f.n_groups, f.n_coef)))
        prior[f"u_{f.name}"] = xr.DataArray(u, dims=("chain", "draw", f.name, f"{f.name}__coef"),
                                            coords={f.name: [str(v) for v in f.levels]})
        prior[f"T_{f.name}"] = xr.DataArray(L @ np.swapaxes(L, -1, -2),
                                            dims=("chain", "draw", f"{f.name}__coef", f"{f.name}__coef2"))
        eta = eta + np.einsum("nq,cdnq->cdn", f.Z, u[:, :, f.codes, :])
    errors = design.error_structure
    strata = errors.variance.strata(design.residual)
    if design.known_variance is not None:
        noise_sd = np.sqrt(design.known_variance)
    elif strata is not None:  # one SD per level-1 variance stratum
        noise_sd = prior["sigma_strata"].values[..., strata.codes]
    else:
        noise_sd = prior["sigma"].values[..., None]
    noise = noise_sd * rng.standard_normal(eta.shape)
    if errors.correlation is not None:  # AR(1) in units: e_t = φ e_{t-1} + sqrt(1 - φ²) ε_t along each occasion pair
        pairs = level1_ar1(design, "marginal")
        phi = prior["phi"].values[..., None]
        for first, second in zip(pairs.first, pairs.second):  # ordered by unit and time: each e_{t-1} is done
            noise[..., second] = phi[..., 0] * noise[..., first] + np.sqrt(1 - phi[..., 0] ** 2) * noise[..., second]
    y = eta + noise
    predictive = xr.Dataset({"y": (("chain", "draw", "obs"), y)})
    return xr.DataTree.from_dict({"prior": prior, "prior_predictive": predictive})
