"""The PyMC model of a Design, by one of two routes.

- ``"marginal"`` (default): the group effects of a chain of nested grouping factors -- one factor, or e.g.
  children within schools -- are integrated out analytically (:mod:`bayeshlm.bayes.marginal`); NUTS samples
  only β, the T's and σ (no funnel, small graph), and the integrated effects are drawn afterwards from their
  exact conditional posterior. In a crossed design the nested chain with the most group effects is
  integrated out and the other factors' effects are sampled.
- ``"sampled"`` (any structure): every factor's effects are sampled.

Sampled effects are centred (u ~ N(0, T)) or non-centred (u = L z, z ~ N(0, I)) per factor according to how
informative the data are about its groups (:func:`moment_reliability`): centred when the average reliability
of the group intercepts is at least 0.5, where the centred form mixes better (Papaspiliopoulos, Roberts &
Sköld 2007, Statistical Science 22(1); Betancourt & Girolami 2015), non-centred otherwise.

Every data array and prior hyperparameter enters the graph as ``pm.Data``, so one compiled graph serves any
data of the same shapes (:mod:`bayeshlm.bayes.sampling` caches it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from ..design import Design
from ..errors import OptionError, closest_names
from .marginal import MAX_CROSS_CELLS, ChainStatistics, chain_statistics, marginal_loglik, sampled_columns
from .priors import LKJ, Prior, PriorSet

ROUTES = ("auto", "marginal", "sampled")
PARAMETERIZATIONS = ("centred", "non-centred")
CENTRED_RELIABILITY = 0.5


@dataclass
class ModelInfo:
    """What was built: route, per-factor parameterisation and why, priors, and the data fed to the graph."""

    route: str
    parameterization: dict[str, str]  # factor -> 'integrated out', 'centred' or 'non-centred'
    reliability: dict[str, float]  # factor -> average reliability of its group intercepts (moment estimate)
    priors: PriorSet
    data: dict[str, np.ndarray]  # pm.Data name -> value
    key: tuple  # identifies the compiled graph: structure, shapes, prior families
    stats: ChainStatistics | None  # sufficient statistics of the marginal route
    chain: tuple[str, ...] = ()  # marginal route: the integrated factors, innermost first
    sampled: tuple[str, ...] = ()  # factors whose effects are sampled (in the graph as u_<factor>)


def build_model(design: Design, priors: PriorSet, route: str = "auto",
                parameterization: dict[str, str] | None = None) -> tuple[pm.Model, ModelInfo]:
    """Build the PyMC model of ``design`` (see the module docstring for the routes)."""
    if route not in ROUTES:
        raise OptionError(f"route={route!r}: use one of {', '.join(ROUTES)}.{closest_names(str(route), ROUTES)}")
    if not design.factors:
        raise OptionError("The model has no grouping factor: add a term such as (1 | group).")
    chain = integrated_chain(design) if route != "sampled" else []
    if route == "auto":
        route = "marginal" if chain else "sampled"
    if route == "marginal" and not chain:
        raise OptionError(_too_large_to_integrate(design))
    sampled = [f for f in design.factors if f not in chain]
    has_sigma = design.known_variance is None
    coords = {"fixed": list(design.fixed_names)}
    for f in design.factors:
        coords[f"{f.name}__coef"] = list(f.coef_names)
    data: dict[str, np.ndarray] = {}

    def add_data(name, value, dtype=float, **kwargs):
        value = np.asarray(value, dtype=dtype)
        data[name] = value
        return pm.Data(name, value, **kwargs)

    reliability = {f.name: moment_reliability(design, f) for f in design.factors}
    choice = _choose_parameterization(design, chain, reliability, parameterization)
    stats = None
    with pm.Model(coords=coords) as model:
        beta = _fixed_effects(design, priors, add_data)
        sigma = _scale_parameter("sigma", priors.sigma, add_data, ()) if has_sigma else None
        chols = {f.name: _covariance_cholesky(f, priors, add_data) for f in design.factors}
        effects = {}
        for f in sampled:
            model.add_coord(f.name, [str(v) for v in f.levels])
            effects[f.name] = _group_effects(f, chols[f.name], choice[f.name])
        if route == "marginal":
            stats = chain_statistics(design, chain, sampled)
            shared = {k: add_data(f"stat__{k}", v) for k, v in stats.arrays.items()}
            parents = [add_data(f"stat__parent_{level}", p, dtype=np.int64) for level, p in enumerate(stats.parents)]
            s = 1.0 / sigma**2 if has_sigma else pt.constant(1.0)
            coefficients = pt.concatenate([beta, *(effects[f.name].flatten() for f in sampled)])
            pm.Potential("marginal_loglik", marginal_loglik(
                coefficients, s, [chols[f.name] for f in chain], shared, stats.sizes, parents, stats.n_groups,
                has_sigma))
        else:
            model.add_coord("obs", np.arange(design.n_obs))
            eta = pt.dot(add_data("data__X", design.X), beta)
            for f in sampled:
                codes = add_data(f"data__codes__{f.name}", f.codes, dtype=np.int64)
                eta = eta + pt.sum(add_data(f"data__Z__{f.name}", f.Z) * effects[f.name][codes], axis=1)
            noise_sd = sigma if has_sigma else add_data("data__known_sd", np.sqrt(design.known_variance))
            pm.Normal("y", mu=eta, sigma=noise_sd, observed=add_data("data__y", design.y), dims="obs")
    key = (route, has_sigma, tuple(choice.items()), priors.signature(),
           tuple((f.n_coef, f.blocks) for f in design.factors),
           tuple((name, value.shape) for name, value in sorted(data.items()) if not name.startswith("prior__")))
    info = ModelInfo(route, choice, reliability, priors, data, key, stats, tuple(f.name for f in chain),
                     tuple(f.name for f in sampled))
    return model, info


def integrated_chain(design: Design) -> list:
    """The nested chain of factors (innermost first) whose integration removes the most group effects, among
    those whose sufficient statistics stay small (see :data:`~bayeshlm.bayes.marginal.MAX_CROSS_CELLS`)."""
    best, best_size = [], 0
    for f in design.factors:
        chain = [f]
        while design.nesting.get(chain[-1].name):
            chain.append(design.factor(design.nesting[chain[-1].name]))
        sampled = [g for g in design.factors if g not in chain]
        cells = chain[0].n_groups * sum(g.n_coef for g in chain) * sampled_columns(sampled)
        size = sum(g.n_groups * g.n_coef for g in chain)
        if cells <= MAX_CROSS_CELLS and size > best_size:
            best, best_size = chain, size
    return best


def _too_large_to_integrate(design: Design) -> str:
    return (f"route='marginal' cannot integrate this crossed design: pairing the groups of one factor with "
            f"every sampled group effect of the others ({', '.join(design.factor_names)}) would need more than "
            f"{MAX_CROSS_CELLS:,} cells. Use route='sampled'.")


def _fixed_effects(design: Design, priors: PriorSet, add_data):
    """β with dims 'fixed': one vector RV when every coefficient has the same prior family, else one per name."""
    fixed = [priors.fixed[name] for name in design.fixed_names]
    families = {(p.dist, tuple(p.params)) for p in fixed}
    if len(families) == 1:
        first = fixed[0]
        params = {k: add_data(f"prior__beta__{k}", np.array([p.params[k] for p in fixed]))
                  for k in first.params}
        return getattr(pm, first.dist)("beta", **params, dims="fixed")
    parts = []
    for name, p in zip(design.fixed_names, fixed, strict=True):
        params = {k: add_data(f"prior__beta[{name}]__{k}", v) for k, v in p.params.items()}
        parts.append(getattr(pm, p.dist)(f"beta[{name}]", **params))
    return pm.Deterministic("beta", pt.stack(parts), dims="fixed")


def _scale_parameter(name: str, prior: Prior, add_data, shape: tuple, dims=None):
    """A standard deviation with its prior on the SD itself or (``on='variance'``) on its square."""
    params = {k: add_data(f"prior__{name}__{k}", np.broadcast_to(v, shape)) for k, v in prior.params.items()}
    dist = getattr(pm, prior.dist)
    size = {"dims": dims} if dims else {"shape": shape}
    if prior.on == "sd":
        return dist(name, **params, **size)
    variance = dist("sigma2" if name == "sigma" else name.replace("tau_", "tau2_", 1), **params, **size)
    return pm.Deterministic(name, pt.sqrt(variance), **({"dims": dims} if dims else {}))


def _covariance_cholesky(f, priors: PriorSet, add_data):
    """Lower Cholesky factor L of T = L L': SDs times the LKJ correlation factor of each covariance block."""
    coef_dim = f"{f.name}__coef"
    tau = _scale_parameter(f"tau_{f.name}", priors.tau[f.name], add_data, (f.n_coef,), dims=coef_dim)
    multi = [b for b in f.blocks if len(b) > 1]
    if not multi:
        return pt.diag(tau)
    lkj: LKJ = priors.corr[f.name]
    L = pt.zeros((f.n_coef, f.n_coef))
    for i, block in enumerate(f.blocks):
        idx = np.array(block)
        if len(block) == 1:
            L = pt.set_subtensor(L[block[0], block[0]], tau[block[0]])
            continue
        name = _corr_name(f, i)
        eta = add_data(f"prior__{name}__eta", lkj.eta)
        corr_chol = pm.LKJCorr(name, n=len(block), eta=eta)
        if len(block) == f.n_coef:
            return tau[:, None] * corr_chol
        L = pt.set_subtensor(L[idx[:, None], idx[None, :]], tau[idx][:, None] * corr_chol)
    return L


