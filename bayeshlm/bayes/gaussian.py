"""The Gaussian engine: ``fit_bayes(design, ...)`` is what ``HLM.fit(method="bayes", ...)`` calls for a Gaussian
outcome; ``pymc_model(design, ...)`` is the model it samples. Nested group effects (two- and three-level HLMs,
growth models, V-known meta-analyses) are integrated out (:mod:`.marginal`); the effects of crossed factors beyond
one nested chain are sampled (:mod:`.build`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..design import Design
from ..errors import OptionError, closest_names
from .diagnostics import diagnose, warn_if_problems
from .marginal import draw_group_effects
from .plan import ModelInfo, PlannedGraph, centring, cholesky_draws, correlation_blocks, plan_model, student_t_weights
from .predictive import prior_predictive
from .priors import Prior, resolve_priors
from .samples import PosteriorSample
from .sampling import check_sampler_options, new_seed, run_sampler
from .units import OutcomeUnits, offset_predictor_notes

if TYPE_CHECKING:  # PyMC loads only when a graph is built: the compiled kernel samples without one
    import pymc as pm

__all__ = ["fit_bayes", "labelled_correlations", "prior_predictive", "pymc_model", "sampled_model"]

OPTIONS = ("draws", "tune", "chains", "random_seed", "priors", "sampler", "target_accept", "route",
           "parameterization", "progressbar", "random_effects", "nu")


def pymc_model(design: Design, priors=None, route: str = "auto", parameterization=None,
               reference_fit=None, random_effects: str = "normal", nu: float | None = None) -> pm.Model:
    """The PyMC model of ``design`` in the user's units, for inspection (``pm.model_to_graphviz``) or extension.

    ``fit_bayes`` samples the same model on the standardised outcome (:func:`sampled_model`, :mod:`.units`)."""
    from .build import build_model

    return build_model(design, resolve_priors(design, priors, random_effects, nu), route, parameterization,
                       reference_fit)[0]


def sampled_model(design: Design, priors=None, route: str = "auto", parameterization=None, reference_fit=None,
                  random_effects: str = "normal", nu: float | None = None):
    """What ``fit_bayes`` samples: the model of ``design`` on y* = (y - c) / s with its priors rewritten for y*
    (:mod:`.units`). Returns (model, info, units, notes); ``info.priors`` are the user's priors, ``notes`` say
    which part of the standardisation the priors did not allow and which predictors lie far from zero."""
    from .build import graph_model

    info, units, notes, user_priors = _sampling_plan(design, priors, route, parameterization, reference_fit,
                                                     random_effects, nu)
    model, info = graph_model(units.design(design), info)
    return model, dataclasses.replace(info, priors=user_priors), units, notes


def _sampling_plan(design: Design, priors, route, parameterization, reference_fit, random_effects, nu):
    """The plan (:func:`~.plan.plan_model`) of the model on the standardised outcome, with its priors for y*;
    returns (info, units, notes, the user's priors)."""
    user_priors = resolve_priors(design, priors, random_effects, nu)
    units, notes = OutcomeUnits.of(design, user_priors)
    notes += offset_predictor_notes(design)
    # the reliabilities are ratios of variances: a REML fit in the user's units gives those of y*
    info = plan_model(units.design(design), units.priors(user_priors, design), route, parameterization,
                      reference_fit)
    return info, units, notes, user_priors


def fit_bayes(design: Design, *, draws: int = 1000, tune: int = 1000, chains: int = 4,
              random_seed: int | None = None, priors=None, sampler: str = "nutpie", target_accept: float = 0.9,
              route: str = "auto", parameterization: dict[str, str] | None = None,
              progressbar: bool = False, reference_fit=None, random_effects: str = "normal",
              nu: float | None = None, **unknown) -> PosteriorSample:
    """Sample the posterior of ``design``'s model, on the standardised outcome y* = (y - c) / s with every draw
    mapped back exactly to the user's units (:mod:`.units`; c and s in ``fit.sampler["outcome_units"]``).

    Parameters
    ----------
    draws, tune, chains
        Retained draws and tuning steps per chain; chains run in parallel on min(chains, CPUs) cores.
    random_seed
        Integer seed; the same seed in one environment gives identical draws. Drawn from OS entropy (and
        recorded in ``fit.sampler["seed"]``) when omitted.
    priors
        None (weakly informative defaults scaled to the data), ``"flat"`` (the book's flat priors, ch. 13),
        or a dict overriding priors by parameter name (see :mod:`bayeshlm.bayes.priors`).
    sampler
        ``"nutpie"`` (default) or ``"pymc"``.
    target_accept
        NUTS target acceptance rate; raise towards 0.99 if divergences are reported.
    route
        ``"auto"`` (= ``"marginal"`` unless a crossed design is too large to integrate), ``"marginal"``
        (nested group effects integrated out, see :mod:`.build`) or ``"sampled"`` (every effect sampled).
    parameterization
        Sampled route only: ``{factor: "centred" | "non-centred"}`` to override the data-based choice.
    reference_fit
        A function returning a REML fit of ``design``: the data-based choice of parameterisation reads the
        reliability of the sampled factors' group intercepts from it, and it is called only when a crossed
        design has sampled factors to choose for (``HLM.fit`` passes one that fits once per model). Without
        it, sampled factors are non-centred.
    random_effects
        ``"normal"`` (default) or ``"student_t"``: heavy-tailed group effects u_j ~ t_ν(0, T), robust to
        outlying groups (Seltzer's t level-2 model; :mod:`.build`). Sampled on the PyMC graph
        (``fit.sampler["note"]`` says so); the posterior adds ``nu`` and the weights ``w_<factor>`` of the
        scale-mixture form u_j | w_j ~ N(0, T / w_j) (small w_j: an outlying group). ``tau_<factor>`` and
        ``T_<factor>`` are then the scale of the t distribution; the effects' covariance is T ν / (ν - 2), ν > 2.
    nu
        With ``random_effects="student_t"``: fix ν at this value (e.g. ``nu=4``); None (default) estimates ν
        under the ``"nu"`` prior, Gamma(2, 0.1) unless ``priors={"nu": ...}``.

    Any other keyword raises an :class:`~bayeshlm.errors.OptionError` naming the closest option.
    """
    if unknown:
        name = next(iter(unknown))
        raise OptionError(f"Unknown option {name!r} for method='bayes'.{closest_names(name, OPTIONS)} "
                          f"Options: {', '.join(OPTIONS)}.")
    check_sampler_options(draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                          target_accept=target_accept, sampler=sampler, progressbar=progressbar)
    if parameterization is not None and not isinstance(parameterization, Mapping):
        raise OptionError(f"parameterization={parameterization!r}: give a dict {{factor: 'centred' or "
                          "'non-centred'}, e.g. parameterization={'school': 'non-centred'}.")
    info, units, notes, user_priors = _sampling_plan(design, priors, route, parameterization, reference_fit,
                                                     random_effects, nu)
    sampled_design = units.design(design)
    graph = PlannedGraph(sampled_design, info)
    if random_seed is None:
        random_seed = new_seed()
    model = None if sampler == "nutpie" and info.kernel is not None else graph()
    tree, record = run_sampler(model, graph.info, sampler=sampler, draws=draws, tune=tune, chains=chains,
                               seed=int(random_seed), target_accept=target_accept, progressbar=progressbar)
    info = dataclasses.replace(info, priors=user_priors)
    posterior, chol = _complete_posterior(sampled_design, tree["posterior"].to_dataset(), info, int(random_seed))
    centred_on = centring(design, [design.factor(name) for name in info.sampled], info.parameterization)
    tree["posterior"] = xr.DataTree(units.draws(posterior, design, centred_on))
    if "warmup_posterior" in tree.children:
        tree["warmup_posterior"] = xr.DataTree(units.draws(tree["warmup_posterior"].to_dataset(), design, centred_on))
    chol = {name: units.scale * L for name, L in chol.items()}
    record |= {"route": info.route, "parameterization": info.parameterization,
               "reliability": {k: round(v, 3) for k, v in info.reliability.items()},
               "outcome_units": {"centre": units.centre, "scale": units.scale}}
    if info.priors.student_t:
        record |= {"random_effects": "student_t", "note": info.note,
                   "nu": "estimated" if isinstance(info.priors.nu, Prior) else info.priors.nu}
    var_names = ["beta", *(v for v in posterior.data_vars if v in ("sigma", "sigma_strata", "phi")
                           or v == "nu" and isinstance(info.priors.nu, Prior)
                           or v.startswith(("tau_", "corr_")) and not v.startswith("corr_chol_"))]
    var_names += [f"u_{name}" for name in info.sampled]
    diagnostics, messages = diagnose(tree, var_names, chains)
    messages = notes + messages
    warn_if_problems(messages)
    return PosteriorSample(design, tree, info, record, diagnostics, messages, graph, chol,
                           sampled=(sampled_design, units, centred_on))


def _complete_posterior(design: Design, post: xr.Dataset, info: ModelInfo, seed: int):
    """Label the draws with this design's names, add T_<factor> draws and (marginal route) the group effects."""
    post = post.assign_coords(fixed=list(design.fixed_names))
    chol = {}
    for f in design.factors:
        coef_dim = f"{f.name}__coef"
        post = post.assign_coords({coef_dim: list(f.coef_names)})
        if f.name in post.dims:
            post = post.assign_coords({f.name: [str(v) for v in f.levels]})
        L = cholesky_draws(f, post)
        chol[f.name] = L
        post[f"T_{f.name}"] = xr.DataArray(L @ np.swapaxes(L, -1, -2),
                                           dims=("chain", "draw", coef_dim, f"{coef_dim}2"),
                                           coords={f"{coef_dim}2": list(f.coef_names)})
        post = labelled_correlations(f, post)
    if info.priors.student_t:  # the mixing weights, from their exact conditional posterior (build module docstring)
        nu = np.broadcast_to(post["nu"].values, (post.sizes["chain"], post.sizes["draw"])).reshape(-1)
        rng = np.random.default_rng([seed, 3])
        for f in design.factors:
            u = post[f"u_{f.name}"].transpose("chain", "draw", f.name, f"{f.name}__coef").values
            w = student_t_weights(u.reshape(-1, *u.shape[2:]), chol[f.name].reshape(-1, f.n_coef, f.n_coef), nu, rng)
            post[f"w_{f.name}"] = xr.DataArray(w.reshape(u.shape[:3]), dims=("chain", "draw", f.name))
    if info.route == "marginal":
        n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
        flat = n_chain * n_draw
        coefficients = np.concatenate(
            [post["beta"].transpose("chain", "draw", "fixed").values.reshape(flat, -1),
             *(post[f"u_{name}"].values.reshape(flat, -1) for name in info.sampled)], axis=1)
        errors = design.error_structure
        if design.known_variance is not None:
            s = np.ones((flat, 1))
        elif errors.correlation is not None:  # AR(1): the weights of the 3 components of R^{-1} (build._ar1_weights)
            phi, sigma2 = post["phi"].values.reshape(flat), post["sigma"].values.reshape(flat) ** 2
            s = np.column_stack([np.ones(flat), -phi, phi**2]) / ((1.0 - phi**2) * sigma2)[:, None]
        elif errors.variance.strata(design.residual) is not None:
            s = 1.0 / post["sigma_strata"].transpose("chain", "draw", "stratum").values.reshape(flat, -1) ** 2
        else:
            s = 1.0 / post["sigma"].values.reshape(flat, 1) ** 2
        chain = [design.factor(name) for name in info.chain]
        L = [chol[f.name].reshape(flat, f.n_coef, f.n_coef) for f in chain]
        draws = draw_group_effects(info.stats, coefficients, s, L, np.random.default_rng([seed, 1]))
        for f, u in zip(chain, draws):
            post[f"u_{f.name}"] = xr.DataArray(u.reshape(n_chain, n_draw, f.n_groups, f.n_coef),
                                               dims=("chain", "draw", f.name, f"{f.name}__coef"),
                                               coords={f.name: [str(v) for v in f.levels]})
    return post, chol


def labelled_correlations(f, post: xr.Dataset) -> xr.Dataset:
    """Per LKJ block of factor ``f``, the correlation matrix Ω = L_Ω L_Ω' as ``corr_<f>`` (unit diagonal, dims
    labelled by the block's coefficients: ``<f>__coef`` and ``<f>__coef2`` for a block of all of them), and the
    Cholesky factor L_Ω the sampler drew, under ``corr_chol_<f>`` with the same labels."""
    for name, block in correlation_blocks(f):
        coef = [f.coef_names[k] for k in block]
        dims = (f"{f.name}__coef", f"{f.name}__coef2") if len(block) == f.n_coef else (f"{name}__coef",
                                                                                          f"{name}__coef2")
        chol = post[name].values
        omega = chol @ np.swapaxes(chol, -1, -2)
        omega[..., np.arange(len(block)), np.arange(len(block))] = 1.0  # exactly: a constant, not rounding noise
        labels = {dims[0]: coef, dims[1]: coef}
        post = post.drop_vars([name, *post[name].dims[2:]], errors="ignore")
        post[name.replace("corr_", "corr_chol_", 1)] = xr.DataArray(chol, dims=("chain", "draw", *dims), coords=labels)
        post[name] = xr.DataArray(omega, dims=("chain", "draw", *dims), coords=labels)
    return post
