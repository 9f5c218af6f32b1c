"""A log-linear model of the level-1 variance (R&B 2002, eq. 5.36; nlme ``varExp``/``varComb`` of exponentials):

    ln sigma^2_ij = alpha_0 + sum_m alpha_m C_mij,   so ln w_i = sum_m alpha_m C_mi, sigma^2 = exp(alpha_0).

The parameters are the alphas of the predictors C (without intercept). On unit scales the C columns are
centred and scaled: alpha*_m = alpha_m s_m, and centring moves alpha_0 by -sum_m alpha_m c_m.
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from .base import Strata, VarianceFunction


class LogLinear(VarianceFunction):
    name = "log_linear"

    def __init__(self, formula: str):
        self.formula = formula

    def size(self, residual) -> int:
        return residual.C.shape[1]

    def parameter_names(self, residual) -> list[str]:
        return [f"alpha {name}" for name in residual.C_names]

    def log_relative_variances(self, residual, delta, n):
        return residual.C @ delta

    def gradient(self, residual, g):
        """d ln w_i / d alpha = C_i."""
        return residual.C.T @ g

    def standardised(self, residual):
        centre = residual.C.mean(axis=0)
        sd = residual.C.std(axis=0)
        scale = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        return {"C": (residual.C - centre) / scale}, {"c_centre": centre, "c_scale": scale}

    def convert(self, delta, scaling, to_standard):
        """alpha*_m = alpha_m s_m; centring the predictors at c moves ln sigma^2 by -alpha'c."""
        user = delta if to_standard else delta / scaling.c_scale
        return (delta * scaling.c_scale if to_standard else user), float(user @ scaling.c_centre)

    def natural_parameters(self, residual, delta, log_sigma2, scaling):
        """alpha_0 = ln sigma^2 and the alphas in the user's units."""
        alpha = self.convert(delta, scaling, to_standard=False)[0]
        return {"alpha0": log_sigma2} | {f"alpha {name}": a for name, a in zip(residual.C_names, alpha)}

    def strata(self, residual) -> Strata:
        """The model as one variance per distinct predictor value, when it is saturated over them (e.g.
        '~ sector'): then ln sigma^2_k = alpha_0 + c_k'alpha maps the stratum variances one to one to the
        alphas (``solve``: alpha = solve @ ln sigma^2). Other models are refused (the Bayesian engine's form)."""
        distinct, codes = np.unique(residual.C, axis=0, return_inverse=True)
        design_rows = np.column_stack([np.ones(len(distinct)), distinct])
        if len(distinct) != design_rows.shape[1] or np.linalg.matrix_rank(design_rows) < len(distinct):
            raise OptionError(
                f"level1_variance='~ {self.formula}': the Bayesian engine fits a log-linear level-1 "
                f"variance model only when it gives one variance per distinct predictor value (here the predictors "
                f"take {len(distinct)} distinct values for {design_rows.shape[1]} coefficients), e.g. '~ sector'. "
                "Fit this model with 'reml' or 'ml', or use level1_variance='<categorical column>'.")
        order = np.lexsort(distinct.T[::-1])  # the all-zero row (alpha_0 alone) first when present
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        labels = tuple(", ".join(f"{n}={v:g}" for n, v in zip(residual.C_names, distinct[i])) for i in order)
        return Strata(rank[codes.ravel()], labels, ("alpha0", *(f"alpha {n}" for n in residual.C_names)),
                      np.linalg.inv(design_rows[order]))

    def describe(self) -> str:
        return f"ln sigma^2 ~ {self.formula}"

    def variance_text(self, sub):
        return f"sigma^2_{sub}", rf"\sigma^2_{{{sub}}}"

    def equation_lines(self, error, sub):
        return [(f"ln sigma^2_{sub} = alpha_0 + alpha'c_{sub}, c: {self.formula}",
                 rf"$ \ln \sigma^2_{{{sub}}} = \alpha_0 + \alpha' c_{{{sub}}} $, $c$: `{self.formula}`")]

    def __repr__(self) -> str:
        return f"LogLinear(formula={self.formula!r})"
