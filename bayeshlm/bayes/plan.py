"""What the Bayesian engine will sample, decided before anything is built: the route, the integrated chain of
factors, each sampled factor's parameterisation and why, the level-1 error structure, the marginal route's
sufficient statistics, and the compiled kernel when it covers the model (:class:`ModelInfo`).

Nothing here loads PyMC or PyTensor: a model the compiled kernel covers is sampled from this plan alone, and
:mod:`.build` writes the PyMC graph from the same plan only when it is sampled or asked for
(``fit.pymc_model()``, prior predictive checks). The rules for routes, centring and Student-t effects are in
:mod:`.build`'s docstring.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..design import Design
from ..errors import DataError, OptionError, closest_names
from ..level1 import AR1Pairs, Strata
from .kernel import KernelModel, kernel_model
from .marginal import MAX_CROSS_CELLS, ChainStatistics, chain_statistics, sampled_columns
from .priors import PriorSet

if TYPE_CHECKING:  # PyMC loads only when a graph is written
    import pymc as pm

ROUTES = ("auto", "marginal", "sampled")
PARAMETERIZATIONS = ("centred", "non-centred")
CENTRED_RELIABILITY = 0.5
STUDENT_T_NOTE = ("Student-t group effects cannot be integrated out analytically: every group effect is sampled "
                  "(route 'sampled') on the PyMC graph; the compiled kernel serves Gaussian effects only.")


@dataclass
class ModelInfo:
    """What the engine samples: route, per-factor parameterisation and why, priors, the marginal route's
    statistics, the compiled kernel when it covers the model, and the data fed to the PyMC graph once built."""

    route: str
    parameterization: dict[str, str]  # factor -> 'integrated out', 'centred' or 'non-centred'
    reliability: dict[str, float]  # sampled factor -> average reliability of its group intercepts (REML)
    priors: PriorSet
    stats: ChainStatistics | None  # sufficient statistics of the marginal route
    chain: tuple[str, ...] = ()  # marginal route: the integrated factors, innermost first
    sampled: tuple[str, ...] = ()  # factors whose effects are sampled (in the graph as u_<factor>)
    kernel: KernelModel | None = None  # the same log density as a compiled kernel, when it covers the model
    note: str = ""  # why the model left the default route or the compiled kernel, for ``fit.sampler``
    # filled when the PyMC graph is built (:func:`bayeshlm.bayes.build.graph_model`):
    data: dict[str, np.ndarray] = field(default_factory=dict)  # pm.Data name -> value
    key: tuple | None = None  # identifies the compiled graph: structure, shapes, prior families


class PlannedGraph:
    """The PyMC graph of a planned model, written on the first call and kept (:func:`.build.graph_model`): the
    compiled kernel samples without it, so a fit on the kernel loads neither PyMC nor PyTensor until
    ``fit.pymc_model()`` or a prior predictive check asks for the graph. ``info`` is the plan, completed by the
    graph's data once written."""

    def __init__(self, design: Design, info: ModelInfo):
        self.design, self.info, self.model = design, info, None

    def __call__(self) -> pm.Model:
        if self.model is None:
            from .build import graph_model

            self.model, self.info = graph_model(self.design, self.info)
        return self.model


def plan_model(design: Design, priors: PriorSet, route: str = "auto",
               parameterization: dict[str, str] | None = None,
               reference_fit: Callable[[], object] | None = None) -> ModelInfo:
    """Decide how ``design``'s model is sampled (module docstring) and build the compiled kernel when it covers
    the model. ``reference_fit``: a function returning a REML fit of ``design``, asked for only when a sampled
    factor's parameterisation is to be chosen (:func:`reml_reliability`); the Bayesian engine does not fit by
    REML itself."""
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
    variance = level1_strata(design)
    ar1 = level1_ar1(design, route)
    reliability = reml_reliability(design, sampled if parameterization is None else
                                   [f for f in sampled if f.name not in parameterization], reference_fit)
    choice = _choose_parameterization(design, chain, reliability, parameterization)
    stats = None
    if route == "marginal":
        stats = chain_statistics(design, chain, sampled, None if variance is None else variance.codes, ar1)
    chain_names, sampled_names = tuple(f.name for f in chain), tuple(f.name for f in sampled)
    if priors.student_t:
        kernel, note = None, STUDENT_T_NOTE
    else:
        kernel, note = kernel_model(design, priors, stats, chain_names, sampled_names, choice,
                                    centring(design, sampled, choice), variance, ar1), ""
    return ModelInfo(route, choice, reliability, priors, stats, chain_names, sampled_names, kernel, note)


def _student_t_route(route: str) -> str:
    """The route of a model with Student-t group effects: 'sampled' (route='marginal' is refused in words)."""
    if route == "marginal":
        raise OptionError("route='marginal' integrates Gaussian group effects out analytically, which Student-t "
                          "effects do not allow: use route='sampled' or 'auto' with random_effects='student_t'.")
    return "sampled"


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


def correlation_blocks(f) -> list[tuple[str, list[int]]]:
    """The LKJ blocks of factor ``f`` (two or more coefficients) with the name of their correlation variable."""
    return [(correlation_name(f, i), list(block)) for i, block in enumerate(f.blocks) if len(block) > 1]


def correlation_name(f, block_index: int) -> str:
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
            corr = posterior[correlation_name(f, i)].values
            L[..., idx[:, None], idx[None, :]] = tau[..., idx][..., :, None] * corr
    return L


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
