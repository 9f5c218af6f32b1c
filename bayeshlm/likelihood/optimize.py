"""Minimising a REML / ML criterion with its analytic gradient: the optimiser, Newton polishing and the
convergence verdict shared by the profiled engine (``fit``) and the structured-error engine (``marginal``).

An objective here is anything with ``value_and_gradient(x) -> (criterion, gradient)``.
"""

from __future__ import annotations

import numpy as np
import scipy
from scipy.optimize import LbfgsInvHessProduct, OptimizeResult, minimize

# The L-BFGS-B routine scipy.optimize.minimize drives, in its C form (see lbfgsb). It is scipy's private API, so
# it is used only on the scipy releases whose minimize loop lbfgsb was checked against, iterate for iterate
# (tests/test_likelihood_lbfgsb.py); any other release runs minimize's own loop (the same fit, ~0.2 ms slower).
CHECKED_SCIPY = ((1, 15), (1, 18))
try:
    from scipy.linalg.lapack import HAS_ILP64
    from scipy.optimize import _lbfgsb
    from scipy.optimize._lbfgsb_py import status_messages, task_messages
except ImportError:  # pragma: no cover - older scipy: minimize's own loop
    _lbfgsb = None
if not CHECKED_SCIPY[0] <= tuple(int(part) for part in scipy.__version__.split(".")[:2]) <= CHECKED_SCIPY[1]:
    _lbfgsb = None  # pragma: no cover - a release lbfgsb was not checked against


class BoundaryFitWarning(UserWarning):
    """A variance was estimated at zero (or a correlation at +-1): the fit is on the boundary."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped without meeting its convergence criteria."""


GRADIENT_TOL = 1e-2  # largest |d(-2 log L) / d parameter| accepted at the end point (standardised scale)
POLISH_GRADIENT = 1e-9  # slope left at the end point (relative to the criterion) that earns Newton steps
ROUNDING = 1e-13  # criterion changes below this (relative) are rounding: ~100 times its measured noise
STALL_EVALUATIONS = 6  # consecutive evaluations within rounding of the best point that end the line search
STALLED = "ABNORMAL: the line search stalled within rounding of the best point"


class _Stalled(Exception):
    """Raised by the objective wrapper of :func:`minimize_criterion` to end a line search lost in rounding."""


class _StallWatch:
    """The best point seen and a count of the evaluations since that could not tell a trial point from it.

    Near the optimum the criterion is flat to rounding (~1e-15 relative noise): when the quasi-Newton step's
    predicted change g'(x - x_best) is itself below rounding, L-BFGS-B's line search compares noise and can spend
    its 50 trials (maxls) twice over without moving. Such trials are counted; a trial that improves the
    criterion by more than rounding, or that is predicted to, starts the count again.
    """

    def __init__(self, x: np.ndarray, value: float, gradient: np.ndarray):
        self.x, self.value, self.gradient = x, value, gradient
        self.count = 0

    def see(self, x: np.ndarray, value: float, gradient: np.ndarray) -> None:
        rounding = ROUNDING * max(abs(self.value), 1.0)
        lost = value > self.value - rounding and abs(float(self.gradient @ (x - self.x))) < rounding
        self.count = self.count + 1 if lost else 0
        if value < self.value and np.isfinite(gradient).all():
            self.x, self.value, self.gradient = x.copy(), value, gradient.copy()
        if self.count >= STALL_EVALUATIONS:
            raise _Stalled

    def result(self, evaluations: int) -> OptimizeResult:
        """The best point as the optimiser's result (status 2, an abnormal line-search end; see :func:`converged`)."""
        return OptimizeResult(x=self.x, fun=self.value, jac=self.gradient, status=2, success=False,
                              message=STALLED, nfev=evaluations, hess_inv=None)


