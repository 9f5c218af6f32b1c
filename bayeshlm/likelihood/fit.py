"""REML / ML by optimising the profiled deviance over theta (Bates et al. 2015, JSS 67(1), section 3).

With L_theta the Cholesky factor of Lambda'Z'WZ Lambda + I, R_X that of the fixed-effect Schur complement and
r^2 the penalised weighted residual sum of squares (all from one factorisation, see ``nested``/``crossed``):

    ML:   d(theta)   = log|L|^2 + n [1 + log(2 pi r^2 / n)]                                  (eq. 34)
    REML: d_R(theta) = log|L|^2 + log|R_X|^2 + (n - p) [1 + log(2 pi r^2 / (n - p))]        (eq. 41)

sigma^2 = r^2/n (ML) or r^2/(n - p) (REML). With known level-1 variances V (R&B 2002, ch. 7) sigma^2 = 1 is
not estimated and W = V^{-1}:  ML d = log|L|^2 + r^2 + n log(2 pi) + sum log V;  REML adds
log|R_X|^2 - p log(2 pi). Both are -2 log-likelihood on lme4's scale (metafor's REML log-likelihood adds
(1/2) log|X'X|).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import ThreadpoolController

from ..design import Design
from ..design.identify import exact_fit
from ..design.scaling import Scaling, standardise
from ..errors import DataError, FitFormatError, OptionError, closest_names
from .crossed import CrossedSolver
from .marginal import StructuredDeviance, optimise_structured
from .nested import NestedSolver
from .optimize import minimize_criterion, polish, verdict
from .optimum import LikelihoodOptimum
from .params import Parameterization
from .theta_units import theta_to_standard

LOG_2PI = float(np.log(2.0 * np.pi))
OPTIONS = ("start", "maxiter")
_THREADPOOLS: list[ThreadpoolController] = []  # see single_threaded_blas


def _check_identifiable(design: Design, method: str) -> None:
    n, p = design.n_obs, design.n_fixed
    if method == "reml" and n <= p:
        raise DataError(f"REML needs more rows ({n}) than fixed effects ({p}). Remove fixed effects.")
    if design.known_variance is not None:
        return
    for f in design.factors:
        if f.n_groups * f.n_coef >= n:
            raise DataError(
                f"The grouping factor {f.name!r} has {f.n_groups} groups x {f.n_coef} random coefficients = "
                f"{f.n_groups * f.n_coef} random effects for {n} rows: its variance cannot be told apart from "
                "the level-1 variance (every group has about one row per coefficient). Drop random slopes, "
                "use a coarser grouping, or give the known sampling variances (known_variance=...) if this is "
                "a meta-analysis.")


def moment_start(design: Design, params: Parameterization) -> np.ndarray:
    """theta to start a crossed fit from: lme4's Lambda = I, with each random intercept's entry replaced by a
    one-way ANOVA moment estimate from the OLS residuals r (total variance s^2 = r'r / n).

    For a factor with J groups of sizes n_j and residual group means m_j, SSB = sum_j n_j m_j^2 has expectation
    about (J - 1)(s^2 - tau^2) + n0 tau^2 with n0 = n - sum_j n_j^2 / n (Searle, Casella & McCulloch 1992,
    ch. 3), so tau^2 = (SSB - (J - 1) s^2) / (n0 - J + 1); sigma^2 = s^2 - sum tau^2 (at least s^2 / 10) and
    the entry is tau / sigma, kept within [0.1, 10] (0 is a stationary point the optimiser would not leave).
    From Lambda = I most evaluations go to finding each factor's scale: on benchmarks/bench_likelihood.py's
    73k-row crossed case 31 -> 10 (REML) and 59 -> 11 (ML) evaluations, ScotsSec 17 -> 12.
    """
    theta = params.start.copy()
    if design.known_variance is not None:
        return theta
    X, y = design.X, design.y
    r = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    n = len(r)
    s2 = float(r @ r) / n
    tau2 = {}
    for fp in params.factors:
        f = fp.factor
        if not np.all(f.Z[:, 0] == 1.0):
            continue
        sizes = np.bincount(f.codes, minlength=f.n_groups).astype(float)
        sums = np.bincount(f.codes, weights=r, minlength=f.n_groups)
        ssb = float((sums[sizes > 0] ** 2 / sizes[sizes > 0]).sum())
        n0 = n - float(sizes @ sizes) / n
        if n0 - f.n_groups + 1 > 0:
            at = fp.offset + int(np.flatnonzero((fp.rows == 0) & (fp.cols == 0))[0])
            tau2[at] = max((ssb - (f.n_groups - 1) * s2) / (n0 - f.n_groups + 1), 0.0)
    sigma2 = max(s2 - sum(tau2.values()), 0.1 * s2)
    for at, t2 in tau2.items():
        theta[at] = np.clip(np.sqrt(t2 / sigma2), 0.1, 10.0)
    return theta


class ProfiledDeviance:
    """theta -> profiled deviance (ML) or REML criterion of one design."""

    def __init__(self, design: Design, method: str):
        self.design = design
        self.reml = method == "reml"
        self.params = Parameterization(design)
        chain = design.chain
        if chain:
            self.solver_factors = chain
            self.solver = NestedSolver(design, chain)
        else:
            order = sorted(design.factors, key=lambda f: -f.n_groups * f.n_coef)
            self.solver_factors = order
            self.solver = CrossedSolver(design, order)
        names = [f.name for f in design.factors]
        self.position = [names.index(f.name) for f in self.solver_factors]  # design index of solver factor
        known = design.known_variance
        self.sum_log_v = None if known is None else float(np.log(known).sum())
        self.evaluations = 0
        # where each theta entry's Q[c, r] and G[r, c] sit in Factorization.gradient_sums' flat arrays
        starts = np.cumsum([0] + [f.n_coef ** 2 for f in self.solver_factors])
        self._q_at, self._g_at = np.empty(self.params.size, dtype=int), np.empty(self.params.size, dtype=int)
        for k, i in enumerate(self.position):
            fp = self.params.factors[i]
            q, entries = fp.factor.n_coef, slice(fp.offset, fp.offset + fp.size)
            self._q_at[entries] = starts[k] + fp.cols * q + fp.rows
            self._g_at[entries] = starts[k] + fp.rows * q + fp.cols

    def parameter_names(self) -> list[str]:
        return self.params.names()

    def factorize(self, theta: np.ndarray):
        lambdas = self.params.lambdas(theta)
        return self.solver.factorize([lambdas[i] for i in self.position])

    def criterion(self, fac) -> float:
        n, p = self.design.n_obs, self.design.n_fixed
        if self.sum_log_v is not None:
            value = fac.logdet_z + fac.r2 + n * LOG_2PI + self.sum_log_v
            return value + fac.logdet_x - p * LOG_2PI if self.reml else value
        if fac.r2 <= 0:
            return np.inf
        if self.reml:
            return fac.logdet_z + fac.logdet_x + (n - p) * (1.0 + LOG_2PI + np.log(fac.r2 / (n - p)))
        return fac.logdet_z + n * (1.0 + LOG_2PI + np.log(fac.r2 / n))

    def __call__(self, theta: np.ndarray) -> float:
        self.evaluations += 1
        return self.criterion(self.factorize(theta))

    def gradient(self, fac) -> np.ndarray:
        """d criterion / d theta at the factorisation ``fac`` (see :meth:`Factorization.gradient_parts`).

        With unknown sigma^2 the criterion is log|Omega| + m log r^2 + const (m = n - p for REML, n for ML),
        so its gradient is d log|Omega| + (m / r^2) d r^2; with known variances it is d log|Omega| + d r^2.
        """
        n, p = self.design.n_obs, self.design.n_fixed
        if self.sum_log_v is not None:
            weight = 1.0
        else:
            weight = (n - p if self.reml else n) / fac.r2
        Q, G = fac.gradient_sums(self.reml)  # theta entry (r, c) of a factor reads its Q[c, r] and G[r, c]
        return 2.0 * Q[self._q_at] - 2.0 * weight * G[self._g_at]

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its analytic gradient from one factorisation."""
        self.evaluations += 1
        fac = self.factorize(theta)
        value = self.criterion(fac)
        if not np.isfinite(value):
            return value, np.zeros_like(theta)
        return value, self.gradient(fac)


def optimise_likelihood(design: Design, method: str = "reml", **options) -> LikelihoodOptimum:
    """Optimise ``design``'s REML (default) or ML criterion; the fit's tables are read from the returned
    optimum by :class:`bayeshlm.results.LikelihoodFit`.

    Options: ``start`` (theta to start from; default Lambda = I as lme4, with moment estimates for the random
    intercepts of crossed designs, see :func:`moment_start`), ``maxiter`` (default 1000).
    The optimiser is L-BFGS-B with the analytic gradient of the criterion, stopped when the gradient is below
    1e-9 |criterion| or the criterion stops decreasing (relative change 1e-15). A variance that lands at
    exactly 0 (a stationary point of the criterion) is restarted once from 0.1 to check it is a minimum.

    The fit runs on the standardised design (:func:`bayeshlm.design.scaling.standardise`: y and X centred
    and scaled, Z scaled, AR/CAR time in steps) and every reported number is mapped back exactly, so the
    estimates do not depend on the units of the data. ``converged`` also needs the end point's gradient
    below ``GRADIENT_TOL`` on that scale.
    """
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise OptionError(f"Unknown option {unknown[0]!r} for method={method!r}."
                          f"{closest_names(unknown[0], OPTIONS)} Options: {', '.join(OPTIONS)}.")
    _check_identifiable(design, method)
    maxiter = options.get("maxiter", 1000)
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise OptionError(f"maxiter={maxiter!r}: give a positive whole number of optimiser iterations "
                          "(default 1000).")
    if "start" in options and not np.all(np.isfinite(np.asarray(options["start"], dtype=float))):
        raise OptionError(f"start={options['start']!r} holds non-finite values: give finite starting values of "
                          "theta (or omit start).")
    standard, scaling = standardised(design)
    # The products are small and many: multithreaded BLAS only adds synchronisation (20-60x slower on a
    # busy 2-core machine), so it runs single-threaded during the fit.
    with single_threaded_blas():
        if design.residual is not None:
            return _fit_structured(standard, method, options.get("start"), maxiter, scaling, design)
        objective = ProfiledDeviance(standard, method)
        return _fit(objective, _start(objective, options.get("start"), scaling), maxiter, scaling, design)


def single_threaded_blas():
    """A context in which BLAS runs on one thread (the controller is found once: scanning the loaded
    libraries takes ~10 ms)."""
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


def _start(objective, start, scaling: Scaling) -> np.ndarray:
    """The user's ``start`` (their scale, checked for size) on the standardised scale, or the default:
    Lambda = I as lme4, with moment estimates for the random intercepts of crossed designs."""
    params = objective.params
    if start is None:
        if isinstance(objective, ProfiledDeviance) and isinstance(objective.solver, CrossedSolver):
            return moment_start(objective.design, params)
        return params.start
    start = np.asarray(start, dtype=float)
    names = objective.parameter_names()
    if start.shape != (len(names),):
        what = "values of theta" if isinstance(objective, ProfiledDeviance) else "values"
        raise OptionError(f"start must hold {len(names)} {what} ({', '.join(names)}); got shape {start.shape}.")
    return theta_to_standard(objective, scaling, start)


def _fit_structured(standard: Design, method: str, start, maxiter: int, scaling: Scaling, design: Design):
    """A level-1 error structure (:mod:`.marginal`): by default from the plain model's theta, with every
    variance-function and correlation parameter at 0."""
    objective = StructuredDeviance(standard, method)
    if start is None:
        plain = ProfiledDeviance(standard, method)
        theta = minimize_criterion(plain, plain.params.start, maxiter, rough=True).x
        x0 = np.concatenate([theta, objective.start[objective.params.size:]])
    else:
        x0 = _start(objective, start, scaling)
    x, converged, message = optimise_structured(objective, x0, maxiter)
    return LikelihoodOptimum(design, objective, x, scaling, converged, message, objective.evaluations)


def standardised(design: Design) -> tuple[Design, Scaling]:
    """``design`` on unit scales (:func:`bayeshlm.design.scaling.standardise`), made once per design: refits
    (REML then ML, other starts) reuse it and its sufficient statistics."""
    cache = getattr(design, "_cache", None)
    if cache is None:
        return standardise(design)
    if "standardised" not in cache:
        cache["standardised"] = standardise(design)
    return cache["standardised"]


# sigma^2 on the standardised scale (where the outcome has variance 1) below which the residuals are rounding
EXACT_FIT_TOL = 1e-20


def _refuse_exact_fit(optimum: LikelihoodOptimum, design: Design) -> None:
    """A level-1 variance of 0 (to rounding) means X b + Z u reproduces y: no variance can be estimated. The design
    layer refuses this from the rows; with per-group sums only (Dask input) it shows here first."""
    if design.known_variance is None and not optimum.scale > EXACT_FIT_TOL:
        raise exact_fit(design.spec.outcome, "the group coefficients (what per-group sums show), so")


def _fit(objective: ProfiledDeviance, start: np.ndarray, maxiter: int, scaling: Scaling,
         design: Design) -> LikelihoodOptimum:
    params = objective.params
    result = minimize_criterion(objective, start, maxiter)
    diagonal = np.isfinite(params.lower_bounds)
    at_zero = diagonal & (np.abs(result.x) < 1e-6)
    if at_zero.any():
        retry = minimize_criterion(objective, np.where(at_zero, 0.1, result.x), maxiter)
        if retry.fun < result.fun:
            result = retry
    converged, message = verdict(polish(objective, result))
    optimum = LikelihoodOptimum(design, objective, params.canonical(result.x), scaling, converged, message,
                                objective.evaluations)
    _refuse_exact_fit(optimum, design)
    return optimum


def optimum_at(design: Design, method: str, theta, *, converged: bool, optimizer_message: str,
               n_evaluations: int) -> LikelihoodOptimum:
    """The optimum record of ``design`` at a given ``theta`` in the user's units (a saved fit; no optimisation).
    Refuses a theta of the wrong size or with non-finite values (:class:`~bayeshlm.errors.FitFormatError`)."""
    standard, scaling = standardised(design)
    structured = design.residual is not None
    objective = StructuredDeviance(standard, method) if structured else ProfiledDeviance(standard, method)
    size = objective.size if structured else objective.params.size
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (size,) or not np.all(np.isfinite(theta)):
        raise FitFormatError(f"the saved theta has {theta.size} values (finite: {bool(np.isfinite(theta).all())}), "
                             f"but this model has {size} variance parameters")
    return LikelihoodOptimum(design, objective, theta_to_standard(objective, scaling, theta), scaling, converged,
                             optimizer_message, n_evaluations)
