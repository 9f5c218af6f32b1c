""":class:`GLMMFit`, the result of :func:`bayeshlm.likelihood.glmm_fit.fit_glmm`: a non-Gaussian HLM fitted by
maximum likelihood.

The tables follow the result contract (:mod:`bayeshlm.results.contract`): ``fixed_effects`` (index ``term``;
estimate, se, lower, upper, then Wald z and p as glmer's summary, and odds or rate ratios for logit and log
links), ``variance_components`` (factor, term, term2, estimate, se, lower, upper; link scale),
``group_effects(factor)`` and ``random_effects(factor)`` (long tables of coefficients and conditional modes
with their conditional SDs). Also ``tau[factor]``, ``loglik``, ``deviance`` (= -2 loglik), ``aic``, ``bic``,
``predict(newdata, type)``, ``fitted()``, ``residuals(type)``, ``report()`` and ``messages``. See
:mod:`bayeshlm.likelihood.glmm` for the estimator.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DataError, OptionError, closest_names, describe_rows
from ..likelihood.glmm_fit import GLMMOptimum
from .hlm_statistics import fixed_part

PREDICT_TYPES = ("link", "response")
RESIDUAL_TYPES = ("deviance", "pearson", "response")
PA_METHODS = ("closed_form", "integrate", "gee")
CONVERGENCE_GRADIENT = 1e-3  # largest scaled gradient |H^{-1} g| accepted at the reported optimum
BOUNDARY = 1e-4  # a Lambda diagonal entry below this is reported as a variance on the boundary


def _quantile(level) -> float:
    """The normal quantile of a two-sided ``level`` interval; ``level`` must lie strictly between 0 and 1."""
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1 (e.g. 0.95).")
    return float(stats.norm.ppf(0.5 + level / 2))


def group_table(f, estimate: np.ndarray, sd: np.ndarray, level: float) -> pd.DataFrame:
    """The contract's long table of factor ``f`` from (J, q) estimates and SDs: estimate, se, estimate -/+ z se, n."""
    z = _quantile(level)
    index = pd.MultiIndex.from_product([f.levels, list(f.coef_names)], names=[f.name, "term"])
    est, se = estimate.ravel(), sd.ravel()
    return pd.DataFrame({"estimate": est, "se": se, "lower": est - z * se, "upper": est + z * se,
                         "n": np.repeat(f.group_sizes, f.n_coef)}, index=index)


def _pairs(f) -> list[tuple[int, int]]:
    """(row, column) of each variance and covariance of factor ``f``'s T, column-major within each block."""
    return [(a, b) for block in f.blocks for j, b in enumerate(block) for a in block[j:]]


