"""``BayesGLMMFit``: the result of ``HLM(..., family=...).fit(method="bayes")``.

Tables follow :mod:`bayeshlm.results.contract`: posterior means (``estimate``), posterior SDs (``se``) and
equal-tailed 95% intervals, on the link scale; the fixed effects add R-hat, bulk and tail ESS and, for the
logit and log links, the odds or rate ratios exp(gamma) (posterior median and interval: quantiles map exactly
through exp). Variance components are on the variance scale of the link (posterior mean of tau_qq, not the
square of a mean SD). Group coefficients are beta_qj = (fixed part of coefficient q) + u_qj (R&B 2002, eq. 10.6).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..bayes.convergence import ess_bulk, ess_tail, per_entry, rhat
from ..bayes.samples import GLMMPosteriorSample, GLMMPriorDraws
from ..errors import OptionError, closest_names
from .contract import FIXED_EFFECTS_INDEX, GROUP_TERM_INDEX, equal_tailed_interval
from .hlm_statistics import fixed_part

LEVEL = 0.95  # of the tables' posterior intervals
LATENT_LEVEL1_VARIANCE = {"logit": np.pi**2 / 3, "probit": 1.0}
RATIO = {"logit": "odds_ratio", "log": "rate_ratio"}
PA_METHODS = ("closed_form", "integrate")
QUADRATURE_NODES = 40
DRAWS_PER_BLOCK = 200  # draws integrated at once (memory: block x rows x nodes floats)


class BayesGLMMFit:
    """A fully Bayesian hierarchical GLM: posterior draws (``posterior``, an ArviZ DataTree with ``beta``,
    ``tau_<factor>``, ``corr_<factor>`` (Cholesky factor of the correlations), ``u_<factor>``, the sampled
    ``z_<factor>`` or ``coef_<factor>``, and ``shape`` for the negative binomial), the priors used (``priors``),
    how it was sampled (``sampler``: sampler, log density, seed, times, parameterisation per factor and the
    Laplace reliabilities that chose it), ``diagnostics`` and ``messages`` (problems in plain words)."""

    method = "bayes"

    def __init__(self, sample: GLMMPosteriorSample):
        """The fit of the engine's posterior ``sample`` (:func:`bayeshlm.bayes.glmm.fit_bayes_glmm`)."""
        self.design, self.outcome, self.family = sample.design, sample.outcome, sample.outcome.family
        self.posterior = sample.posterior
        self.priors = sample.priors
        self.sampler = sample.sampler
        self.diagnostics = sample.diagnostics
        self.messages = sample.messages
        self.laplace = sample.laplace  # the Laplace ML fit used for the geometry and the start (or None)
        self._prior_set, self._shape_prior = sample.prior_set, sample.shape_prior

    # --- draws -----------------------------------------------------------------------------------------
    def draws(self, name: str) -> xr.DataArray:
        """Posterior draws of one variable (dims chain, draw, ...)."""
        return self.posterior["posterior"][name]

    def _flat(self, name: str) -> np.ndarray:
        values = self.draws(name).values
        return values.reshape(-1, *values.shape[2:])

    def covariance_draws(self, factor: str) -> np.ndarray:
        """Draws of T = L L' of ``factor``, (draws, q, q)."""
        f = self.design.factor(factor)
        tau = self._flat(f"tau_{f.name}")
        omega = self._flat(f"corr_{f.name}") if f"corr_{f.name}" in self.posterior["posterior"] else \
            np.broadcast_to(np.eye(f.n_coef), (len(tau), f.n_coef, f.n_coef))
        L = tau[:, :, None] * omega
        return L @ np.swapaxes(L, 1, 2)

    def pymc_model(self):
        """The PyMC model of this fit (same priors and parameterisation, observed ``y``): for
        ``pm.sample_posterior_predictive(fit.posterior, model=fit.pymc_model())`` or extension."""
        from ..bayes.glmm import glmm_pymc_model

        return glmm_pymc_model(self.design, self.outcome, self._priors_argument(),
                               choice=self.sampler["parameterization"])

    def _priors_argument(self):
        if self._prior_set.kind == "flat":
            return "flat"
        overrides = dict(self._prior_set.fixed) | {f"tau_{k}": v for k, v in self._prior_set.tau.items()}
        overrides |= {f"corr_{k}": v for k, v in self._prior_set.corr.items()}
        if self._shape_prior is not None:
            overrides["shape"] = self._shape_prior
        return overrides

    # --- contract tables -------------------------------------------------------------------------------
    @property
    def fixed_effects(self) -> pd.DataFrame:
        """Posterior mean, SD, 95% interval, R-hat, bulk and tail ESS of gamma; odds or rate ratios."""
        beta = self.draws("beta")
        values = self._flat("beta")
        lo, hi = equal_tailed_interval(values, LEVEL)
        table = pd.DataFrame({"estimate": values.mean(0), "se": values.std(0, ddof=1), "lower": lo, "upper": hi},
                             index=pd.Index(list(self.design.fixed_names), name=FIXED_EFFECTS_INDEX))
        ordered = beta.transpose("chain", "draw", ...).values
        table["r_hat"] = per_entry(rhat, ordered) if beta.sizes["chain"] > 1 else np.nan
        table["ess_bulk"] = per_entry(ess_bulk, ordered)
        table["ess_tail"] = per_entry(ess_tail, ordered)
        ratio = RATIO.get(self.family.link.name)
        if ratio:
            table[ratio] = np.exp(np.median(values, axis=0))
            table[f"{ratio}_lower"], table[f"{ratio}_upper"] = np.exp(lo), np.exp(hi)
        return table

    @property
    def tau(self) -> dict[str, pd.DataFrame]:
        """Posterior mean of each factor's covariance matrix T (link scale)."""
        return {f.name: pd.DataFrame(self.covariance_draws(f.name).mean(0), index=list(f.coef_names),
                                     columns=list(f.coef_names)) for f in self.design.factors}

    @property
    def variance_components(self) -> pd.DataFrame:
        """One row per variance or covariance of the random coefficients (link scale): factor, term, term2,
        posterior mean, SD, 95% interval. No level-1 row: the family fixes the level-1 variance."""
        rows = []
        for f in self.design.factors:
            T = self.covariance_draws(f.name)
            for a in range(f.n_coef):
                for b in range(a + 1):
                    if a != b and not any(a in block and b in block for block in f.blocks):
                        continue
                    rows.append({"factor": f.name, "term": f.coef_names[b], "term2": f.coef_names[a],
                                 **_summary(T[:, a, b])})
        return pd.DataFrame(rows, columns=["factor", "term", "term2", "estimate", "se", "lower", "upper"])

    @property
    def family_parameters(self) -> pd.DataFrame:
        """The family's own parameters (negative binomial shape k: var = mu + mu^2 / k); empty otherwise."""
        if "shape" not in self.posterior["posterior"]:
            return pd.DataFrame(columns=["estimate", "se", "lower", "upper"])
        return pd.DataFrame([_summary(self._flat("shape"))], index=pd.Index(["shape"], name="parameter"))

    def random_effects(self, factor: str | None = None) -> pd.DataFrame:
        """Posterior of each group's deviations u_qj (long table: index (factor, term); estimate, se, lower,
        upper, n)."""
        f = self._factor(factor)
        return self._long_table(f, self._flat(f"u_{f.name}"))

    def group_effects(self, factor: str | None = None) -> pd.DataFrame:
        """Posterior of each group's coefficients beta_qj = fixed part + u_qj (long table as random_effects)."""
        f = self._factor(factor)
        return self._long_table(f, self.group_coefficient_draws(f.name))

    def group_coefficient_draws(self, factor: str | None = None) -> np.ndarray:
        """Draws (S, J, q) of every group's coefficients: the fixed part (with level-2 predictors) plus u."""
        f = self._factor(factor)
        unit = np.eye(self.design.n_fixed)
        basis = np.stack([fixed_part(self.design, unit[c], f) for c in range(self.design.n_fixed)])  # (p, J, q)
        return self._flat(f"u_{f.name}") + np.einsum("sp,pjq->sjq", self._flat("beta"), basis)

    def _long_table(self, f, draws: np.ndarray) -> pd.DataFrame:
        lo, hi = equal_tailed_interval(draws, LEVEL)
        index = pd.MultiIndex.from_product([list(f.levels), list(f.coef_names)], names=[f.name, GROUP_TERM_INDEX])
        return pd.DataFrame({"estimate": draws.mean(0).ravel(), "se": draws.std(0, ddof=1).ravel(),
                             "lower": lo.ravel(), "upper": hi.ravel(),
                             "n": np.repeat(np.asarray(f.group_sizes), f.n_coef)}, index=index)

    # --- HGLM summaries --------------------------------------------------------------------------------
    def icc_draws(self, factor: str | None = None) -> np.ndarray:
        """Per draw, the latent-scale ICC tau_00 / (tau_00 + s2), s2 = pi^2/3 (logit) or 1 (probit)
        (R&B 2002, section 10.2; Snijders & Bosker 2012, section 17.4): the correlation of a latent continuous
        outcome behind the binary one, not of the observed 0/1 outcomes."""
        link = self.family.link.name
        if link not in LATENT_LEVEL1_VARIANCE:
            raise OptionError(f"A latent-scale ICC is defined for the logit (pi^2/3) and probit (1) links; this "
                              f"model has family={self.family.name!r} with the {link} link, whose level-1 "
                              "variance depends on the mean. Report tau on the link scale instead.")
        t00 = self.covariance_draws(self._factor(factor).name)[:, 0, 0]
        return t00 / (t00 + LATENT_LEVEL1_VARIANCE[link])

    def icc(self, factor: str | None = None) -> pd.Series:
        """Posterior mean, SD and 95% interval of the latent-scale ICC (see :meth:`icc_draws`)."""
        return pd.Series(_summary(self.icc_draws(factor)), name="latent ICC")

    def plausible_values(self, factor: str | None = None, level: float = 0.95, seed: int | None = None
                         ) -> pd.DataFrame:
        """Posterior-predictive range of a new group's coefficients (gamma_q + u_new, u_new ~ N(0, T) per draw,
        level-2 predictors at zero): link scale, and for the intercept the response scale through the inverse
        link (a new group's probability or rate at the predictors' zero values). R&B 2002, eq. 4.6 and 10.6."""
        f = self._factor(factor)
        T = self.covariance_draws(f.name)
        rng = np.random.default_rng([self.sampler["seed"], 2] if seed is None else seed)
        L = np.linalg.cholesky(T + 1e-300 * np.eye(f.n_coef))
        new = np.einsum("sab,sb->sa", L, rng.standard_normal(T.shape[:2]))
        beta = self._flat("beta")
        for a, name in enumerate(f.coef_names):
            if name in self.design.fixed_names:
                new[:, a] += beta[:, list(self.design.fixed_names).index(name)]
        lo, hi = equal_tailed_interval(new, level)
        table = pd.DataFrame({"center": new.mean(0), "sd": new.std(0, ddof=1), "lower": lo, "upper": hi},
                             index=pd.Index(list(f.coef_names), name="coefficient"))
        if f.coef_names[0] == "(Intercept)":
            response = self.family.link.inverse(new[:, 0])
            r_lo, r_hi = equal_tailed_interval(response, level)
            table.attrs["response_scale"] = {"center": float(np.median(response)), "lower": float(r_lo),
                                             "upper": float(r_hi)}
        return table

    def population_average(self, method: str | None = None, max_draws: int | None = None) -> pd.DataFrame:
        """Posterior of the population-average (marginal) coefficients gamma* (R&B 2002, section 10.4, eqs.
        10.14-10.19), one value per posterior draw (:meth:`population_average_draws`), summarised as the fixed
        effects: estimate (posterior mean), se (posterior SD), 95% interval, beside ``unit_specific`` (the
        posterior mean of gamma). ``attrs``: ``method`` (how gamma* was computed) and ``draws`` (how many)."""
        values, how = self._population_average(method, max_draws)
        lo, hi = equal_tailed_interval(values, LEVEL)
        table = pd.DataFrame({"estimate": values.mean(0), "se": values.std(0, ddof=1), "lower": lo, "upper": hi,
                              "unit_specific": self._flat("beta").mean(0)},
                             index=pd.Index(list(self.design.fixed_names), name=FIXED_EFFECTS_INDEX))
        table.attrs["method"], table.attrs["draws"] = how, len(values)
        return table

    def population_average_draws(self, method: str | None = None, max_draws: int | None = None) -> np.ndarray:
        """Draws (S, p) of gamma*, from each draw's gamma and T:

        - ``"closed_form"`` (random intercepts only, total variance tau = sum of the factors' tau_00): log link,
          the intercept plus tau / 2 (exact); probit, gamma / sqrt(1 + tau) (exact); logit,
          gamma / sqrt(1 + c^2 tau), c = 16 sqrt(3) / (15 pi) (Zeger, Liang & Albert 1988; approximate).
        - ``"integrate"`` (any link and structure): each row's marginal mean mu*_i = E_u[g^-1(eta_i + z_i'u)] by
          40-point Gauss-Hermite over z_i'u ~ N(0, sum_f z_fi' T_f z_fi), then the GLM fitted to these means by
          Fisher scoring (the estimator of ``GLMMFit.population_average(method='integrate')``, per draw).

        Default: the closed form where it is exact (log and probit links with random intercepts), else
        integration. ``max_draws`` keeps that many draws, evenly spaced over the chains (default: all)."""
        return self._population_average(method, max_draws)[0]

    def _population_average(self, method, max_draws) -> tuple[np.ndarray, str]:
        link = self.family.link.name
        slopes = [f.name for f in self.design.factors if list(f.coef_names) != ["(Intercept)"]]
        if method is None:
            method = "closed_form" if not slopes and link in ("log", "probit") else "integrate"
        if method not in ("closed_form", "integrate"):
            raise OptionError(f"method={method!r} is not an option.{closest_names(str(method), PA_METHODS)} Use "
                              "'closed_form' (random intercepts; log, probit, logit links) or 'integrate'.")
        beta = self._flat("beta")
        keep = _thin(len(beta), max_draws)
        beta = beta[keep]
        covariances = {f.name: self.covariance_draws(f.name)[keep] for f in self.design.factors}
        if method == "integrate":
            shape = self._flat("shape")[keep] if "shape" in self.posterior["posterior"] else None
            values = _integrated_coefficients(self.design, self.outcome, self.family, beta, covariances, shape)
            return values, ("integrated: per draw, the GLM fitted to each row's marginal mean "
                            "E_u[g^-1(x'gamma + z'u)] (40-point Gauss-Hermite)")
        if slopes:
            raise OptionError("Population-average coefficients have a closed form only with random intercepts; "
                              f"this model has random slopes across {', '.join(slopes)}. Use method='integrate'.")
        if link not in ("log", "probit", "logit"):
            raise OptionError(f"No closed form for population-average coefficients with the {link} link; use "
                              "method='integrate'.")
        tau = sum(T[:, 0, 0] for T in covariances.values())
        if link == "log":
            if "(Intercept)" not in self.design.fixed_names:
                raise OptionError("The model has no intercept to carry the log-link shift tau / 2; use "
                                  "method='integrate'.")
            values = beta.copy()
            values[:, list(self.design.fixed_names).index("(Intercept)")] += tau / 2
            return values, "exact: intercept + tau / 2, per draw"
        if link == "probit":
            return beta / np.sqrt(1 + tau)[:, None], "exact: gamma / sqrt(1 + tau), per draw"
        c2 = (16 * np.sqrt(3) / (15 * np.pi)) ** 2
        return beta / np.sqrt(1 + c2 * tau)[:, None], "approximate: gamma / sqrt(1 + c^2 tau), per draw"

    def posterior_predictive(self, seed: int | None = None) -> np.ndarray:
        """Replicated outcomes, one row per posterior draw (S, n), from the family with each draw's eta."""
        eta = self.linear_predictor_draws()
        rng = np.random.default_rng([self.sampler["seed"], 3] if seed is None else seed)
        mu = self.family.link.inverse(eta)
        if self.family.name == "poisson":
            return rng.poisson(mu)
        if self.family.name == "negative_binomial":
            k = self._flat("shape")[:, None]
            return rng.poisson(rng.gamma(k, mu / k))
        return rng.binomial(self.outcome.size.astype(np.int64), mu)

    def linear_predictor_draws(self) -> np.ndarray:
        """Draws (S, n) of eta_i = x_i'gamma + offset_i + sum_f z_fi'u_f[j(i)] for the fitted rows."""
        eta = self._flat("beta") @ self.design.X.T + self.outcome.offset
        for f in self.design.factors:
            eta += np.einsum("iq,siq->si", f.Z, self._flat(f"u_{f.name}")[:, f.codes])
        return eta

    # --- text ------------------------------------------------------------------------------------------
    def report(self) -> str:
        """Plain-text report: model, priors, sampler, diagnostics in words, fixed effects, variance components."""
        s, d = self.sampler, self.diagnostics
        how = ", ".join(f"{k}: {v} (Laplace reliability {s['reliability'][k]:.2f})"
                        for k, v in s["parameterization"].items())
        lines = [self.design.summary(),
                 f"HGLM {self.family.name} ({self.family.link.name} link), full Bayes (exact posterior: every "
                 "group effect sampled)",
                 f"Level 1: {self.family.equation()}", "",
                 f"Sampler: {s['sampler']} NUTS on the {s['log_density']}, {s['chains']} chains x {s['draws']} draws "
                 f"({s['tune']} tuning), target_accept {s['target_accept']}, seed {s['seed']}; compile "
                 f"{s['compile_seconds']} s, sampling {s['sampling_seconds']} s",
                 f"Group effects: {how}", "Priors (link scale):"]
        lines += [f"  {k}: {v}" for k, v in self.priors.items()]
        lines.append(f"Diagnostics: {d['divergences']} divergences; max R-hat {d['max_rhat']:.3f}; "
                     f"min ESS bulk {d['min_ess_bulk']:.0f}, tail {d['min_ess_tail']:.0f}; "
                     f"min BFMI {d['min_bfmi']:.2f}")
        lines += [f"  PROBLEM: {m}" for m in self.messages] or ["  no problems detected"]
        lines += ["", "Fixed effects (posterior mean, SD, 95% interval; link scale):",
                  self.fixed_effects.round(4).to_string(), "",
                  "Variance components (link scale):", self.variance_components.round(4).to_string(index=False)]
        if not self.family_parameters.empty:
            lines += ["", "Family parameters:", self.family_parameters.round(4).to_string()]
        if self.family.link.name in LATENT_LEVEL1_VARIANCE:
            for f in self.design.factors:
                icc = self.icc(f.name)
                lines.append(f"Latent-scale ICC ({f.name}): {icc['estimate']:.3f} "
                             f"[{icc['lower']:.3f}, {icc['upper']:.3f}]")
        return "\n".join(lines)

    summary = report

    def __repr__(self) -> str:
        d = self.diagnostics
        return (f"<BayesGLMMFit {self.family.name}/{self.family.link.name}: {self.sampler['chains']}x"
                f"{self.sampler['draws']} draws, {d['divergences']} divergences, max R-hat {d['max_rhat']:.3f}>")

    def _factor(self, factor: str | None):
        return self.design.factor(factor) if factor is not None else self.design.factors[0]


