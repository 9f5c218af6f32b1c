"""The PyMC model of a Design, by one of two routes.

- ``"marginal"`` (default): the group effects of a chain of nested grouping factors -- one factor, or e.g.
  children within schools -- are integrated out analytically (:mod:`bayeshlm.bayes.marginal`); NUTS samples
  only β, the T's and σ (no funnel, small graph), and the integrated effects are drawn afterwards from their
  exact conditional posterior. In a crossed design the nested chain with the most group effects is
  integrated out and the other factors' effects are sampled.
- ``"sampled"`` (any structure): every factor's effects are sampled.

Sampled effects are centred or non-centred (u = L z, z ~ N(0, I)) per factor according to how informative
the data are about its groups (:func:`reml_reliability`): centred when the average reliability of the group
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
(:func:`student_t_weights`). ν is estimated under its prior (``nu``) or fixed. The effects cannot be
integrated out analytically, so every factor is sampled (route ``"sampled"``) on the PyMC graph: the compiled
kernel integrates Gaussian effects out and does not serve this model.

Every data array and prior hyperparameter enters the graph as ``pm.Data``, so one compiled graph serves any
data of the same shapes (:mod:`bayeshlm.bayes.sampling` caches it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from ..design import Design
from ..errors import DataError, OptionError, closest_names
from ..level1 import AR1Pairs, Strata
from .kernel import KernelModel, kernel_model
from .marginal import (
    MAX_CROSS_CELLS,
    ChainStatistics,
    chain_statistics,
    marginal_loglik,
    sampled_columns,
)
from .priors import LKJ, Prior, PriorSet

ROUTES = ("auto", "marginal", "sampled")
PARAMETERIZATIONS = ("centred", "non-centred")
CENTRED_RELIABILITY = 0.5


@dataclass
class ModelInfo:
    """What was built: route, per-factor parameterisation and why, priors, and the data fed to the graph."""

    route: str
    parameterization: dict[str, str]  # factor -> 'integrated out', 'centred' or 'non-centred'
    reliability: dict[str, float]  # sampled factor -> average reliability of its group intercepts (REML)
    priors: PriorSet
    data: dict[str, np.ndarray]  # pm.Data name -> value
    key: tuple  # identifies the compiled graph: structure, shapes, prior families
    stats: ChainStatistics | None  # sufficient statistics of the marginal route
    chain: tuple[str, ...] = ()  # marginal route: the integrated factors, innermost first
    sampled: tuple[str, ...] = ()  # factors whose effects are sampled (in the graph as u_<factor>)
    kernel: KernelModel | None = None  # the same log density as a compiled kernel, when it covers the model
    note: str = ""  # why the model left the default route or the compiled kernel, for ``fit.sampler``


def build_model(design: Design, priors: PriorSet, route: str = "auto",
                parameterization: dict[str, str] | None = None,
                reference_fit: Callable[[], object] | None = None) -> tuple[pm.Model, ModelInfo]:
    """Build the PyMC model of ``design`` (see the module docstring for the routes). ``reference_fit``: a
    function returning a REML fit of ``design``, asked for only when a sampled factor's parameterisation is to
    be chosen (:func:`reml_reliability`); the Bayesian engine does not fit by REML itself."""
    if route not in ROUTES:
        raise OptionError(f"route={route!r}: use one of {', '.join(ROUTES)}.{closest_names(str(route), ROUTES)}")
    if not design.factors:
        raise OptionError("The model has no grouping factor: add a term such as (1 | group).")
    if priors.student_t:
        route = _student_t_route(route)
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

    variance = level1_strata(design)
    ar1 = level1_ar1(design, route)
    if variance is not None:
        coords["stratum"] = list(variance.labels)
        if variance.terms:
            coords["variance_term"] = list(variance.terms)
    reliability = reml_reliability(design, sampled if parameterization is None else
                                   [f for f in sampled if f.name not in parameterization], reference_fit)
    choice = _choose_parameterization(design, chain, reliability, parameterization)
    stats = None
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
            stats = chain_statistics(design, chain, sampled, None if variance is None else variance.codes, ar1)
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
    chain_names, sampled_names = tuple(f.name for f in chain), tuple(f.name for f in sampled)
    if priors.student_t:
        kernel, note = None, STUDENT_T_NOTE
    else:
        kernel, note = kernel_model(design, priors, stats, chain_names, sampled_names, choice, centre_on, variance,
                                    ar1), ""
    info = ModelInfo(route, choice, reliability, priors, data, key, stats, chain_names, sampled_names, kernel, note)
    return model, info


STUDENT_T_NOTE = ("Student-t group effects cannot be integrated out analytically: every group effect is sampled "
                  "(route 'sampled') on the PyMC graph; the compiled kernel serves Gaussian effects only.")


def _student_t_route(route: str) -> str:
    """The route of a model with Student-t group effects: 'sampled' (route='marginal' is refused in words)."""
    if route == "marginal":
        raise OptionError("route='marginal' integrates Gaussian group effects out analytically, which Student-t "
                          "effects do not allow: use route='sampled' or 'auto' with random_effects='student_t'.")
    return "sampled"


def _degrees_of_freedom(priors: PriorSet, add_data):
    """ν of the Student-t group effects: a random variable under its prior, or the fixed value (as data)."""
    if isinstance(priors.nu, Prior):
        params = {k: add_data(f"prior__nu__{k}", v) for k, v in priors.nu.params.items()}
        return getattr(pm, priors.nu.dist)("nu", **params)
    return pm.Deterministic("nu", add_data("prior__nu__fixed", priors.nu))


def student_t_weights(u: np.ndarray, L: np.ndarray, nu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draws of the mixing weights w_j of Student-t effects from their conditional posterior
    Gamma((ν + q)/2, rate (ν + d_j)/2), d_j = u_j' T^{-1} u_j = |L^{-1} u_j|^2 (module docstring).
    ``u`` (S, J, q), ``L`` (S, q, q), ``nu`` (S,); returns (S, J)."""
    d = np.sum(np.linalg.solve(L, np.swapaxes(u, -1, -2)) ** 2, axis=-2)
    q = u.shape[-1]
    return rng.gamma((nu[:, None] + q) / 2.0, 2.0 / (nu[:, None] + d))