def _corr_name(f, block_index: int) -> str:
    multi = [b for b in f.blocks if len(b) > 1]
    return f"corr_{f.name}" if len(multi) == 1 else f"corr_{f.name}_{block_index}"


def cholesky_draws(f, posterior: xr.Dataset) -> np.ndarray:
    """Draws of L (chain, draw, q, q) rebuilt from ``tau_<f>`` and ``corr_<f>``, as in the model graph."""
    tau = posterior[f"tau_{f.name}"].values
    L = np.zeros((*tau.shape, f.n_coef))
    for i, block in enumerate(f.blocks):
        idx = np.array(block)
        if len(block) == 1:
            L[..., block[0], block[0]] = tau[..., block[0]]
        else:
            corr = posterior[_corr_name(f, i)].values
            L[..., idx[:, None], idx[None, :]] = tau[..., idx][..., :, None] * corr
    return L


def _group_effects(f, L, how: str):
    """Group effects u (J, q) of factor ``f``: centred u ~ N(0, T), or non-centred u = z L', z ~ N(0, I)."""
    dims = (f.name, f"{f.name}__coef")
    diagonal = all(len(b) == 1 for b in f.blocks)
    if how == "non-centred":
        z = pm.Normal(f"z_{f.name}", 0.0, 1.0, dims=dims)
        return pm.Deterministic(f"u_{f.name}", pt.dot(z, L.T), dims=dims)
    if diagonal:
        return pm.Normal(f"u_{f.name}", 0.0, pt.diagonal(L), dims=dims)
    return pm.MvNormal(f"u_{f.name}", mu=np.zeros(f.n_coef), chol=L, dims=dims)