def minimize_criterion(objective, start: np.ndarray, maxiter: int, gtol: float = 1e-9, rough: bool = False):
    """L-BFGS-B on the criterion with its analytic gradient, without bounds, stopped when the largest slope is
    below ``gtol`` |criterion| or the criterion changes by less than 1e-15 relative; ``rough`` stops at 1e-8 and
    1e-5 (a start for another fit).

    The profiled criterion depends on Lambda only through Lambda Lambda', so it is even in each column of
    Lambda and the bounds theta_diag >= 0 are not needed: the result is mapped back by flipping column signs.
    Without bounds the optimiser can cross zero instead of stopping at the stationary point theta_diag = 0
    that a bounded gradient method finds (the criterion's derivative there is 0 by symmetry). The
    variance-function and correlation parameters of ``marginal`` are unbounded transforms already.
    """
    f0, g0 = objective.value_and_gradient(start)
    watch = _StallWatch(start, f0, g0)
    evaluations = [1]

    def value_and_gradient(x):  # the optimiser's first call repeats the start
        if (x == start).all():  # numpy.array_equal for arrays of one shape, without its wrapper
            return f0, g0.copy()
        value, gradient = objective.value_and_gradient(x)
        evaluations[0] += 1
        watch.see(x, value, gradient)
        return value, gradient

    options = {"ftol": 1e-8 if rough else 1e-15, "gtol": (1e-5 if rough else gtol) * max(abs(f0), 1.0),
               "maxiter": maxiter, "maxls": 50}
    try:
        if _lbfgsb is None:
            return minimize(value_and_gradient, start, jac=True, method="L-BFGS-B", options=options)
        return lbfgsb(value_and_gradient, start, f0, g0, **options)
    except _Stalled:
        return watch.result(evaluations[0])


def lbfgsb(value_and_gradient, x0: np.ndarray, f0: float, g0: np.ndarray, ftol: float, gtol: float, maxiter: int,
           maxls: int, maxcor: int = 10, maxfun: int = 15000) -> OptimizeResult:
    """``scipy.optimize.minimize(value_and_gradient, x0, jac=True, method="L-BFGS-B", options=...)`` without
    bounds, given the value and gradient at x0: the same loop over scipy's L-BFGS-B routine (``setulb``, which
    asks for the criterion at a point, or reports a new iterate or the end), so the same iterates and result,
    without minimize's wrappers around each evaluation (~40 us per evaluation, ~0.4 ms a fit of sleepstudy).
    ``value_and_gradient`` gets a copy of each point, as from minimize."""
    n = len(x0)
    integer = np.int64 if HAS_ILP64 else np.int32
    x = np.array(x0, dtype=np.float64)
    f, g = f0, np.array(g0, dtype=np.float64)
    evaluated = x.copy()  # the point of f and g (minimize's ScalarFunction evaluates again only elsewhere)
    nfev, n_iterations = 1, 0
    wa = np.zeros(2 * maxcor * n + 5 * n + 11 * maxcor * maxcor + 8 * maxcor)
    iwa, task, ln_task = np.zeros(3 * n, dtype=integer), np.zeros(2, dtype=integer), np.zeros(2, dtype=integer)
    lsave, isave, dsave = np.zeros(4, dtype=integer), np.zeros(44, dtype=integer), np.zeros(29)
    unbounded, no_bounds = np.zeros(n, dtype=integer), np.zeros(n)
    factr = ftol / np.finfo(float).eps
    while True:
        _lbfgsb.setulb(maxcor, x, no_bounds, no_bounds, unbounded, f, g, factr, gtol, wa, iwa, task, lsave, isave,
                       dsave, maxls, ln_task)
        if task[0] == 3:  # the criterion at x
            if not (x == evaluated).all():
                evaluated = x.copy()
                f, gradient = value_and_gradient(x.copy())
                f, g = float(f), np.array(gradient, dtype=np.float64)
                nfev += 1
        elif task[0] == 1:  # a new iterate
            n_iterations += 1
            if n_iterations >= maxiter:
                task[:] = 5, 504
            elif nfev > maxfun:
                task[:] = 5, 502
        else:
            break
    status = 0 if task[0] == 4 else 1 if nfev > maxfun or n_iterations >= maxiter else 2
    corrections = min(isave[30], maxcor)  # the BFGS updates kept (mainlb's ws, wy at the start of wa)
    hess_inv = LbfgsInvHessProduct(wa[:maxcor * n].reshape(maxcor, n)[:corrections],
                                   wa[maxcor * n:2 * maxcor * n].reshape(maxcor, n)[:corrections])
    return OptimizeResult(fun=f, jac=g, nfev=nfev, njev=nfev, nit=n_iterations, status=status,
                          message=status_messages[task[0]] + ": " + task_messages[task[1]], x=x,
                          success=status == 0, hess_inv=hess_inv)


