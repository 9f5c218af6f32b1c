"""The PyMC model of a Design, by one of two routes.

- ``"marginal"`` (default): the group effects of a chain of nested grouping factors -- one factor, or e.g.
  children within schools -- are integrated out analytically (:mod:`bayeshlm.bayes.marginal`); NUTS samples
  only β, the T's and σ (no funnel, small graph), and the integrated effects are drawn afterwards from their
  exact conditional posterior. In a crossed design the nested chain with the most group effects is
  integrated out and the other factors' effects are sampled.
- ``"sampled"`` (any structure): every factor's effects are sampled.

Sampled effects are centred or non-centred (u = L z, z ~ N(0, I)) per factor according to how informative
the data are about its groups (:func:`~.plan.reml_reliability`): centred when the average reliability of the group
intercepts is at least 0.5, where the centred form mixes better (Papaspiliopoulos, Roberts & Sköld 2007,
Statistical Science 22(1); Betancourt & Girolami 2015), non-centred otherwise. Centred means centred on the
fixed part (Gelfand, Sahu & Carlin 1995, Biometrika 82(3)): NUTS samples the group coefficients
b_j = γ + u_j ~ N(γ, T), ``coef_<factor>``, for each coefficient with a fixed effect of the same column, and
u_j = b_j - γ; centring u_j ~ N(0, T) on zero instead leaves a ridge along γ + c, u_j - c whenever the
groups are well measured, which NUTS crosses slowly (an ESS of 19 from 4,000 draws for the intercept of a
crossed model with 100 groups of 1,000 rows, against 2,700 centred on γ).

Student-t group effects (``random_effects="student_t"``; Seltzer 1993, J. Educ. Stat. 18(3); Seltzer, Wong &
Bryk 1996, JEBS 21(2)): u_j ~ t_ν(0, T), a multivariate t with ν degrees of freedom and scale matrix
T = L L' (covariance T ν / (ν - 2) for ν > 2), centred or non-centred by the same rule as Gaussian effects
(non-centred: u_j = L z_j, z_j ~ t_ν(0, I)). It is the scale mixture u_j | w_j ~ N(0, T / w_j),
w_j ~ Gamma(ν/2, rate ν/2), with the weights w_j integrated out: sampling the w_j as well left a funnel between
ν and the weights (HS&B, 2 x 300 draws: R-hat 1.45, bulk ESS 4, BFMI 0.10). The weights, small for a group
far out in the tails, whose pull on γ and T is thereby down-weighted, are drawn afterwards from their exact
conditional posterior, w_j | u_j, ν, T ~ Gamma((ν + q)/2, rate (ν + u_j' T^{-1} u_j)/2)
(:func:`~.plan.student_t_weights`). ν is estimated under its prior (``nu``) or fixed. The effects cannot be
integrated out analytically, so every factor is sampled (route ``"sampled"``) on the PyMC graph: the compiled
kernel integrates Gaussian effects out and does not serve this model.

Every data array and prior hyperparameter enters the graph as ``pm.Data``, so one compiled graph serves any
data of the same shapes (:mod:`bayeshlm.bayes.sampling` caches it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from ..design import Design
from ..level1 import Strata
from .marginal_graph import marginal_loglik
from .plan import ModelInfo, centring, correlation_name, level1_ar1, level1_strata, plan_model
from .priors import LKJ, Prior, PriorSet


def build_model(design: Design, priors: PriorSet, route: str = "auto",
                parameterization: dict[str, str] | None = None,
                reference_fit: Callable[[], object] | None = None) -> tuple[pm.Model, ModelInfo]:
    """The PyMC model of ``design`` and its plan (:func:`~.plan.plan_model`, same arguments)."""
    return graph_model(design, plan_model(design, priors, route, parameterization, reference_fit))


def graph_model(design: Design, info: ModelInfo) -> tuple[pm.Model, ModelInfo]:
    """Write the PyMC graph of the model ``info`` plans for ``design`` (see the module docstring); returns it with
    ``info`` completed by the graph's data and the key its compiled form is cached under."""
    priors, route = info.priors, info.route
    chain = [design.factor(name) for name in info.chain]
    sampled = [design.factor(name) for name in info.sampled]
    choice = info.parameterization
    has_sigma = design.known_variance is None
    coords = {"fixed": list(design.fixed_names)}
    for f in design.factors:
        coords[f"{f.name}__coef"] = list(f.coef_names)
    data: dict[str, np.ndarray] = {}

    def add_data(name, value, dtype=float, **kwargs):
        value = np.asarray(value, dtype=dtype)
        data[name] = value
        return pm.Data(name, value, **kwargs)

    variance = level1_strata(design)
    ar1 = level1_ar1(design, route)
    if variance is not None:
        coords["stratum"] = list(variance.labels)
        if variance.terms:
            coords["variance_term"] = list(variance.terms)
    with pm.Model(coords=coords) as model:
        beta = _fixed_effects(design, priors, add_data)
        sigma = _level1_sd(priors, variance, add_data) if has_sigma else None
        chols = {f.name: _covariance_cholesky(f, priors, add_data) for f in design.factors}
        nu = _degrees_of_freedom(priors, add_data) if priors.student_t else None
        effects = {}
        centre_on = centring(design, sampled, choice)
        for f in sampled:
            model.add_coord(f.name, [str(v) for v in f.levels])
            effects[f.name] = _group_effects(f, chols[f.name], choice[f.name], beta, centre_on.get(f.name, []), nu)
        if route == "marginal":
            stats = info.stats
            shared = {k: add_data(f"stat__{k}", v) for k, v in stats.arrays.items()}
            parents = [add_data(f"stat__parent_{level}", p, dtype=np.int64) for level, p in enumerate(stats.parents)]
            if not has_sigma:
                weights, logdet_R = pt.ones(1), shared["logdetV"]
            elif ar1 is not None:
                weights, logdet_R = _ar1_weights(sigma, shared["n_obs"], add_data("stat__n_pairs", ar1.n_pairs))
            else:
                weights = 1.0 / (model["sigma_strata"] if variance is not None else pt.stack([sigma])) ** 2
                logdet_R = -pt.dot(shared["rows_per_component"], pt.log(weights))
            coefficients = pt.concatenate([beta, *(effects[f.name].flatten() for f in sampled)])
            pm.Potential("marginal_loglik", marginal_loglik(
                coefficients, weights, logdet_R, [chols[f.name] for f in chain], shared, stats.sizes, parents,
                stats.n_groups))
        else:
            model.add_coord("obs", np.arange(design.n_obs))
            eta = pt.dot(add_data("data__X", design.X), beta)
            for f in sampled:
                codes = add_data(f"data__codes__{f.name}", f.codes, dtype=np.int64)
                eta = eta + pt.sum(add_data(f"data__Z__{f.name}", f.Z) * effects[f.name][codes], axis=1)
            if not has_sigma:
                noise_sd = add_data("data__known_sd", np.sqrt(design.known_variance))
            elif variance is not None:
                noise_sd = model["sigma_strata"][add_data("data__stratum", variance.codes, dtype=np.int64)]
            else:
                noise_sd = sigma
            pm.Normal("y", mu=eta, sigma=noise_sd, observed=add_data("data__y", design.y), dims="obs")
    key = (route, has_sigma, tuple(choice.items()), tuple((k, tuple(v)) for k, v in centre_on.items()),
           priors.signature(),
           tuple((f.n_coef, f.blocks) for f in design.factors),
           tuple((name, value.shape) for name, value in sorted(data.items()) if not name.startswith("prior__")))
    return model, dataclasses.replace(info, data=data, key=key)


