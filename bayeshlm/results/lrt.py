"""Likelihood-ratio (deviance) tests between nested fits (R&B 2002, eq. 3.92-3.94)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import OptionError
from .glmm_fit import GLMMFit
from .likelihood_fit import LikelihoodFit


@dataclass(frozen=True)
class DevianceTest:
    """D_0 - D_1 compared with chi-square(df = difference in parameter counts)."""

    method: str
    deviance_simple: float
    deviance_complex: float
    n_params_simple: int
    n_params_complex: int
    statistic: float
    df: int
    p_value: float
    note: str

    def __str__(self) -> str:
        return (f"Deviance test ({self.method.upper()}): {self.deviance_simple:.3f} ({self.n_params_simple} "
                f"parameters) vs {self.deviance_complex:.3f} ({self.n_params_complex}); chi-square "
                f"{self.statistic:.3f}, df {self.df}, p = {self.p_value:.4g}. {self.note}")


def deviance_test(fit0: LikelihoodFit | GLMMFit, fit1: LikelihoodFit | GLMMFit) -> DevianceTest:
    """Compare two nested likelihood fits of the same data; the one with fewer parameters is the null.

    Under REML the criterion depends on the fixed-effects design (it is the likelihood of error contrasts),
    so REML fits are comparable only when their fixed effects are identical (R&B 2002, p. 84): compare
    variance structures under REML, fixed effects under ML. HGLM fits (R&B ch. 10) are compared within one
    family and one approximation of the marginal likelihood (Laplace, or quadrature with the same points).
    """
    for f in (fit0, fit1):
        if not isinstance(f, LikelihoodFit | GLMMFit):
            raise OptionError(f"deviance_test compares REML/ML fits; got {type(f).__name__}.")
    if isinstance(fit0, GLMMFit) != isinstance(fit1, GLMMFit):
        raise OptionError("One fit is a Gaussian model and the other a binary/count (HGLM) model: their "
                          "likelihoods describe different outcomes. Fit both with the same family.")
    if isinstance(fit0, GLMMFit):
        if fit0.family.name != fit1.family.name or fit0.family.link.name != fit1.family.link.name:
            raise OptionError(f"The fits use different families or links ({fit0.family.name}/"
                              f"{fit0.family.link.name} vs {fit1.family.name}/{fit1.family.link.name}); a "
                              "likelihood ratio compares models of one family. Refit one of them.")
        if fit0.nagq != fit1.nagq:
            raise OptionError(f"One fit uses {fit0.estimator} and the other {fit1.estimator}: the two "
                              "approximations of the likelihood differ by more than a model difference may. "
                              "Refit both with the same nagq.")
    if fit0.method != fit1.method:
        raise OptionError(f"One fit is {fit0.method.upper()} and the other {fit1.method.upper()}: their "
                          "deviances are on different scales. Refit both with the same method.")
    d0, d1 = fit0.design, fit1.design
    if d0.n_obs != d1.n_obs or d0.outcome_name != d1.outcome_name or not np.array_equal(d0.y, d1.y):
        raise OptionError(f"The fits use different data ({d0.n_obs} vs {d1.n_obs} rows, outcome "
                          f"{d0.outcome_name!r} vs {d1.outcome_name!r}); deviances are comparable only on the "
                          "same rows of the same outcome (check rows dropped for missing values).")
    if fit0.method == "reml" and set(d0.fixed_names) != set(d1.fixed_names):
        raise OptionError(
            "Both fits are REML but their fixed effects differ "
            f"({sorted(set(d0.fixed_names) ^ set(d1.fixed_names))} in one only). The REML criterion is the "
            "likelihood of residual contrasts, which change with the fixed effects, so the difference is not a "
            "likelihood ratio. Refit both with method='ml' to test fixed effects.")
    simple, complex_ = sorted((fit0, fit1), key=lambda f: f.n_params)
    df = complex_.n_params - simple.n_params
    if df == 0:
        raise OptionError("Both fits have the same number of parameters, so they are not nested; compare "
                          "non-nested models with their AIC or BIC instead.")
    statistic = simple.deviance - complex_.deviance
    note = ("Testing a variance at its boundary (0) makes this p-value conservative (R&B 2002, ch. 9); "
            "halving it is the usual correction for one variance."
            if _n_tau_parameters(simple) < _n_tau_parameters(complex_) else "")
    return DevianceTest(method=fit0.method, deviance_simple=simple.deviance, deviance_complex=complex_.deviance,
                        n_params_simple=simple.n_params, n_params_complex=complex_.n_params,
                        statistic=float(statistic), df=int(df), p_value=float(stats.chi2.sf(max(statistic, 0.0), df)),
                        note=note)


def _n_tau_parameters(fit) -> int:
    """Variances and covariances of the random effects (the T blocks), not of level-1 error structures."""
    return sum(len(block) * (len(block) + 1) // 2 for f in fit.design.factors for block in f.blocks)
