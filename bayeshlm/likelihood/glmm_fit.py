"""``fit_glmm`` and its result, :class:`GLMMFit`: a non-Gaussian HLM fitted by maximum likelihood.

The result uses the names of the Gaussian :class:`~bayeshlm.likelihood.result.LikelihoodFit` where they mean
the same: ``fixed_effects`` (Wald z tests and intervals; odds or rate ratios for logit and log links),
``tau[factor]``, ``loglik``, ``deviance`` (= -2 loglik), ``aic``, ``bic``, ``group_effects(factor)``,
``messages``. See :mod:`bayeshlm.likelihood.glmm` for the estimator.
"""

from __future__ import annotations

import time as _time
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import ThreadpoolController

from ..design import Design
from ..errors import DataError, OptionError, closest_names
from ..families.outcome import GLMOutcome
from .glmm import GLMMObjective, check_nagq, laplace_start, optimise, separation_direction

OPTIONS = ("nagq", "maxiter", "information")
INFORMATION = ("expected", "observed")
CONVERGENCE_GRADIENT = 1e-3  # largest scaled gradient |H^{-1} g| accepted at the reported optimum
BOUNDARY = 1e-4  # a Lambda diagonal entry below this is reported as a variance on the boundary
_THREADS: list[ThreadpoolController] = []  # found once (scanning the loaded libraries takes ~10 ms)


def fit_glmm(design: Design, outcome: GLMOutcome, method: str = "ml", **options) -> GLMMFit:
    """Fit a non-Gaussian model by ML: Laplace (``nagq=1``, default) or adaptive quadrature (``nagq>1``)."""
    family = outcome.family
    if method == "reml":
        raise OptionError(f"method='reml' is not defined for the {family.name} family: REML integrates the fixed "
                          "effects out of a Gaussian likelihood, which has no exact counterpart for binary or "
                          "count outcomes. Use method='ml' (the Laplace approximation, as lme4's glmer; "
                          "nagq=25 for adaptive quadrature).")
    if method == "pql":
        from .pql import fit_pql

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
        start, start_hessian = laplace_start(objective) if nagq > 1 else (None, None)
        x, deviance, gradient, hessian, message = optimise(objective, maxiter=int(options.get("maxiter", 500)),
                                                           start=start, start_hessian=start_hessian)
    return GLMMFit(objective, x, deviance, gradient, hessian, str(message), _time.perf_counter() - started)


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