def _degrees_of_freedom(priors: PriorSet, add_data):
    """ν of the Student-t group effects: a random variable under its prior, or the fixed value (as data)."""
    if isinstance(priors.nu, Prior):
        params = {k: add_data(f"prior__nu__{k}", v) for k, v in priors.nu.params.items()}
        return getattr(pm, priors.nu.dist)("nu", **params)
    return pm.Deterministic("nu", add_data("prior__nu__fixed", priors.nu))


def _ar1_weights(sigma, n_obs, n_pairs):
    """Weights of the three AR(1) components (all rows, consecutive pairs, interior rows) of
    R^{-1} = C^{-1}/σ², C^{-1} = [I - φ pairs + φ² interior]/(1 - φ²), and log|R| = N log σ² + n_pairs log(1 - φ²)
    (:func:`bayeshlm.level1.ar1_pairs`); φ ~ Uniform(-1, 1), the stationary range."""
    phi = pm.Uniform("phi", -1.0, 1.0)
    one_minus = 1.0 - phi**2
    weights = pt.stack([pt.ones(()), -phi, phi**2]) / (one_minus * sigma**2)
    return weights, 2.0 * n_obs * pt.log(sigma) + n_pairs * pt.log(one_minus)


def _level1_sd(priors: PriorSet, variance: Strata | None, add_data):
    """σ: one level-1 SD, or one per stratum (``sigma_strata``, each with the ``sigma`` prior) with ``sigma``
    the reference stratum's SD (or exp(α_0 / 2) for a log-linear model, the convention of the likelihood
    engine) and ``alpha`` the log-linear coefficients."""
    if variance is None:
        return _scale_parameter("sigma", priors.sigma, add_data, ())
    strata = _scale_parameter("sigma_strata", priors.sigma, add_data, (len(variance.labels),), dims="stratum")
    if not variance.terms:
        return pm.Deterministic("sigma", strata[0])
    alpha = pm.Deterministic("alpha", pt.dot(variance.solve, 2.0 * pt.log(strata)), dims="variance_term")
    return pm.Deterministic("sigma", pt.exp(alpha[0] / 2.0))


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
    variance_name = {"sigma": "sigma2", "sigma_strata": "sigma2_strata"}.get(name) or name.replace("tau_", "tau2_", 1)
    variance = dist(variance_name, **params, **size)
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
        name = correlation_name(f, i)
        eta = add_data(f"prior__{name}__eta", lkj.eta)
        corr_chol = pm.LKJCorr(name, n=len(block), eta=eta)
        if len(block) == f.n_coef:
            return tau[:, None] * corr_chol
        L = pt.set_subtensor(L[idx[:, None], idx[None, :]], tau[idx][:, None] * corr_chol)
    return L


