"""The L-BFGS-B loop of bayeshlm.likelihood.optimize.lbfgsb against scipy.optimize.minimize(method="L-BFGS-B"),
which drives the same routine: the same iterates to the last bit, so the same result, evaluation count, message
and quasi-Newton matrix; and minimize_criterion gives the same fit through either loop."""

import numpy as np
import pytest
from scipy.optimize import minimize

import bayeshlm as bh
from bayeshlm.likelihood import fit as likelihood_fit
from bayeshlm.likelihood import optimize

pytestmark = pytest.mark.skipif(optimize._lbfgsb is None, reason="a scipy release outside optimize.CHECKED_SCIPY: "
                                "minimize's own loop is used")


def rosenbrock(x):
    value = float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))
    gradient = np.zeros_like(x)
    gradient[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    gradient[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return value, gradient


def sleepstudy_reml():
    design = bh.HLM("Reaction ~ Days + (Days | Subject)", bh.datasets.load("sleepstudy")).design
    objective = likelihood_fit.ProfiledDeviance(likelihood_fit.standardised(design)[0], "reml")
    return objective.value_and_gradient, objective.params.start


CASES = {
    "rosenbrock": (rosenbrock, np.array([-1.2, 1.0, 0.5, -0.3]), dict(ftol=1e-15, gtol=1e-9, maxiter=1000)),
    "rosenbrock, stopped at maxiter": (rosenbrock, np.array([-1.2, 1.0]), dict(ftol=1e-15, gtol=1e-9, maxiter=5)),
    "sleepstudy REML": (*sleepstudy_reml(), dict(ftol=1e-15, gtol=1e-9 * 1800, maxiter=1000)),
}


@pytest.mark.parametrize("name", CASES)
def test_lbfgsb_loop_equals_scipy_minimize(name):
    fun, x0, options = CASES[name]
    reference = minimize(fun, x0, jac=True, method="L-BFGS-B", options={**options, "maxls": 50})
    f0, g0 = fun(x0.copy())
    result = optimize.lbfgsb(fun, x0, f0, g0, maxls=50, **options)
    np.testing.assert_array_equal(result.x, reference.x)
    np.testing.assert_array_equal(result.jac, reference.jac)
    assert result.fun == reference.fun
    for key in ("nfev", "nit", "status", "success", "message"):
        assert result[key] == reference[key], key
    probe = np.linspace(1.0, 2.0, len(x0))
    np.testing.assert_array_equal(result.hess_inv.matvec(probe), reference.hess_inv.matvec(probe))


def test_minimize_criterion_is_the_same_through_scipy_minimize(monkeypatch):
    fun, x0, _ = CASES["sleepstudy REML"]
    objective = type("Objective", (), {"value_and_gradient": staticmethod(fun)})()
    direct = optimize.minimize_criterion(objective, x0, 1000)
    monkeypatch.setattr(optimize, "_lbfgsb", None)
    through_scipy = optimize.minimize_criterion(objective, x0, 1000)
    np.testing.assert_array_equal(direct.x, through_scipy.x)
    assert direct.fun == through_scipy.fun and direct.message == through_scipy.message