def polish(objective, result, steps: int = 2):
    """Newton steps on the analytic gradient from the optimiser's end point, while they shrink the gradient.

    Near the optimum the criterion is flat to rounding (a change of theta by 1e-8 moves it by 1e-15
    relative), so L-BFGS-B, which stops on the criterion, can end ~1e-8 away from the root of the
    gradient; the gradient itself is still accurate there. The Hessian is by forward differences of it
    (k evaluations for k parameters; its error of ~1e-6 only slows the Newton step's convergence, which
    starts within rounding of the root).
    """
    x, g = result.x, result.jac
    flat = POLISH_GRADIENT * max(abs(result.fun), 1.0)
    for _ in range(steps):
        if not np.all(np.isfinite(g)) or np.max(np.abs(g), initial=0.0) <= flat:
            break
        h = 1e-6 * np.maximum(np.abs(x), 1.0)
        H = np.empty((len(x), len(x)))
        for k in range(len(x)):
            e = np.zeros_like(x)
            e[k] = h[k]
            H[:, k] = (objective.value_and_gradient(x + e)[1] - g) / h[k]
        try:
            step = np.linalg.solve(0.5 * (H + H.T), g)
        except np.linalg.LinAlgError:
            break
        value, gradient = objective.value_and_gradient(x - step)
        worse = value > result.fun + 1e-12 * max(abs(result.fun), 1.0)
        if worse or not np.all(np.isfinite(gradient)) or np.linalg.norm(gradient) >= np.linalg.norm(g):
            break
        x, g = x - step, gradient
        result.x, result.fun, result.jac = x, min(value, result.fun), g
    return result


def converged(result) -> bool:
    """L-BFGS-B's own test, or a line search that stalled at the optimum within rounding.

    With exact gradients the tight tolerances above are often met only to rounding: the line search then
    stops (status 2, 'ABNORMAL') at a point where no step lowers the criterion. That point is accepted when
    the quasi-Newton estimate of the remaining decrease, g'H^{-1}g / 2 (L-BFGS's inverse Hessian), is below
    1e-7 deviance units. A line search that :func:`minimize_criterion` cut short (message ``STALLED``, no
    quasi-Newton matrix) is accepted when Newton polishing brought the slope below ``POLISH_GRADIENT``
    |criterion|, i.e. the best point of the descent is a stationary point to rounding.
    """
    if result.success:
        return True
    if result.status != 2 or not np.all(np.isfinite(result.jac)):
        return False
    if result.message == STALLED:
        return float(np.max(np.abs(result.jac), initial=0.0)) <= POLISH_GRADIENT * max(abs(result.fun), 1.0)
    return 0.5 * float(result.jac @ result.hess_inv.matvec(result.jac)) < 1e-7


def verdict(result) -> tuple[bool, str]:
    """(converged, message) of a polished result: :func:`converged`, and the end point's largest slope below
    ``GRADIENT_TOL``."""
    ok, message = converged(result), str(result.message)
    slope = float(np.max(np.abs(result.jac), initial=0.0))
    if ok and not slope <= GRADIENT_TOL:
        return False, end_point_message(slope)
    return ok, message


def end_point_message(slope: float) -> str:
    return (f"the end point is not a minimum: the deviance still changes by {slope:.2g} per unit of a "
            "parameter there (standardised scale)")