def _summary(values: np.ndarray) -> dict:
    flat = np.asarray(values, dtype=float).reshape(-1)
    lo, hi = equal_tailed_interval(flat, LEVEL)
    return {"estimate": float(flat.mean()), "se": float(flat.std(ddof=1)), "lower": float(lo), "upper": float(hi)}


def _thin(n_draws: int, max_draws: int | None) -> np.ndarray:
    if max_draws is None or max_draws >= n_draws:
        return np.arange(n_draws)
    if isinstance(max_draws, bool) or not isinstance(max_draws, (int, np.integer)) or max_draws < 2:
        raise OptionError(f"max_draws={max_draws!r}: give a whole number of draws >= 2, or None for all.")
    return np.unique(np.linspace(0, n_draws - 1, int(max_draws)).round().astype(int))


def _integrated_coefficients(design, outcome, family, beta, covariances, shape) -> np.ndarray:
    """Per draw s, gamma*_s of the GLM fitted to the marginal means mu*_si = E[g^-1(eta_si + s_si t)], t ~ N(0, 1),
    s_si^2 = sum_f z_fi' T_fs z_fi (Gauss-Hermite), by Fisher scoring from gamma_s; the negative binomial's
    working variance mu + mu^2 / k uses each draw's k."""
    nodes, weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    X, offset, size = design.X, outcome.offset, outcome.size
    out = np.empty_like(beta)
    for start in range(0, len(beta), DRAWS_PER_BLOCK):
        block = slice(start, start + DRAWS_PER_BLOCK)
        gamma = beta[block].copy()
        variance = sum(np.einsum("ia,sab,ib->si", f.Z, covariances[f.name][block], f.Z) for f in design.factors)
        spread = np.sqrt(np.maximum(variance, 0.0))
        eta = gamma @ X.T + offset
        means = family.mean(eta[..., None] + np.sqrt(2.0) * spread[..., None] * nodes) @ weights / np.sqrt(np.pi)
        target = size * means
        k = None if shape is None else shape[block][:, None]
        for _ in range(100):
            mu, d = family.link.inverse_and_derivative(gamma @ X.T + offset)
            v = np.maximum(family.variance(mu) if k is None else mu + mu * mu / k, np.finfo(float).tiny)
            w, score = size * d * d / v, (target - size * mu) * d / v
            step = np.linalg.solve(np.einsum("ip,si,iq->spq", X, w, X), (score @ X)[..., None])[..., 0]
            gamma += step
            if np.max(np.abs(step)) < 1e-12 * (1.0 + np.max(np.abs(gamma))):
                break
        else:
            raise OptionError("The population-average GLM did not settle in 100 scoring steps for some draws; the "
                              "marginal means are too close to 0 or 1 for the link. Report the unit-specific "
                              "coefficients instead.")
        out[block] = gamma
    return out