class GLMMFit:
    """Maximum-likelihood fit of a hierarchical generalized linear model (R&B 2002, ch. 10)."""

    method = "ml"
    sigma2 = None  # no level-1 variance parameter: the family's variance function sets it

    def __init__(self, optimum: GLMMOptimum):
        """The fit at the engine's ``optimum`` (:func:`bayeshlm.likelihood.glmm_fit.fit_glmm`)."""
        objective, x = optimum.objective, optimum.x
        self._objective = objective
        self.design = objective.design
        self.family = objective.family
        self.nagq = objective.nagq
        p = objective.p
        self._beta_s, theta = x[:p], x[p:p + objective.n_theta]
        self._theta_raw = theta
        self._theta = objective.params.canonical(theta)
        self._extra = x[p + objective.n_theta:]
        self._deviance = optimum.deviance
        self._gradient = optimum.gradient
        self._hessian = optimum.hessian
        self.optimizer_message = optimum.optimizer_message
        self.seconds = optimum.seconds
        self._u = optimum.u

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
    def _cov_parameters(self) -> np.ndarray:
        """2 H^{-1} over (beta_s, theta, family parameters); rows and columns of parameters held at a boundary
        are NaN."""
        free = self._free
        H = self._hessian[np.ix_(free, free)]
        cov = np.full(self._hessian.shape, np.nan)
        cov[np.ix_(free, free)] = 2.0 * np.linalg.pinv(0.5 * (H + H.T))
        return cov

    @cached_property
    def _cov_standardised(self) -> np.ndarray:
        """The beta_s block of 2 H^{-1} (a boundary variance is held fixed)."""
        p = self._objective.p
        return self._cov_parameters[:p, :p]

    @cached_property
    def vcov(self) -> pd.DataFrame:
        A = self._objective.scaling.A
        names = list(self.design.fixed_names)
        return pd.DataFrame(A @ self._cov_standardised @ A.T, index=names, columns=names)

    @property
    def fixed_effects(self) -> pd.DataFrame:
        """estimate, se, lower, upper (95% Wald), z, p (Wald z, as glmer's summary); odds_ratio (logit) or
        rate_ratio (log) with its interval."""
        return self.fixed_effects_at(0.95)

    def fixed_effects_at(self, level: float = 0.95) -> pd.DataFrame:
        """``fixed_effects`` with ``level`` Wald intervals (normal quantiles)."""
        z_level = _quantile(level)
        est = self._objective.scaling.A @ self._beta_s
        se = np.sqrt(np.diag(self.vcov.to_numpy()))
        z = est / se
        table = pd.DataFrame({"estimate": est, "se": se, "lower": est - z_level * se, "upper": est + z_level * se,
                              "z": z, "p": 2 * stats.norm.sf(np.abs(z))},
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

    @property
    def variance_components(self) -> pd.DataFrame:
        """One row per variance and covariance of the random effects (link scale), with its SE by the delta
        method from cov(theta) = 2 H^{-1} and a 95% Wald interval (a variance's lower bound clipped at 0);
        columns sd and corr after the contract's. SE NaN for a variance held at the boundary (0)."""
        return self.variance_components_at(0.95)

    def variance_components_at(self, level: float = 0.95) -> pd.DataFrame:
        """``variance_components`` with ``level`` Wald intervals."""
        obj = self._objective
        p, theta = obj.p, self._theta_raw
        cov_theta = self._cov_parameters[p:p + obj.n_theta, p:p + obj.n_theta]
        z = _quantile(level)
        rows = []
        for k, f in enumerate(self.design.factors):
            def entries(t, k=k, f=f):
                lam = obj.params.lambdas(t)[k]
                T = lam @ lam.T
                return np.array([T[a, b] for a, b in _pairs(f)])
            jacobian = np.column_stack([(entries(theta + e) - entries(theta - e)) / 2.0  # exact: T is quadratic
                                        for e in np.eye(len(theta))])
            used = np.abs(jacobian) > 0
            ses = np.sqrt(np.maximum(np.einsum("ia,ab,ib->i", jacobian, np.where(np.isnan(cov_theta), 0.0,
                                                                                  cov_theta), jacobian), 0.0))
            touches_boundary = np.array([np.isnan(cov_theta[np.ix_(u, u)]).any() for u in used])
            T = self.tau[f.name].to_numpy()
            for (a, b), se, fixed in zip(_pairs(f), ses, touches_boundary):
                estimate = T[a, b]
                se = np.nan if fixed else se
                lower, upper = estimate - z * se, estimate + z * se
                if a == b:
                    lower = max(lower, 0.0)
                denom = np.sqrt(T[a, a] * T[b, b])
                corr = T[a, b] / denom if a != b and denom > 0 else np.nan
                rows.append((f.name, f.coef_names[b], f.coef_names[a], estimate, se, lower, upper,
                             np.sqrt(estimate) if a == b else np.nan, corr))
        return pd.DataFrame(rows, columns=["factor", "term", "term2", "estimate", "se", "lower", "upper", "sd",
                                           "corr"])

    def _effects(self, factor: str | None) -> tuple:
        """(factor, conditional modes b_j (J, q), conditional SDs (J, q)) on the link scale."""
        f = self.design.factor(factor) if factor is not None else self.design.factors[0]
        k = self.design.factors.index(f)
        obj = self._objective
        lam = obj.params.lambdas(self._theta_raw)[k]
        u = self._u[obj.starts[k]:obj.starts[k + 1]].reshape(f.n_groups, f.n_coef)
        cov_b = lam[None] @ self._conditional_cov_u(k) @ lam.T[None]
        return f, u @ lam.T, np.sqrt(np.maximum(np.diagonal(cov_b, axis1=1, axis2=2), 0.0))

    def random_effects(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Conditional modes b_j = Lambda u_j of each group's random effects (link scale; lme4's ``ranef``),
        se = the conditional SD from Lambda (U'WU + I)^{-1} Lambda' at the mode (``ranef(condVar = TRUE)``,
        beta and theta held at their estimates), lower/upper = mode -/+ z se. Long table (group, term)."""
        f, modes, sd = self._effects(factor)
        return group_table(f, modes, sd, level)

    def group_effects(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Each group's coefficients on the link scale, beta_qj = fixed part + b_qj (R&B eq. 3.56; lme4's
        ``coef()``, level-2 predictors of the coefficient included), se the conditional SD of b_qj."""
        f, modes, sd = self._effects(factor)
        fixed = fixed_part(self.design, self.fixed_effects["estimate"].to_numpy(), f)
        return group_table(f, fixed + modes, sd, level)

    def _conditional_cov_u(self, k: int) -> np.ndarray:
        x = np.concatenate([self._beta_s, self._theta_raw, self._extra])
        return self._objective.conditional_covariance(x, self._u, k)

    # --- predictions ---------------------------------------------------------------------------------
    def predict(self, newdata: pd.DataFrame | None = None, type: str = "link",
                groups: str = "conditional") -> pd.Series:
        """Predictions for ``newdata`` (default: the fitted rows), as glmer's ``predict``: ``type="link"`` the
        linear predictor x'gamma + z'b + offset, ``"response"`` its inverse link (a probability per trial for
        binomial rows, an expected count with the row's exposure for counts). ``groups="conditional"`` uses
        each known group's conditional mode; a group the fit did not see gets b = 0 (``allow.new.levels``);
        ``"population"`` sets b = 0 for every row (``re.form = NA``). New data need the offset or exposure
        column when the model has one. Point predictions only (no intervals)."""
        from ..design.prediction_rows import prediction_rows

        if type not in PREDICT_TYPES:
            raise OptionError(f"type={type!r} is not an option.{closest_names(str(type), PREDICT_TYPES)} Use 'link' "
                              "(the linear predictor eta) or 'response' (the mean outcome, g^-1(eta)).")
        if groups not in ("conditional", "population"):
            raise OptionError(f"groups={groups!r} is not an option. Use 'conditional' (known groups' conditional "
                              "modes; new groups at 0) or 'population' (the fixed part only).")
        rows = prediction_rows(self.design, newdata)
        eta = rows.X @ self.fixed_effects["estimate"].to_numpy() + self._offset(newdata)
        if groups == "conditional":
            for f in self.design.factors:
                codes = rows.codes[f.name]
                known = codes >= 0
                if known.any():
                    modes = self._effects(f.name)[1]
                    eta[known] += np.einsum("nq,nq->n", rows.Z[f.name][known], modes[codes[known]])
        values = eta if type == "link" else self.family.mean(eta)
        return pd.Series(values, index=rows.index, name="eta" if type == "link" else "mean")

    def _offset(self, newdata: pd.DataFrame | None) -> np.ndarray:
        outcome = self._objective.outcome
        if newdata is None:
            return outcome.offset
        term = outcome.offset_term
        if term is None:
            return np.zeros(len(newdata))
        what = "exposure" if term.log else "offset"
        if term.column not in newdata.columns:
            raise DataError(f"newdata lacks the {what} column {term.column!r}, which the model adds to the linear "
                            f"predictor.{closest_names(term.column, newdata.columns)}")
        values = pd.to_numeric(newdata[term.column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | ((values <= 0) if term.log else False)
        if bad.any():
            raise DataError(f"newdata's {what} {term.column!r} must be {'positive and ' if term.log else ''}finite; "
                            f"it is not in {describe_rows(np.flatnonzero(bad))} (0-based positions).")
        return np.log(values) if term.log else values

    def fitted(self) -> pd.Series:
        """Fitted means of the analysed rows at the conditional modes (glmer's ``fitted``: a probability per
        trial for binomial rows, an expected count for counts)."""
        return self.predict(type="response").rename("fitted")

    def residuals(self, type: str = "deviance") -> pd.Series:
        """Residuals of the analysed rows at the conditional modes, as glmer's ``residuals``:
        'deviance' sign(y - n mu) sqrt(2 (log p(y | saturated) - log p(y | mu))), 'pearson'
        (y - n mu) / sqrt(n V(mu)), 'response' y / n - mu (binomial rows on the proportion scale)."""
        if type not in RESIDUAL_TYPES:
            raise OptionError(f"type={type!r} is not an option.{closest_names(str(type), RESIDUAL_TYPES)} Use "
                              f"one of {', '.join(map(repr, RESIDUAL_TYPES))}.")
        obj = self._objective
        y, size = obj.y, obj.size
        eta = self.predict(type="link").to_numpy()
        mu = self.family.mean(eta)
        if type == "response":
            values = y / size - mu
        elif type == "pearson":
            values = (y - size * mu) / np.sqrt(size * self.family.variance(mu))
        else:
            gap = self.family.saturated_loglik(y, size) - self.family.loglik(y, eta, size)
            values = np.sign(y - size * mu) * np.sqrt(2.0 * np.maximum(gap, 0.0))
        return pd.Series(values, index=self.design.row_labels, name="residual")

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

    def population_average(self, method: str | None = None) -> pd.DataFrame:
        """Population-average (marginal) coefficients beside the unit-specific ones (R&B 2002, section 10.4).

        ``method``:

        - ``"closed_form"`` (random intercepts only; total variance tau over the grouping factors): the marginal
          mean E_u[g^-1(x'b + u)] is again linear on the link scale for probit, exactly b / sqrt(1 + tau), and
          for log, exactly the intercept plus tau / 2 (slopes unchanged); for the logit b / sqrt(1 + c^2 tau),
          c = 16 sqrt(3) / (15 pi), is the approximation of Zeger, Liang & Albert (1988).
        - ``"integrate"``: the GLM fitted to each row's marginal mean E_u[g^-1(x'b + z'u)] (any link, random
          slopes and several grouping factors too; :func:`bayeshlm.likelihood.gee.integrated_coefficients`).
        - ``"gee"``: HLM's population-average estimator, the GEE with working covariance from the fitted random
          effects, with robust (sandwich) and model-based standard errors (clusters: the groups of the only or
          the top grouping factor; crossed factors are refused;
          :func:`bayeshlm.likelihood.gee.gee_coefficients`). Columns unit_specific, population_average, se (the
          robust SE, as HLM recommends for these), lower, upper, z, p, model_se.

        Default: ``"closed_form"`` where it applies, else ``"integrate"``. ``attrs["method"]`` says which.
        The closed form and integration give estimates only (their uncertainty would need that of tau as well).
        """
        from ..likelihood.gee import gee_coefficients, integrated_coefficients

        slopes = [f"{f.name}: {', '.join(c for c in f.coef_names if c != '(Intercept)')}"
                  for f in self.design.factors if any(c != "(Intercept)" for c in f.coef_names)]
        link = self.family.link.name
        if method is None:
            method = "closed_form" if not slopes and link in ("probit", "log", "logit") else "integrate"
        if method not in PA_METHODS:
            raise OptionError(f"method={method!r} is not an option.{closest_names(str(method), PA_METHODS)} Use "
                              "'closed_form', 'integrate' or 'gee'.")
        unit = self.fixed_effects["estimate"]
        if method == "closed_form":
            marginal, how = self._closed_form_average(unit, slopes, link)
            table = pd.DataFrame({"unit_specific": unit, "population_average": marginal})
        elif method == "integrate":
            taus = {name: T.to_numpy() for name, T in self.tau.items()}
            marginal = integrated_coefficients(self.design, self._objective.outcome, self.family, unit.to_numpy(),
                                               taus)
            table = pd.DataFrame({"unit_specific": unit, "population_average": marginal})
            how = ("integrated: the GLM fitted to each row's marginal mean E_u[g^-1(x'gamma + z'u)] "
                   "(40-point Gauss-Hermite)")
        else:
            result = gee_coefficients(self._objective, self._theta_raw, unit.to_numpy())
            if not result.converged:
                raise OptionError(f"The population-average GEE did not settle in {result.iterations} iterations; "
                                  "use method='integrate'.")
            est, se = result.estimate, np.sqrt(np.diag(result.robust_cov))
            half = stats.norm.ppf(0.975) * se
            table = pd.DataFrame({"unit_specific": unit, "population_average": est, "se": se,
                                  "lower": est - half, "upper": est + half, "z": est / se,
                                  "p": 2 * stats.norm.sf(np.abs(est / se)),
                                  "model_se": np.sqrt(np.diag(result.model_cov))})
            how = ("GEE with working covariance W^-1 + Z T Z' from the fitted random effects (HLM's population-"
                   "average model, R&B eqs. 10.17-10.19); se robust (sandwich), model_se model-based")
        table.index.name = "term"
        table.attrs["method"] = how
        return table

    def _closed_form_average(self, unit: pd.Series, slopes: list[str], link: str) -> tuple[pd.Series, str]:
        if slopes:
            raise OptionError("Population-average coefficients have a closed form only with random intercepts; this "
                              f"model has random slopes ({'; '.join(slopes)}), so the marginal mean is not linear on "
                              "the link scale. Use method='integrate' (or 'gee').")
        if link not in ("probit", "log", "logit"):
            raise OptionError(f"No closed form for population-average coefficients with the {link} link; they "
                              "exist for the logit (approximately), probit and log links. Use method='integrate'.")
        tau = float(sum(T.iloc[0, 0] for T in self.tau.values()))
        if link == "log":
            if "(Intercept)" not in unit.index:
                raise OptionError("The model has no intercept to carry the log-link shift tau / 2.")
            marginal = unit.copy()
            marginal["(Intercept)"] += tau / 2
            return marginal, "exact: intercept + tau/2"
        if link == "probit":
            return unit / np.sqrt(1 + tau), "exact: b / sqrt(1 + tau)"
        c2 = (16 * np.sqrt(3) / (15 * np.pi)) ** 2
        return unit / np.sqrt(1 + c2 * tau), "approximate: b / sqrt(1 + c^2 tau)"

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
        lines.append("Random effects (link scale; se by the delta method, 95% Wald interval):")
        lines.append(self.variance_components.round(5).to_string(index=False))
        extra = self.family_parameters
        if len(extra):
            lines.append(", ".join(f"{name} = {value:.5g}" for name, value in extra.items()))
        lines += [f"Note: {m}" for m in self.messages]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"GLMMFit({self.family.name}/{self.family.link.name}, {self.estimator}; "
                f"loglik={self.loglik:.4f})")