def _group_effects(f, L, how: str, beta, centre_on: list[int], nu=None):
    """Group effects u (J, q) of factor ``f``: centred, u_j = b_j - γ_c with b_j ~ N(γ_c, T) (``coef_<f>``;
    γ_c holds the fixed effect each coefficient is centred on, :func:`~.plan.centring`, or 0), or non-centred,
    u = z L', z ~ N(0, I). With ``nu`` (Student-t effects) the normal is a multivariate t_ν with the same
    location and scale (a univariate t for one coefficient)."""
    dims = (f.name, f"{f.name}__coef")
    if how == "non-centred":
        if nu is None:
            z = pm.Normal(f"z_{f.name}", 0.0, 1.0, dims=dims)
        elif f.n_coef == 1:
            z = pm.StudentT(f"z_{f.name}", nu=nu, mu=0.0, sigma=1.0, dims=dims)
        else:
            z = pm.MvStudentT(f"z_{f.name}", nu=nu, mu=np.zeros(f.n_coef), chol=np.eye(f.n_coef), dims=dims)
        return pm.Deterministic(f"u_{f.name}", pt.dot(z, L.T), dims=dims)
    centre = pt.stack([beta[k] if k >= 0 else pt.constant(0.0) for k in centre_on])
    tile = np.tile(np.arange(f.n_coef), (f.n_groups, 1))
    if nu is not None and f.n_coef == 1:
        b = pm.StudentT(f"coef_{f.name}", nu=nu, mu=centre[tile], sigma=pt.diagonal(L)[tile], dims=dims)
    elif nu is not None:
        b = pm.MvStudentT(f"coef_{f.name}", nu=nu, mu=centre, chol=L, dims=dims)
    elif all(len(b) == 1 for b in f.blocks):
        # mean and SDs gathered to the full (J, q) shape: with one random coefficient, PyTensor 3.3's Numba
        # backend turns a (1,)-shaped SD into a scalar and then fails to compile its log-density terms
        b = pm.Normal(f"coef_{f.name}", centre[tile], pt.diagonal(L)[tile], dims=dims)
    else:
        b = pm.MvNormal(f"coef_{f.name}", mu=centre, chol=L, dims=dims)
    return pm.Deterministic(f"u_{f.name}", b - centre, dims=dims)