def _choose_parameterization(design: Design, chain: list, reliability: dict[str, float],
                             requested: dict[str, str] | None) -> dict[str, str]:
    """'integrated out' for the chain's factors; centred or non-centred (requested, or by reliability) else."""
    requested = dict(requested or {})
    for name, how in requested.items():
        design.factor(name)  # raises a clear OptionError for an unknown factor
        if how not in PARAMETERIZATIONS:
            raise OptionError(f"parameterization[{name!r}] = {how!r}: use 'centred' or 'non-centred'.")
        if any(f.name == name for f in chain):
            raise OptionError(f"parameterization[{name!r}]: the effects of {name!r} are integrated out on "
                              "route='marginal'; give route='sampled' to sample them.")
    return {f.name: "integrated out" if f in chain else requested.get(f.name) or
            ("centred" if reliability[f.name] >= CENTRED_RELIABILITY else "non-centred")
            for f in design.factors}


def moment_reliability(design: Design, factor) -> float:
    """Average reliability λ̄ = mean_j τ00 / (τ00 + v_j) of ``factor``'s group means (R&B 2002, eq. 3.57).

    A quick moment estimate: OLS residuals e of y on X (weighted by 1/V in V-known models); v_j is the
    sampling variance of group j's mean residual (σ̂²/n_j, σ̂² the pooled within-group variance, or
    1/Σ_j(1/V_i) with known V); τ00 = var_j(ē_j) - mean_j(v_j), floored at zero.
    """
    w = design.weights if design.weights is not None else np.ones(design.n_obs)
    Xw = design.X * w[:, None]
    coef, *_ = np.linalg.lstsq(Xw.T @ design.X, Xw.T @ design.y, rcond=None)
    e = design.y - design.X @ coef
    J = factor.n_groups
    wsum = np.bincount(factor.codes, weights=w, minlength=J)
    means = np.bincount(factor.codes, weights=w * e, minlength=J) / wsum
    if design.known_variance is None:
        within = e - means[factor.codes]
        sigma2 = float(within @ within) / max(design.n_obs - J, 1)
        v = sigma2 / factor.group_sizes
    else:
        v = 1.0 / wsum
    tau00 = max(float(np.var(means, ddof=1)) - float(np.mean(v)), 0.0) if J > 1 else 0.0
    return float(np.mean(tau00 / (tau00 + v)))