def level1_strata(design: Design) -> Strata | None:
    """The strata of a heterogeneous level-1 variance (R&B 2002, sec. 5.4 and eq. 5.36), or None, as the
    design's variance function gives them (:meth:`bayeshlm.level1.VarianceFunction.strata`).

    ``level1_variance="<column>"`` gives one σ² per category. A log-linear model ``level1_variance="~ ..."`` is
    fitted by Bayes when it is saturated over the rows' distinct predictor values (e.g. ``~ sector``: one σ² per
    sector, and α_0, α_1 their log-scale intercept and contrast); a continuous predictor, or AR(1) errors
    with a variance model, are refused with a message naming the likelihood engine, which fits them.
    """
    errors = design.error_structure
    if errors.correlation is not None and errors.variance.size(design.residual):
        raise OptionError("The Bayesian engine models one level-1 error structure at a time: give either "
                          "correlation='ar1' or a level1_variance model, not both (the likelihood engine fits both).")
    return errors.variance.strata(design.residual)


def level1_ar1(design: Design, route: str) -> AR1Pairs | None:
    """The consecutive-occasion pairs of ``correlation='ar1'`` errors (see :func:`bayeshlm.level1.ar1_pairs`), or
    None, as the design's correlation structure gives them.

    Bayes fits AR(1) errors with integer occasions and no gaps, on the marginal route; continuous-time
    'car1' errors and gaps are refused with a message naming the likelihood engine, which fits them."""
    correlation = design.error_structure.correlation
    if correlation is None:
        return None
    correlation.check_bayes()
    if route == "sampled":
        raise OptionError("correlation='ar1' by Bayes integrates the group effects out: use route='marginal' "
                          "(the default).")
    return correlation.pairs(design.residual, design.factor(design.residual.unit).codes)


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
        name = _corr_name(f, i)
        eta = add_data(f"prior__{name}__eta", lkj.eta)
        corr_chol = pm.LKJCorr(name, n=len(block), eta=eta)
        if len(block) == f.n_coef:
            return tau[:, None] * corr_chol
        L = pt.set_subtensor(L[idx[:, None], idx[None, :]], tau[idx][:, None] * corr_chol)
    return L