class GLMMPriorPredictive:
    """Prior predictive draws of a hierarchical GLM (:func:`bayeshlm.bayes.glmm.prior_predictive`): ``mu``
    (draws, rows), each row's probability (binomial, Bernoulli) or expected count (counts, with the offset);
    ``y`` (draws, rows), simulated outcomes; ``pooled`` (draws,), the pooled proportion sum(y) / sum(trials) or
    the mean count of each simulated data set; ``priors`` as printed with a fit."""

    QUANTILES = (0.025, 0.25, 0.5, 0.75, 0.975)

    def __init__(self, draws: GLMMPriorDraws):
        """The summary of the engine's prior predictive ``draws``."""
        outcome, y = draws.outcome, draws.y
        self.family, self.mu, self.y, self.priors, self.seed = outcome.family, draws.mu, y, draws.priors, draws.seed
        counts = outcome.family.counts
        self.pooled = y.mean(1) if counts else y.sum(1) / outcome.size.sum()
        self.observed = float(outcome.y.mean() if counts else outcome.y.sum() / outcome.size.sum())
        self.quantity = "mean count" if counts else "pooled proportion"

    def summary(self) -> pd.DataFrame:
        """Prior quantiles (2.5, 25, 50, 75, 97.5%) of the simulated pooled proportion or mean count, and of the
        rows' probabilities or expected counts mu, beside the observed value."""
        rows = {f"{self.quantity} of y": self.pooled, "mu (every row)": self.mu.ravel()}
        table = pd.DataFrame({f"q{100 * q:g}": [float(np.quantile(v, q)) for v in rows.values()]
                              for q in self.QUANTILES}, index=pd.Index(list(rows), name="quantity"))
        table["observed"] = [self.observed, np.nan]
        return table

    def __repr__(self) -> str:
        lo, hi = equal_tailed_interval(self.pooled, 0.95)
        return (f"<GLMMPriorPredictive {self.family.name}: {len(self.pooled)} draws; {self.quantity} 95% prior "
                f"interval [{lo:.3g}, {hi:.3g}], observed {self.observed:.3g}>")
