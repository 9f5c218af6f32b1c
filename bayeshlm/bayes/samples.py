"""What the Bayesian engine hands on: the posterior draws with the record of how they were made (lme4's stages,
where the optimiser's state is handed to ``mkMerMod``). The fit objects that read the tables from them live
one layer up: :class:`bayeshlm.results.BayesFit`, :class:`bayeshlm.results.BayesGLMMFit` and
:class:`bayeshlm.results.GLMMPriorPredictive`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..design import Design
from ..families.outcome import GLMOutcome


@dataclass(frozen=True, eq=False)
class PosteriorSample:
    """A Gaussian model's posterior (:func:`bayeshlm.bayes.fit_bayes`): the DataTree of draws in the user's
    units, the model's ``info`` (a :class:`~bayeshlm.bayes.plan.ModelInfo`), the ``sampler`` record,
    ``diagnostics`` and ``messages``; ``graph()`` returns the ``pm.Model`` of the posterior (written on the first
    call when the compiled kernel sampled without it), ``chol`` the Cholesky factor of each factor's T per draw
    (chain, draw, q, q), ``sampled`` the (design, OutcomeUnits, centring) of the graph's standardised outcome, or
    None when the graph is in the user's units."""

    design: Design
    posterior: xr.DataTree
    info: object
    sampler: dict
    diagnostics: dict
    messages: list[str]
    graph: Callable[[], object]
    chol: dict[str, np.ndarray]
    sampled: tuple | None = None


@dataclass(frozen=True, eq=False)
class GLMMPosteriorSample:
    """A hierarchical GLM's posterior (:func:`bayeshlm.bayes.glmm.fit_bayes_glmm`): the draws, the priors as
    printed, the ``sampler`` record, ``diagnostics``, ``messages``, the Laplace fit used for the geometry and
    the start (or None), and the prior set and shape prior the model was built with."""

    design: Design
    outcome: GLMOutcome
    posterior: xr.DataTree
    priors: dict[str, str]
    sampler: dict
    diagnostics: dict
    messages: list[str]
    laplace: object
    prior_set: object
    shape_prior: object


@dataclass(frozen=True, eq=False)
class GLMMPriorDraws:
    """Prior predictive draws of a hierarchical GLM (:func:`bayeshlm.bayes.glmm.prior_predictive`): ``mu``
    (draws, rows) and the simulated outcomes ``y`` (draws, rows), with the priors as printed and the seed."""

    outcome: GLMOutcome
    mu: np.ndarray
    y: np.ndarray
    priors: dict[str, str]
    seed: int | None