def correlation_blocks(f) -> list[tuple[str, list[int]]]:
    """The LKJ blocks of factor ``f`` (two or more coefficients) with the name of their correlation variable."""
    return [(_corr_name(f, i), list(block)) for i, block in enumerate(f.blocks) if len(block) > 1]


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


def _group_effects(f, L, how: str, beta, centre_on: list[int], nu=None):
    """Group effects u (J, q) of factor ``f``: centred, u_j = b_j - γ_c with b_j ~ N(γ_c, T) (``coef_<f>``;
    γ_c holds the fixed effect each coefficient is centred on, :func:`centring`, or 0), or non-centred,
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


def centring(design: Design, sampled: list, choice: dict[str, str]) -> dict[str, list[int]]:
    """Per centred sampled factor, the fixed effect each of its coefficients is centred on (index into β, or
    -1): the one whose column of X is the coefficient's column of Z. Each fixed effect centres one factor at
    most, the first in the design's order."""
    taken: set[int] = set()
    out = {}
    for f in sampled:
        if choice[f.name] != "centred":
            continue
        out[f.name] = []
        for a, name in enumerate(f.coef_names):
            k = design.fixed_names.index(name) if name in design.fixed_names else -1
            same = k >= 0 and k not in taken and np.array_equal(design.X[:, k], f.Z[:, a])
            out[f.name].append(k if same else -1)
            if same:
                taken.add(k)
    return out


def _choose_parameterization(design: Design, chain: list, reliability: dict[str, float],
                             requested: dict[str, str] | None) -> dict[str, str]:
    """'integrated out' for the chain's factors; centred or non-centred (requested, or by reliability) else.

    A sampled factor nested in another sampled factor is non-centred unless requested: centred, its coefficients
    b_j ~ N(gamma, T) would carry the enclosing group's effect as well, a ridge (b_j + c, u_parent - c) that NUTS
    crosses slowly (three-level test data: intercept bulk ESS 19 of 2,000 draws centred, 356 non-centred).
    """
    requested = dict(requested or {})
    for name, how in requested.items():
        design.factor(name)  # raises a clear OptionError for an unknown factor
        if how not in PARAMETERIZATIONS:
            raise OptionError(f"parameterization[{name!r}] = {how!r}: use 'centred' or 'non-centred'.")
        if any(f.name == name for f in chain):
            raise OptionError(f"parameterization[{name!r}]: the effects of {name!r} are integrated out on "
                              "route='marginal'; give route='sampled' to sample them.")
    sampled = {f.name for f in design.factors if f not in chain}
    return {f.name: "integrated out" if f in chain else requested.get(f.name) or
            ("centred" if reliability[f.name] >= CENTRED_RELIABILITY and design.nesting.get(f.name) not in sampled
             else "non-centred")
            for f in design.factors}


def reml_reliability(design: Design, factors: list, reference_fit: Callable[[], object] | None) -> dict[str, float]:
    """Average reliability of each factor's group intercepts (first coefficient), from the REML fit that
    ``reference_fit()`` returns: λ_j = 1 - Var(u_j | y) / τ_00, the share of the prior variance of u_j the data
    remove. For a two-level random-intercept model this is R&B (2002) eq. 3.42, τ_00 / (τ_00 + σ²/n_j); the
    conditional variance makes it right for crossed designs too, where group means also carry the other
    factors' variation. No reference fit, a variance estimated at zero, or a design REML cannot fit gives
    reliability 0 (non-centred, the safe choice)."""
    if not factors:
        return {}
    if reference_fit is None:
        return {f.name: 0.0 for f in factors}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # boundary and convergence notes belong to the REML user, not here
        try:
            fit = reference_fit()
        except DataError:
            return {f.name: 0.0 for f in factors}
    out = {}
    for f in factors:
        tau00 = float(fit.tau[f.name].iloc[0, 0])
        condvar = fit.random_effects(f.name).xs(f.coef_names[0], level="term")["se"].to_numpy() ** 2
        out[f.name] = float(np.mean(1.0 - condvar / tau00)) if tau00 > 0 else 0.0
    return out
