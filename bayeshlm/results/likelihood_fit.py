"""The result of a REML / ML fit: fixed effects with model-based and robust SEs, variance components,
empirical-Bayes group effects, per-group OLS estimates, deviance and information criteria."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from ..design import Design
from ..design.design import group_sums
from ..errors import InputError, OptionError
from ..likelihood.fit import optimise_likelihood, optimum_at
from ..likelihood.optimize import BoundaryFitWarning, ConvergenceWarning
from ..likelihood.optimum import LikelihoodOptimum
from ..likelihood.theta_units import theta_from_standard
from ..report.formatting import number
from .base import FitResult, group_table, residual_row, t_interval, variance_component_pairs, variance_components_frame
from .contract import RESIDUAL_FACTOR
from .hlm_statistics import check_per_group_statistic, fixed_part

SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on the diagonal of Lambda


def fit_likelihood(design: Design, method: str = "reml", **options) -> LikelihoodFit:
    """Fit ``design`` by REML (default) or ML (:func:`bayeshlm.likelihood.fit.optimise_likelihood`, which lists
    the options) and read the fit; its notes on convergence and boundary estimates are also emitted as
    warnings."""
    fit = LikelihoodFit.of(optimise_likelihood(design, method, **options))
    for category, message in fit._warnings:
        warnings.warn(message, category, stacklevel=3)
    return fit


@dataclass(frozen=True)
class RandomEffects:
    """Conditional modes of a factor's random effects (lme4 ``ranef``, groups x coefficients) and their
    conditional covariances (lme4 ``postVar``: sigma^2 Lambda (Lambda'Z'WZ Lambda + I)^{-1}_jj Lambda', beta held
    at its estimate): :meth:`LikelihoodFit.conditional_modes`."""

    modes: pd.DataFrame  # groups x coefficients
    condvar: np.ndarray  # (J, q, q)


class LikelihoodFit(FitResult):
    """A REML or ML fit of a hierarchical linear model (see :func:`fit_likelihood`).

    ``fixed_effects`` columns: estimate, se (model-based, sigma^2 (R_X R_X')^{-1}), lower, upper (estimate -+
    t_{df} quantile x se), t, df, p (two-sided t), robust_se (cluster-robust CR0 over the top-level grouping
    factor, R&B 2002 eq. 9.24: A^{-1} [sum_j X_j'V_j^{-1} e_j e_j' V_j^{-1} X_j] A^{-1}, A = X'V^{-1}X; NaN for
    crossed designs and for designs built from aggregates, e.g. a Dask DataFrame, which keep no rows).

    Degrees of freedom (R&B 2002, eq. 3.83): each fixed effect belongs to the equation of its level-1 part
    (``meanses:cses`` to the ``cses`` equation, ``meanses`` to the intercept's). If that level-1 coefficient
    is random at a grouping factor with J groups (the one with fewest groups if several), df = J - S - 1 with
    S the number of other fixed effects in the same equation; otherwise df = N - p (fixed level-1 slope).
    """

    group_estimate_name = "empirical Bayes"

    def __init__(self, optimum: LikelihoodOptimum):
        """The fit at the engine's ``optimum`` (:func:`bayeshlm.likelihood.fit.optimise_likelihood`). Every
        computation here uses its standardised design (:mod:`bayeshlm.design.scaling`); the reported numbers are
        mapped back to the user's units."""
        self.optimum = optimum
        design, objective, scaling = optimum.design, optimum.objective, optimum.scaling
        self.design = design
        self.method = optimum.method
        self._scaling = scaling
        self._objective = objective
        self._params = objective.params
        self._theta_std = optimum.theta
        self._fac = optimum.factorization
        n, p = design.n_obs, design.n_fixed
        self.deviance = scaling.deviance(float(objective.criterion(self._fac)), n, p, objective.reml)
        self.converged = optimum.converged
        self.optimizer_message = optimum.optimizer_message
        self.n_evaluations = optimum.n_evaluations
        self._scale_std = optimum.scale
        if design.known_variance is not None:
            self._log_scale = 0.0
        else:  # log sigma^2 in the user's units (alpha_0 of a log-linear variance model may be far from 0)
            self._log_scale = float(np.log(self._scale_std * scaling.variance_factor)) + self._log_variance_shift()
        self._scale = float(np.exp(self._log_scale))
        self._lambdas = optimum.lambdas  # on the standardised scale
        self._theta = theta_from_standard(objective, scaling, self._theta_std)
        self._warnings = self._diagnose()

    def _log_variance_shift(self) -> float:
        """log(sigma^2 / (s_y^2 sigma*^2)): 0 here (see :class:`StructuredFit`)."""
        return 0.0

    # --- scalars --------------------------------------------------------------------------------
    @property
    def theta(self) -> pd.Series:
        """Relative covariance parameters (lower Cholesky of T / sigma^2 per block, lme4 order and names)."""
        return pd.Series(self._theta, index=self._params.names(), name="theta")

    @property
    def sigma2(self) -> float | None:
        return None if self.design.known_variance is not None else float(self._scale)

    @property
    def loglik(self) -> float:
        """Log-likelihood at the estimates (the restricted log-likelihood for REML), = -deviance / 2."""
        return -0.5 * self.deviance

    @property
    def n_params(self) -> int:
        """Fixed effects + covariance parameters (+ sigma^2 unless the level-1 variances are known)."""
        return self.design.n_fixed + self._params.size + (self.design.known_variance is None)

    @property
    def n_params_covariance(self) -> int:
        """Covariance parameters theta (without sigma^2)."""
        return self._params.size

    @property
    def aic(self) -> float:
        return self.deviance + 2 * self.n_params

    @property
    def bic(self) -> float:
        return self.deviance + self.n_params * np.log(self.design.n_obs)

    @property
    def messages(self) -> list[str]:
        """Plain-words notes on convergence and boundary estimates (also emitted as warnings)."""
        return [m for _, m in self._warnings]

    @property
    def boundary(self) -> bool:
        """True when a covariance matrix T is singular (a variance at 0 or a correlation at +-1)."""
        return any(c is BoundaryFitWarning for c, _ in self._warnings)

    singular = boundary

    # --- fixed effects ----------------------------------------------------------------------------
    @cached_property
    def vcov(self) -> pd.DataFrame:
        names = list(self.design.fixed_names)
        cov = self._scaling.fixed_cov(self._scale_std * self._fac.fixed_cov_relative())
        return pd.DataFrame(cov, index=names, columns=names)

    @property
    def gamma(self) -> np.ndarray:
        """The ML / REML fixed effects in the design's column order, straight from the factorisation (the base
        class reads them off ``fixed_effects``, which also computes SEs, tests and the sandwich)."""
        return self._scaling.fixed(self._fac.beta)

    def _fixed_effects_table(self, level: float) -> pd.DataFrame:
        est = self.gamma
        se = np.sqrt(np.diag(self.vcov.to_numpy()))
        df = self._df()
        t = est / se
        lower, upper = t_interval(est, se, level, df)
        return pd.DataFrame({"estimate": est, "se": se, "lower": lower, "upper": upper, "t": t, "df": df,
                             "p": 2 * stats.t.sf(np.abs(t), df), "robust_se": self._robust_se()},
                            index=pd.Index(self.design.fixed_names, name="term"))

    def _df(self) -> np.ndarray:
        d = self.design
        level1 = [_level1_part(name, term, d.term_levels) for name, term in zip(d.fixed_names, d.fixed_terms)]
        random_at: dict[frozenset, int] = {}
        for f in d.factors:
            for name in f.coef_names:
                key = frozenset() if name == "(Intercept)" else frozenset(name.split(":"))
                random_at[key] = min(random_at.get(key, f.n_groups), f.n_groups)
        keys = [frozenset(part) for part in level1]
        out = np.empty(len(keys))
        for i, key in enumerate(keys):
            if key in random_at:
                others = sum(k == key for k in keys) - 1
                out[i] = random_at[key] - others - 1
            else:
                out[i] = d.n_obs - d.n_fixed
        return out

    def _robust_se(self) -> np.ndarray:
        """CR0 sandwich over the top-level factor; V^{-1}e = W (y - X beta - Z b) / sigma^2 (Woodbury)."""
        top = self._top_factor()
        if top is None or not self.design.rows_available:
            return np.full(self.design.n_fixed, np.nan)
        d = self._objective.design  # the sandwich on the standardised scale, then mapped back
        scores = d.X * self._precision_residuals()[:, None]
        per_cluster = np.column_stack([np.bincount(top.codes, weights=s, minlength=top.n_groups) for s in scores.T])
        V = self._scale_std * self._fac.fixed_cov_relative()
        return np.sqrt(np.diag(self._scaling.fixed_cov(V @ (per_cluster.T @ per_cluster) @ V)))

    def _top_factor(self):
        tops = [f for f in self.design.factors if self.design.nesting.get(f.name) is None]
        return tops[0] if len(tops) == 1 else None

    # --- variance components ---------------------------------------------------------------------
    @cached_property
    def tau(self) -> dict[str, pd.DataFrame]:
        out = {}
        for f, lam in zip(self.design.factors, self._lambdas):
            T = self._scaling.covariance(f.name, self._scale_std * lam @ lam.T)
            out[f.name] = pd.DataFrame(T, index=list(f.coef_names), columns=list(f.coef_names))
        return out

    def _variance_components_table(self, level: float) -> pd.DataFrame:
        """Entries of each T and sigma^2 with the observed-information SE and Wald interval of
        :meth:`variance_intervals` (NaN where that is not defined); extras ``sd`` (of a variance) and ``corr``
        (of a covariance)."""
        wald = self._wald_variance_intervals(level)
        rows = []
        for f in self.design.factors:
            T = self.tau[f.name].to_numpy()
            for b, a in variance_component_pairs(f):
                term, term2 = f.coef_names[b], f.coef_names[a]
                se, lower, upper = wald.get((f.name, term, "" if a == b else term2), (np.nan,) * 3)
                row = {"factor": f.name, "term": term, "term2": term2, "estimate": T[a, b], "se": se,
                       "lower": lower, "upper": upper, "sd": np.nan, "corr": np.nan}
                if a == b:
                    row["sd"] = np.sqrt(T[a, a])
                elif T[a, a] * T[b, b] > 0:
                    row["corr"] = T[a, b] / np.sqrt(T[a, a] * T[b, b])
                rows.append(row)
        if self.sigma2 is not None:
            se, lower, upper = wald.get((RESIDUAL_FACTOR, "", ""), (np.nan,) * 3)
            rows.append(residual_row(self.sigma2, se, lower, upper, sd=np.sqrt(self.sigma2), corr=np.nan))
        return variance_components_frame(rows, ("sd", "corr"))

    def _wald_variance_intervals(self, level: float) -> dict[tuple[str, str, str], tuple[float, float, float]]:
        """(factor, term, term2) -> (se, lower, upper) of the variance-scale rows of ``variance_intervals``
        (empty where it is not defined, e.g. under a level-1 error structure)."""
        try:
            table = self.variance_intervals("wald", level)
        except InputError:
            return {}
        table = table[table["parameter"].isin(["variance", "covariance", "sigma2"])]
        return {(r.factor, r.term, r.term2): (r.se, r.lower, r.upper) for r in table.itertuples()}

    # --- group effects -------------------------------------------------------------------------------
    @cached_property
    def _modes(self) -> dict[str, np.ndarray]:
        """Conditional modes b per design factor, (J, q), in the user's units."""
        return {name: self._scaling.effects(name, b) for name, b in self._modes_std.items()}

    @cached_property
    def _condvars(self) -> dict[str, np.ndarray]:
        """Conditional covariances of b per design factor, (J, q, q), in the user's units."""
        return {name: self._scaling.covariance(name, c) for name, c in self._condvars_std.items()}

    @cached_property
    def _modes_std(self) -> dict[str, np.ndarray]:
        """Conditional modes b = Lambda u per design factor, (J, q)."""
        return self.optimum.conditional_modes()

    @cached_property
    def _condvars_std(self) -> dict[str, np.ndarray]:
        cv = self._fac.conditional_variances()
        out = {}
        for k, i in enumerate(self._objective.position):
            lam = self._lambdas[i]
            out[self.design.factors[i].name] = self._scale_std * np.matmul(np.matmul(lam, cv[k]), lam.T)
        return out

    def _precision_residuals(self) -> np.ndarray:
        """V^{-1}(y - X beta) per row, as W (y - X beta - Z b) / sigma^2 (Woodbury), standardised scale."""
        d = self._objective.design
        fitted = d.X @ self._fac.beta
        for f in d.factors:
            fitted = fitted + np.einsum("nq,nq->n", f.Z, self._modes_std[f.name][f.codes])
        w = np.ones(d.n_obs) if d.weights is None else d.weights
        return w * (d.y - fitted) / self._scale_std

    def conditional_modes(self, factor: str | None = None) -> RandomEffects:
        """Conditional modes (BLUPs) of ``factor``'s random effects u_j, groups x coefficients, and their
        conditional covariances (J, q, q) -- the matrices behind :meth:`random_effects`."""
        name = self.factor_name(factor)
        f = self.design.factor(name)
        modes = pd.DataFrame(self._modes[name], index=f.levels, columns=list(f.coef_names))
        return RandomEffects(modes=modes, condvar=self._condvars[name])

    def _group_table(self, kind: str, factor: str, level: float) -> pd.DataFrame:
        """Empirical-Bayes coefficients (R&B 2002 eq. 3.56; lme4's ``coef()`` convention: the coefficient's
        fixed part sum_s gamma_qs W_sj, level-2 predictors included as the book's Table 4.6, + u_qj) or the
        conditional modes u_qj alone; se the conditional SD (beta held fixed), interval -+ z se. In three-level
        models a factor's coefficients add only its own u (not its parent's)."""
        f = self.design.factor(factor)
        estimate = self._modes[factor]
        if kind == "group_effects":
            estimate = estimate + fixed_part(self.design, self.gamma, f)
        se = np.sqrt(np.diagonal(self._condvars[factor], axis1=1, axis2=2))
        return group_table(f, estimate, se, *t_interval(estimate, se, level))

    def predict(self, newdata: pd.DataFrame | None = None, groups: str = "conditional", kind: str = "mean",
                level: float = 0.95) -> pd.DataFrame:
        """Predictions for ``newdata`` (default: the fitted rows), as lme4's ``predict``: ``groups="conditional"``
        uses each known group's EB effects (a group absent from the fit gets the population part, as
        ``allow.new.levels=TRUE``), ``"population"`` the fixed part only (``re.form=NA``). ``kind="mean"``: the
        expected outcome with a confidence interval; ``"interval"``: a prediction interval for a new observation.
        Columns estimate, se, lower, upper, new_groups. Formulas and approximations:
        :mod:`bayeshlm.results.prediction`."""
        from .prediction import predict_likelihood

        return predict_likelihood(self, newdata, groups, kind, level)

    def fitted(self) -> pd.Series:
        """Fitted values x'gamma + z'u of the analysed rows at the conditional modes (lme4 ``fitted``), without the
        prediction SEs ``predict`` computes."""
        from .prediction import predict_likelihood

        return predict_likelihood(self, None, "conditional", "mean", 0.95, with_se=False)["estimate"].rename("fitted")

    def ols_group_estimates(self, factor: str | None = None) -> pd.DataFrame:
        """Per-group (weighted) OLS of the outcome on the factor's random-effect columns (R&B 2002, eq. 3.39).

        Columns ``("estimate", c)``, ``("se", c)`` with se from the pooled sigma^2 (sigma^2 (Z_j'Z_j)^{-1},
        as the book's Table 4.7), ``("n", "")``. Groups whose Z_j'Z_j is singular (fewer rows than
        coefficients, or no spread in a predictor) get NaN.
        """
        name = self.factor_name(factor)
        if check_per_group_statistic(self.design, name, "ols_group_estimates") == "outer":
            raise OptionError(
                f"ols_group_estimates is defined for the innermost grouping factor (R&B eq. 3.39); {name!r} encloses "
                "other groups, whose shared effects a per-group regression would count as independent level-1 "
                "noise, so its standard errors would be too small. Use fit.group_effects"
                f"({name!r}) for each group's estimate and its uncertainty, and fit.reliability({name!r}) (R&B "
                "eq. 8.8).")
        f = self.design.factor(name)
        cp = self.design.crossproducts(f)
        ZtZ, Zty = cp.ZtZ, cp.Zty
        eig = np.linalg.eigvalsh(ZtZ)
        ok = eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300)
        est = np.full(Zty.shape, np.nan)
        se = np.full(Zty.shape, np.nan)
        if ok.any():
            inv = np.linalg.inv(ZtZ[ok])
            est[ok] = np.einsum("jab,jb->ja", inv, Zty[ok])
            se[ok] = np.sqrt(self._scale * np.diagonal(inv, axis1=1, axis2=2))
        cols = list(f.coef_names)
        frame = pd.concat({"estimate": pd.DataFrame(est, columns=cols), "se": pd.DataFrame(se, columns=cols)},
                          axis=1)
        frame[("n", "")] = f.group_sizes
        frame.index = f.levels
        return frame

    # --- diagnosis ---------------------------------------------------------------------------------
    def _diagnose(self) -> list[tuple[type, str]]:
        out = []
        if not self.converged:
            out.append((ConvergenceWarning,
                        f"The optimiser did not report convergence ({self.optimizer_message}) after "
                        f"{self.n_evaluations} evaluations. The estimates may not be at the optimum: refit "
                        "with a larger maxiter or other start values, and compare the deviance."))
        for f, lam in zip(self.design.factors, self._lambdas):
            for block in f.blocks:
                for k, c in enumerate(block):
                    if lam[c, c] >= SINGULAR_TOL:
                        continue
                    coef = f.coef_names[c]
                    if np.all(np.abs(lam[c, list(block[:k])]) < SINGULAR_TOL):
                        out.append((BoundaryFitWarning,
                                    f"Boundary fit: the variance of '{coef}' between {f.name} groups is "
                                    f"estimated as 0. The data show no variation of this coefficient across "
                                    f"{f.name} beyond what chance would produce, so its group estimates all "
                                    f"equal the fixed part. Consider dropping '{coef}' from the random part for "
                                    f"{f.name} (compare the fits with bh.deviance_test), or fit with "
                                    "method='bayes', whose prior keeps the variance away from exactly 0."))
                    else:
                        others = ", ".join(f"'{f.coef_names[b]}'" for b in block[:k])
                        out.append((BoundaryFitWarning,
                                    f"Boundary fit: the random coefficient '{coef}' for {f.name} is an exact "
                                    f"linear function of {others} (a correlation of +-1, T is singular). The "
                                    "data cannot separate these random effects. Consider uncorrelated random "
                                    "effects (||), dropping a random slope, or method='bayes'."))
        return out

    def refit(self, y: np.ndarray) -> LikelihoodFit:
        """The same model fitted to new outcome values ``y`` (one per analysed row, in the design's order) by the
        same criterion, starting at this fit's theta (lme4's ``refit(object, newresp)``); no warnings are emitted,
        read ``messages`` of the result."""
        design = dataclasses.replace(self.design, y=np.asarray(y, dtype=float))
        return LikelihoodFit.of(optimise_likelihood(design, self.method, start=self._theta))

    # --- state (what :mod:`bayeshlm.results.storage` saves) ------------------------------------------
    def to_state(self) -> tuple[dict, dict]:
        """(record, datasets) from which :meth:`from_state` rebuilds this fit with its design: the method, theta
        in the user's units and the optimiser's record (JSON-ready); no arrays beyond the design."""
        record = {"method": self.method, "theta": [float(t) for t in self._theta], "converged": bool(self.converged),
                  "optimizer_message": self.optimizer_message, "n_evaluations": int(self.n_evaluations),
                  "deviance": self.deviance, "messages": self.messages}
        return record, {}

    @staticmethod
    def from_state(design, record: dict, datasets: dict | None = None) -> LikelihoodFit:
        """The fit of ``design`` at the recorded theta (one evaluation of the criterion, no optimisation): a
        :class:`StructuredFit` when the design has a level-1 error structure. Refuses a theta of the wrong size
        or with non-finite values (:class:`~bayeshlm.errors.FitFormatError`)."""
        return LikelihoodFit.of(optimum_at(design, record["method"], record["theta"], converged=record["converged"],
                                           optimizer_message=record["optimizer_message"],
                                           n_evaluations=record["n_evaluations"]))

    @staticmethod
    def of(optimum: LikelihoodOptimum) -> LikelihoodFit:
        """The fit at ``optimum``: a :class:`StructuredFit` when the design has a level-1 error structure."""
        return (StructuredFit if optimum.design.residual is not None else LikelihoodFit)(optimum)

    # --- text ------------------------------------------------------------------------------------
    def report_sections(self) -> list[tuple[str, str]]:
        """Deviance (-2 log-likelihood, restricted for REML), number of parameters, AIC and BIC."""
        parts = [f"{label}: {number(value)}" for label, value in (
            ("deviance", self.deviance), ("parameters", self.n_params), ("AIC", self.aic), ("BIC", self.bic))]
        return [("Fit", "   ".join(parts))]

    def describe_estimates(self) -> str:
        return f"Numbers are {self.method.upper()} estimates."

    def __repr__(self) -> str:
        return (f"<LikelihoodFit {self.method.upper()} {self.design.spec.formula()!r}: "
                f"{'REML criterion' if self.method == 'reml' else 'deviance'} {self.deviance:.4f}>")


class StructuredFit(LikelihoodFit):
    """A REML / ML fit with a level-1 error structure (see :mod:`bayeshlm.likelihood.marginal`).

    ``sigma2`` is the level-1 variance of the reference stratum (varIdent) or exp(alpha_0) (log-linear model);
    ``residual_parameters`` lists the variance-function parameters and phi, and ``variance_components``
    adds them as rows of factor 'Residual': the variance of each stratum with its SD ratio to the reference
    (nlme's varIdent coefficients), alpha_0 and the alphas of ln sigma^2_ij = alpha_0 + sum_m alpha_m C_mij
    (R&B 2002, eq. 5.36), and the AR(1) phi. Group effects are b_j = T Z_j' V_j^{-1}(y_j - X_j beta) with
    conditional covariance T - T Z_j' V_j^{-1} Z_j T (beta held fixed; R&B 2002, eq. 3.56 generalised).
    """

    @property
    def theta(self) -> pd.Series:
        # the user's structure names the last parameter (the standardised design may hold CAR(1) for AR(1))
        names = self._params.names() + self.error_structure.parameter_names(self.design.residual)
        return pd.Series(self._theta, index=names, name="theta")

    def _log_variance_shift(self) -> float:
        """log(sigma^2 / (s_y^2 sigma*^2)) as the variance function gives it (log-linear: -sum_m alpha_m c_m,
        centring its predictors moves alpha_0; :mod:`bayeshlm.design.scaling`)."""
        delta = self._objective.level1_parameters(self._theta_std)[0]
        return -self.error_structure.variance.convert(delta, self._scaling, to_standard=False)[1]

    @property
    def n_params(self) -> int:
        return self.design.n_fixed + self._objective.size + 1

    @property
    def n_params_covariance(self) -> int:
        return self._objective.size

    @cached_property
    def residual_parameters(self) -> pd.Series:
        """Level-1 variance function and correlation parameters on their natural scale."""
        delta, phi = self._objective.level1_parameters(self._theta_std)
        errors = self.error_structure
        out = errors.variance.natural_parameters(self.design.residual, delta, self._log_scale, self._scaling)
        if phi is not None:
            out[f"phi ({self.error_structure.correlation.label})"] = self._scaling.phi(phi)
        return pd.Series(out, name="estimate", dtype=float)

    def _variance_components_table(self, level: float) -> pd.DataFrame:
        base = super()._variance_components_table(level)
        rows = [{"factor": RESIDUAL_FACTOR, "term": name, "term2": name, "estimate": value, "se": np.nan,
                 "lower": np.nan, "upper": np.nan, "sd": np.sqrt(value) if name.startswith("sigma2") else np.nan,
                 "corr": np.nan} for name, value in self.residual_parameters.items()]
        return pd.concat([base, pd.DataFrame(rows, columns=base.columns)], ignore_index=True)

    @cached_property
    def _precision(self) -> np.ndarray:
        return self._fac.precision_residuals(self.design.n_obs)

    def _precision_residuals(self) -> np.ndarray:
        return self._precision / self._scale_std

    @cached_property
    def _modes_std(self) -> dict[str, np.ndarray]:
        out = {}
        for f, lam in zip(self._objective.design.factors, self._lambdas):
            sums = group_sums(f.codes, f.Z, self._precision[:, None], f.n_groups)[:, :, 0]
            out[f.name] = sums @ (lam @ lam.T)
        return out

    @cached_property
    def _condvars_std(self) -> dict[str, np.ndarray]:
        out = {}
        for k, (f, lam) in enumerate(zip(self.design.factors, self._lambdas)):
            M = lam @ lam.T
            info = self._fac.projected_information(k, f.n_groups)
            out[f.name] = self._scale_std * (M - np.matmul(np.matmul(M, info), M))
        return out


def _level1_part(column: str, term: tuple[str, ...], term_levels: dict[str, int]) -> tuple[str, ...]:
    """The level-1 pieces of a fixed-effect column's name, to match against random-coefficient names.

    Pieces are named as the column is ('C(female)[T.1]', not the term's 'C(female)'), so a categorical random
    slope finds its fixed effect; 'meanses:cses' gives ('cses',) when meanses varies between groups only.
    """
    pieces = column.split(":")
    if len(pieces) != len(term):
        return tuple(f for f in term if term_levels.get(f, 1) == 1)
    level1 = []
    for piece in pieces:
        factor = next((f for f in term if piece == f or piece.startswith(f + "[")), piece)
        if term_levels.get(factor, 1) == 1:
            level1.append(piece)
    return tuple(level1)