class GLMMFit:
    """Maximum-likelihood fit of a hierarchical generalized linear model (R&B 2002, ch. 10)."""

    method = "ml"

    def __init__(self, objective: GLMMObjective, x: np.ndarray, deviance: float, gradient: np.ndarray,
                 hessian: np.ndarray, optimizer_message: str, seconds: float):
        self._objective = objective
        self.design = objective.design
        self.family = objective.family
        self.nagq = objective.nagq
        p = objective.p
        self._beta_s, theta = x[:p], x[p:p + objective.n_theta]
        self._theta_raw = theta
        self._theta = objective.params.canonical(theta)
        self._extra = x[p + objective.n_theta:]
        self._deviance = deviance
        self._gradient = gradient
        self._hessian = hessian
        self.optimizer_message = optimizer_message
        self.seconds = seconds
        self._u = objective.u.copy()

    # --- likelihood ----------------------------------------------------------------------------------
    @property
    def estimator(self) -> str:
        return "Laplace" if self.nagq == 1 else f"adaptive Gauss-Hermite quadrature ({self.nagq} points)"

    @property
    def loglik(self) -> float:
        """Marginal log-likelihood with all constants (Laplace approximation when nagq = 1)."""
        return -0.5 * self._deviance

    @property
    def deviance(self) -> float:
        return self._deviance

    @property
    def n_params(self) -> int:
        return self._objective.p + self._objective.n_theta + self._objective.n_extra

    @property
    def family_parameters(self) -> pd.Series:
        """The family's own estimates, e.g. the negative binomial shape k (var = mu + mu^2 / k)."""
        names = [n.removeprefix("log_") for n in self.family.extra_names]
        return pd.Series(np.exp(self._extra), index=names, dtype=float)

    @property
    def aic(self) -> float:
        return self.deviance + 2 * self.n_params

    @property
    def bic(self) -> float:
        return self.deviance + np.log(self.design.n_obs) * self.n_params

    @property
    def theta(self) -> pd.Series:
        """Entries of the relative covariance factors Lambda (lme4's theta; T = Lambda Lambda')."""
        return pd.Series(self._theta, index=self._objective.params.names(), name="theta")

    # --- fixed effects -------------------------------------------------------------------------------
    @cached_property
    def _free(self) -> np.ndarray:
        """Parameters kept in the Hessian: all but Lambda diagonals at the boundary (and their columns)."""
        keep = np.ones(len(self._hessian), bool)
        p = self._objective.p
        for fp in self._objective.params.factors:
            for c in np.unique(fp.cols):
                diag = fp.offset + np.flatnonzero((fp.rows == c) & (fp.cols == c))[0]
                if abs(self._theta[diag]) < BOUNDARY:
                    keep[p + fp.offset + np.flatnonzero(fp.cols == c)] = False
        return keep

    @cached_property
    def _cov_standardised(self) -> np.ndarray:
        """2 H^{-1} over the free parameters (a boundary variance is held fixed), beta_s block."""
        free = self._free
        H = self._hessian[np.ix_(free, free)]
        cov = 2.0 * np.linalg.pinv(0.5 * (H + H.T))
        p = self._objective.p
        return cov[:p, :p]

    @cached_property
    def vcov(self) -> pd.DataFrame:
        A = self._objective.scaling.A
        names = list(self.design.fixed_names)
        return pd.DataFrame(A @ self._cov_standardised @ A.T, index=names, columns=names)

    @cached_property
    def fixed_effects(self) -> pd.DataFrame:
        """estimate, se, z, p and 95% Wald interval; odds_ratio (logit) or rate_ratio (log) with its interval."""
        est = self._objective.scaling.A @ self._beta_s
        se = np.sqrt(np.diag(self.vcov.to_numpy()))
        z = est / se
        half = stats.norm.ppf(0.975) * se
        table = pd.DataFrame({"estimate": est, "se": se, "z": z, "p": 2 * stats.norm.sf(np.abs(z)),
                              "lower": est - half, "upper": est + half},
                             index=pd.Index(self.design.fixed_names, name="term"))
        ratio = {"logit": "odds_ratio", "log": "rate_ratio"}.get(self.family.link.name)
        if ratio:
            table[ratio] = np.exp(est)
            table[f"{ratio}_lower"] = np.exp(table["lower"])
            table[f"{ratio}_upper"] = np.exp(table["upper"])
        return table

    # --- random effects ------------------------------------------------------------------------------
    @cached_property
    def tau(self) -> dict[str, pd.DataFrame]:
        """Random-effects covariance matrix of each grouping factor (on the link scale)."""
        out = {}
        for f, lam in zip(self.design.factors, self._objective.params.lambdas(self._theta)):
            out[f.name] = pd.DataFrame(lam @ lam.T, index=list(f.coef_names), columns=list(f.coef_names))
        return out

    def group_effects(self, factor: str | None = None) -> pd.DataFrame:
        """Conditional modes b_j = Lambda u_j of each group (link scale) and their conditional SDs.

        Conditional variance: Lambda (U'WU + I)^{-1} Lambda' at the mode (lme4's ``ranef(condVar = TRUE)``).
        """
        f = self.design.factor(factor) if factor is not None else self.design.factors[0]
        k = self.design.factors.index(f)
        obj = self._objective
        lam = obj.params.lambdas(self._theta_raw)[k]
        u = self._u[obj.starts[k]:obj.starts[k + 1]].reshape(f.n_groups, f.n_coef)
        modes = u @ lam.T
        cov_u = self._conditional_cov_u(k)
        cov_b = lam[None] @ cov_u @ lam.T[None]
        sd = np.sqrt(np.maximum(np.diagonal(cov_b, axis1=1, axis2=2), 0.0))
        columns = {name: modes[:, c] for c, name in enumerate(f.coef_names)}
        columns.update({f"sd_{name}": sd[:, c] for c, name in enumerate(f.coef_names)})
        columns["n"] = f.group_sizes
        return pd.DataFrame(columns, index=pd.Index(f.levels, name=f.name))

    def _conditional_cov_u(self, k: int) -> np.ndarray:
        obj = self._objective
        beta_s, theta = obj.split(np.concatenate([self._beta_s, self._theta_raw, self._extra]))
        _, _, _, fac = obj.pirls(beta_s, theta, self._u)
        f = self.design.factors[k]
        if fac[0] == "blocks":
            inv_chol = np.linalg.inv(fac[1])
            return np.swapaxes(inv_chol, 1, 2) @ inv_chol
        idx = np.arange(obj.starts[k], obj.starts[k + 1])
        columns = obj._solve(fac, np.eye(obj.q)[:, idx])[idx]
        q = f.n_coef
        return np.stack([columns[j * q:(j + 1) * q, j * q:(j + 1) * q] for j in range(f.n_groups)])

    def icc(self, factor: str | None = None) -> float:
        """Latent-scale intraclass correlation tau00 / (tau00 + s2): s2 = pi^2/3 (logit) or 1 (probit).

        Refers to a latent continuous outcome behind the binary one (R&B 2002, section 10.2; Snijders &
        Bosker 2012, section 17.4); it is not the correlation of the observed 0/1 outcomes.
        """
        link = self.family.link.name
        if link not in ("logit", "probit"):
            raise OptionError(f"A latent-scale ICC is defined for the logit (pi^2/3) and probit (1) links; this "
                              f"model has family={self.family.name!r} with the {link} link, whose level-1 "
                              "variance depends on the mean. Report tau on the link scale instead.")
        f = self.design.factor(factor) if factor is not None else self.design.factors[0]
        t00 = float(self.tau[f.name].iloc[0, 0])
        return t00 / (t00 + (np.pi ** 2 / 3 if link == "logit" else 1.0))

    def population_average(self) -> pd.DataFrame:
        """Population-average (marginal) coefficients beside the unit-specific ones (R&B 2002, section 10.4).

        With random intercepts only (total variance tau over the grouping factors), the marginal mean
        E_u[g^{-1}(x'b + u)] is again linear on the link scale for two links:
        probit, exactly b / sqrt(1 + tau);  log, exactly the intercept plus tau / 2 (slopes unchanged).
        For the logit, b / sqrt(1 + c^2 tau) with c = 16 sqrt(3) / (15 pi) (Zeger, Liang & Albert 1988) is an
        approximation. Estimates only: intervals would need the uncertainty of tau as well.
        """
        link = self.family.link.name
        slopes = [f"{f.name}: {', '.join(c for c in f.coef_names if c != '(Intercept)')}"
                  for f in self.design.factors if any(c != "(Intercept)" for c in f.coef_names)]
        if slopes:
            raise OptionError("Population-average coefficients have a closed form only with random intercepts; this "
                              f"model has random slopes ({'; '.join(slopes)}), so the marginal mean is not linear on "
                              "the link scale.")
        if link not in ("probit", "log", "logit"):
            raise OptionError(f"No closed form for population-average coefficients with the {link} link; they "
                              "exist for the logit (approximately), probit and log links.")
        tau = float(sum(T.iloc[0, 0] for T in self.tau.values()))
        unit = self.fixed_effects["estimate"]
        if link == "log":
            marginal = unit.copy()
            if "(Intercept)" not in marginal.index:
                raise OptionError("The model has no intercept to carry the log-link shift tau / 2.")
            marginal["(Intercept)"] += tau / 2
            how = "exact: intercept + tau/2"
        elif link == "probit":
            marginal, how = unit / np.sqrt(1 + tau), "exact: b / sqrt(1 + tau)"
        else:
            c2 = (16 * np.sqrt(3) / (15 * np.pi)) ** 2
            marginal, how = unit / np.sqrt(1 + c2 * tau), "approximate: b / sqrt(1 + c^2 tau)"
        table = pd.DataFrame({"unit_specific": unit, "population_average": marginal})
        table.attrs["method"] = how
        return table

    # --- diagnostics ---------------------------------------------------------------------------------
    @cached_property
    def scaled_gradient(self) -> float:
        """max |H^{-1} g| at the reported optimum (over the free parameters): how far Newton would still move."""
        free = self._free
        try:
            step = np.linalg.solve(self._hessian[np.ix_(free, free)], self._gradient[free])
        except np.linalg.LinAlgError:
            return np.inf
        return float(np.max(np.abs(step), initial=0.0))

    @property
    def converged(self) -> bool:
        """A finite deviance, a stationary point (Newton would move < 1e-3) and a positive definite Hessian."""
        free = self._free
        curvature = np.linalg.eigvalsh(0.5 * (self._hessian + self._hessian.T)[np.ix_(free, free)])
        return bool(np.isfinite(self._deviance) and self.scaled_gradient < CONVERGENCE_GRADIENT
                    and np.all(curvature > 0))

    @property
    def messages(self) -> list[str]:
        out = []
        if not self.converged:
            out.append(f"The optimiser did not reach a maximum: a Newton step would still move the estimates by "
                       f"{self.scaled_gradient:.2g} (standardised scale), or the curvature is not negative in every "
                       "direction (some parameter is not identified). Try simplifying the random part, or "
                       "fit(maxiter=2000); do not use these standard errors.")
        params = self._objective.params
        for fp in params.factors:
            for c in np.unique(fp.cols):
                diag = fp.offset + np.flatnonzero((fp.rows == c) & (fp.cols == c))[0]
                if abs(self._theta[diag]) < BOUNDARY:
                    out.append(f"The variance of {fp.factor.coef_names[c]!r} across {fp.factor.name!r} groups is "
                               "estimated at (about) 0: the data show no variation of this coefficient between "
                               "groups beyond chance (a boundary fit). Its standard errors treat it as fixed; "
                               "consider dropping this random effect.")
        return out

    def report(self) -> str:
        """Plain-text summary: estimator, fit statistics, fixed effects, random-effect variances."""
        lines = [f"HGLM {self.family.name} ({self.family.link.name} link), {self.estimator}",
                 f"Level 1: {self.family.equation()}",
                 f"{self.design.n_obs} rows; log-likelihood {self.loglik:.4f}, deviance {self.deviance:.4f}, "
                 f"AIC {self.aic:.2f}, BIC {self.bic:.2f}", "", self.fixed_effects.round(4).to_string(), ""]
        for name, T in self.tau.items():
            lines.append(f"tau[{name}] (link scale):")
            lines.append(T.round(5).to_string())
        lines += [f"Note: {m}" for m in self.messages]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"GLMMFit({self.family.name}/{self.family.link.name}, {self.estimator}; "
                f"loglik={self.loglik:.4f})")
