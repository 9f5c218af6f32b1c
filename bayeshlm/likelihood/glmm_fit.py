"""``fit_glmm``: a non-Gaussian HLM fitted by maximum likelihood, Laplace (``nagq=1``) or adaptive quadrature
(``nagq>1``), or by PQL (:mod:`.pql`). See :mod:`bayeshlm.likelihood.glmm` for the estimator; the fit's tables
are :class:`bayeshlm.results.glmm_fit.GLMMFit`.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from ..design import Design
from ..errors import DataError, OptionError, closest_names
from ..families.outcome import GLMOutcome
from .glmm import GLMMObjective, check_nagq, laplace_start, optimise, separation_direction
from .pql import PQLOptimum, fit_pql

OPTIONS = ("nagq", "maxiter", "information")
INFORMATION = ("expected", "observed")
_THREADS: list[ThreadpoolController] = []  # found once (scanning the loaded libraries takes ~10 ms)


@dataclass(frozen=True, eq=False)
class GLMMOptimum:
    """Where the maximisation of the Laplace / quadrature likelihood ended: ``x`` = (beta on the objective's
    scaled X, theta, family parameters), the deviance, its gradient and Hessian there, the optimiser's message,
    the seconds taken and the conditional modes u of the last PIRLS step; :class:`bayeshlm.results.GLMMFit`
    reads the tables from it."""

    objective: GLMMObjective
    x: np.ndarray
    deviance: float
    gradient: np.ndarray
    hessian: np.ndarray
    optimizer_message: str
    seconds: float
    u: np.ndarray


def fit_glmm(design: Design, outcome: GLMOutcome, method: str = "ml", **options) -> GLMMOptimum | PQLOptimum:
    """Fit a non-Gaussian model by ML: Laplace (``nagq=1``, default) or adaptive quadrature (``nagq>1``); or by
    PQL (``method="pql"``, :func:`.pql.fit_pql`)."""
    family = outcome.family
    if method == "reml":
        raise OptionError(f"method='reml' is not defined for the {family.name} family: REML integrates the fixed "
                          "effects out of a Gaussian likelihood, which has no exact counterpart for binary or "
                          "count outcomes. Use method='ml' (the Laplace approximation, as lme4's glmer; "
                          "nagq=25 for adaptive quadrature).")
    if method == "pql":
        unknown = sorted(set(options) - {"maxiter"})
        if unknown:
            raise OptionError(f"Unknown fit option {unknown[0]!r} for method='pql'; its only option is maxiter.")
        return fit_pql(design, outcome, **options)
    if method != "ml":
        raise OptionError(f"method={method!r} is not available for the {family.name} family; use method='ml' "
                          "(Laplace, or adaptive quadrature with nagq=...) or 'pql'.")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise OptionError(f"Unknown fit option {unknown[0]!r}.{closest_names(unknown[0], OPTIONS)} "
                          f"Options for method='ml' with family={family.name!r}: {', '.join(OPTIONS)}.")
    nagq = check_nagq(design, options.get("nagq", 1))
    information = options.get("information", "expected")
    if information not in INFORMATION:
        raise OptionError(f"information={information!r}: use 'expected' (Fisher information in the Laplace "
                          "log-determinant, as lme4's glmer) or 'observed' (as glmmTMB); they coincide for the "
                          "logit and Poisson-log models.")
    started = _time.perf_counter()
    objective = GLMMObjective(design, outcome, nagq=nagq, information=information)
    _refuse_separation(objective)
    if not _THREADS:
        _THREADS.append(ThreadpoolController())
    with _THREADS[0].limit(limits=1, user_api="blas"):  # small factorisations: threads only contend
        start, inverse_hessian = laplace_start(objective) if nagq > 1 else (None, None)
        x, deviance, gradient, hessian, message = optimise(objective, maxiter=int(options.get("maxiter", 500)),
                                                           start=start, start_inverse_hessian=inverse_hessian)
    return GLMMOptimum(objective, x, deviance, gradient, hessian, str(message), _time.perf_counter() - started,
                       objective.u.copy())


def _refuse_separation(objective: GLMMObjective) -> None:
    direction = separation_direction(objective)
    if direction is None:
        return
    names = [n for n, d in zip(objective.design.fixed_names, direction) if abs(d) > 1e-6 and n != "(Intercept)"]
    involved = ", ".join(repr(n) for n in names) or "the intercept"
    outcome = "zero counts" if objective.family.name == "poisson" else "all events or all non-events"
    raise DataError(f"The fixed effects are not estimable by maximum likelihood: the predictors {involved} separate "
                    f"the outcome (rows with {outcome} can be told apart exactly by a combination of them; complete "
                    "or quasi-complete separation), so the likelihood keeps rising as their coefficients grow without "
                    "bound. Check for a category with no events (or only events) and merge or drop it, or remove the "
                    "predictor; a Bayesian fit with proper priors gives finite estimates.")
