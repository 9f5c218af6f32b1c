"""``BayesFit``: the result of ``HLM.fit(method="bayes")``.

Point estimates are posterior means, ``se`` the posterior SD, intervals equal-tailed (2.5% and 97.5%
posterior quantiles at the default level 0.95), in the tables of :mod:`bayeshlm.results.contract`. Variance
components are summarised on the variance scale (posterior mean of τ_qq and σ², not the square of a mean SD).
Group coefficients are β_qj = Σ_s γ_qs W_sj + u_qj (R&B 2002, eq. 2.22 and 3.56): the fixed part includes
the level-2 predictors attached to coefficient q (:func:`bayeshlm.results.hlm_statistics.fixed_part`,
the convention the likelihood engine uses too).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..bayes.convergence import ess_bulk, per_entry, rhat
from ..bayes.priors import Prior
from ..bayes.samples import PosteriorSample
from ..design import Design
from ..errors import OptionError
from ..report.formatting import decimals, significant
from . import hlm_statistics as hlm
from .base import (
    FitResult,
    check_level,
    group_table,
    long_table,
    residual_row,
    variance_component_pairs,
    variance_components_frame,
)
from .contract import RESIDUAL_FACTOR, equal_tailed_interval
from .hlm_statistics import fixed_part


class BayesFit(FitResult):
    """A fully Bayesian fit: the posterior DataTree plus summaries in the common :class:`FitResult` shape.

    Attributes: ``posterior`` (ArviZ DataTree; group ``posterior`` holds ``beta`` (dim ``fixed``), ``sigma``,
    ``tau_<factor>`` (SDs), ``corr_<factor>`` (correlation matrix), ``corr_chol_<factor>`` (its sampled
    Cholesky factor), ``T_<factor>`` (covariance matrix draws) and ``u_<factor>`` (group effects, dims
    ``<factor>``, ``<factor>__coef``); with Student-t group effects also ``nu`` and the mixing weights
    ``w_<factor>``, and ``T_<factor>`` is then the t scale matrix), ``priors`` (parameter -> prior used),
    ``sampler`` (sampler, chains,
    seed, times, route and parameterisation per factor), ``diagnostics`` (divergences, max_rhat,
    min_ess_bulk, min_ess_tail, min_bfmi), ``messages`` (plain-English problems and what to do).
    """

    method = "bayes"
    group_estimate_name = "posterior mean"

    def __init__(self, sample: PosteriorSample):
        """The fit of the engine's posterior ``sample`` (:func:`bayeshlm.bayes.fit_bayes`)."""
        self.design = sample.design
        self.posterior = sample.posterior
        self.priors = sample.info.priors.as_dict()
        self.sampler = sample.sampler
        self.diagnostics = sample.diagnostics
        self.messages = sample.messages
        self.model_info = sample.info
        self._graph = sample.graph
        self._chol = sample.chol  # factor -> Cholesky factor L of T per draw, (chain, draw, q, q)
        # (design, OutcomeUnits, centring) of the standardised outcome the graph is written for, or None: user units
        self._sampled = sample.sampled

    # --- draws -----------------------------------------------------------------------------------
    def draws(self, name: str) -> xr.DataArray:
        """Posterior draws of one variable (dims chain, draw, ...)."""
        return self.posterior["posterior"][name]

    def pymc_model(self):
        """The ``pm.Model`` that was sampled: on the standardised outcome of :mod:`bayeshlm.bayes.units` for a
        fresh fit (``sampler["outcome_units"]``), in the user's units for a loaded one. Written on the first call
        when the compiled kernel sampled without it."""
        return self._graph()

    def prior_predictive(self, draws: int = 500, seed: int | None = None) -> xr.DataTree:
        """Parameters and outcomes simulated from the priors (see :mod:`bayeshlm.bayes.predictive`), in the
        user's units."""
        from ..bayes.predictive import prior_predictive

        if self._sampled is None:
            return prior_predictive(self.design, self.pymc_model(), draws, seed)
        design, units, centred_on = self._sampled
        tree = prior_predictive(design, self.pymc_model(), draws, seed)
        y = units.centre + units.scale * tree["prior_predictive"].to_dataset()
        return xr.DataTree.from_dict({"prior": units.draws(tree["prior"].to_dataset(), self.design, centred_on),
                                      "prior_predictive": y})

    # --- FitResult -------------------------------------------------------------------------------
    def _fixed_effects_table(self, level: float) -> pd.DataFrame:
        """Posterior mean (``estimate``), SD (``se``), equal-tailed interval, R-hat and bulk ESS of γ."""
        beta = self.draws("beta")
        values = beta.transpose("chain", "draw", "fixed").values.reshape(-1, self.design.n_fixed)
        table = pd.DataFrame(_stats(values, level), index=pd.Index(self.design.fixed_names, name="term"))
        ordered = beta.transpose("chain", "draw", ...).values
        table["r_hat"] = per_entry(rhat, ordered) if beta.sizes["chain"] > 1 else np.nan
        table["ess_bulk"] = per_entry(ess_bulk, ordered)
        return table

    @property
    def vcov(self) -> pd.DataFrame:
        """Posterior covariance of the fixed effects γ."""
        beta = self.draws("beta").transpose("chain", "draw", "fixed").values.reshape(-1, self.design.n_fixed)
        names = list(self.design.fixed_names)
        return pd.DataFrame(np.atleast_2d(np.cov(beta, rowvar=False)), index=names, columns=names)

    @property
    def tau(self) -> dict[str, pd.DataFrame]:
        """Posterior mean of each factor's covariance matrix T of random coefficients."""
        out = {}
        for f in self.design.factors:
            mean = self.draws(f"T_{f.name}").mean(("chain", "draw")).values
            out[f.name] = pd.DataFrame(mean, index=list(f.coef_names), columns=list(f.coef_names))
        return out

    @property
    def sigma2(self) -> float | None:
        """Posterior mean of the level-1 variance σ² (None for V-known models)."""
        if self.design.known_variance is not None:
            return None
        return float((self.draws("sigma") ** 2).mean())

    def _variance_components_table(self, level: float) -> pd.DataFrame:
        """One row per variance/covariance: posterior mean, SD and equal-tailed interval (variance scale); the
        level-1 variance, then any level-1 error parameters (one row each, ``term2`` = ``term``)."""
        rows = []
        for f in self.design.factors:
            T = self.draws(f"T_{f.name}").values
            for b, a in variance_component_pairs(f):
                rows.append({"factor": f.name, "term": f.coef_names[b], "term2": f.coef_names[a],
                             **_stats(T[..., a, b].reshape(-1), level)})
        if self.design.known_variance is None:
            rows.append(residual_row(**_stats((self.draws("sigma").values ** 2).reshape(-1), level)))
        for term, draws in self._level1_parameter_draws():
            rows.append({"factor": RESIDUAL_FACTOR, "term": term, "term2": term, **_stats(draws.reshape(-1), level)})
        return variance_components_frame(rows)

    def _level1_parameter_draws(self) -> list[tuple[str, np.ndarray]]:
        """(name, draws) of the level-1 error parameters: AR(1) phi, per-stratum variances, log-linear alphas."""
        errors, out = self.error_structure, []
        if errors.correlation is not None:
            out.append((f"phi ({errors.correlation.label})", self.draws("phi").values))
        strata = errors.variance.strata(self.design.residual)
        if strata is not None:  # heterogeneous level-1 variance (as StructuredFit)
            sigma = self.draws("sigma_strata")
            out += [(f"sigma2 {label}", sigma.sel(stratum=label).values ** 2) for label in sigma["stratum"].values]
            if strata.terms:  # a log-linear model: its alphas
                alpha = self.draws("alpha")
                out += [(str(term), alpha.sel(variance_term=term).values) for term in alpha["variance_term"].values]
        return out

    def reliability(self, factor: str | None = None) -> pd.DataFrame:
        """Posterior mean of each group's reliability lambda_qj = tau_qq / (tau_qq + sigma^2 [(Z_j'Z_j)^-1]_qq)
        (R&B 2002, eq. 3.42; eq. 8.8 for an enclosing factor of a nested model, see
        :func:`~bayeshlm.results.hlm_statistics.outer_reliability`), averaged over the draws rather than plugged in."""
        name, levels, _, per_group = self._reliability_draws(factor)
        return pd.DataFrame(per_group, index=levels, columns=list(self.design.factor(name).coef_names))

    def reliability_summary(self, factor: str | None = None) -> pd.DataFrame:
        """Posterior of the average reliability over groups (R&B eq. 3.59): mean, SD and 95% interval."""
        name, _, average, _ = self._reliability_draws(factor)
        lo, hi = equal_tailed_interval(average, 0.95)
        return pd.DataFrame({"reliability": average.mean(0), "sd": average.std(0, ddof=1), "lower": lo,
                             "upper": hi}, index=pd.Index(self.design.factor(name).coef_names, name="coefficient"))

    def icc(self, factor: str | None = None) -> float:
        self._refuse_if_student_t("The intraclass correlation")
        return super().icc(factor)

    def variance_explained(self, base: FitResult) -> pd.DataFrame:
        self._refuse_if_student_t("The proportion of variance explained")
        return super().variance_explained(base)

    def _reliability_draws(self, factor: str | None):
        """The factor's name, the labels of the groups with a reliability, its per-draw average over those
        groups (S, q) and its per-group posterior mean (J', q)."""
        self._refuse_if_student_t("The reliability")
        name = self.factor_name(factor)
        f = self.design.factor(name)
        sigma2 = None if self.design.known_variance is not None else (self.draws("sigma").values ** 2).reshape(-1)

        def covariance_draws(factor_name: str) -> np.ndarray:
            T = self.draws(f"T_{factor_name}").values
            return T.reshape(-1, *T.shape[-2:])

        if hlm.check_per_group_statistic(self.design, name, "The reliability") == "outer":
            chain = [g.name for g in self.design.chain]
            taus = [covariance_draws(n) for n in chain[:chain.index(name) + 1]]
            usable, lam = hlm.outer_reliability(self.design, name, taus, sigma2)
            return name, f.levels[usable], lam.mean(axis=1), lam.mean(axis=0)
        ols = hlm.group_ols(self.design, self.gamma, 1.0, name)
        tau_diag = np.diagonal(covariance_draws(name), axis1=-2, axis2=-1)
        average, per_group = hlm.reliability_draws(tau_diag, sigma2, ols)
        return name, f.levels[ols.usable], average, per_group

    def _group_table(self, kind: str, factor: str, level: float) -> pd.DataFrame:
        """Posterior mean, SD and equal-tailed interval of each group's coefficients β_qj = Σ_s γ_qs W_sj + u_qj
        (``group_effects``) or of its random effects u_qj (``random_effects``)."""
        draws = self.group_coefficient_draws(factor) if kind == "group_effects" else self.draws(f"u_{factor}")
        values = draws.transpose("chain", "draw", factor, f"{factor}__coef").values
        values = values.reshape(-1, *values.shape[2:])
        lower, upper = equal_tailed_interval(values, level)
        return group_table(self.design.factor(factor), values.mean(0), values.std(0, ddof=1), lower, upper)

    def group_coefficient_draws(self, factor: str | None = None) -> xr.DataArray:
        """Posterior draws of every group's coefficients Σ_s γ_qs W_sj + u_qj, dims (chain, draw, factor,
        factor__coef)."""
        name = self.factor_name(factor)
        f = self.design.factor(name)
        unit = np.eye(self.design.n_fixed)
        basis = np.stack([fixed_part(self.design, unit[c], f) for c in range(self.design.n_fixed)])  # (p, J, q)
        beta = self.draws("beta").transpose("chain", "draw", "fixed").values
        u = self.draws(f"u_{name}")
        return u + xr.DataArray(np.einsum("cdp,pjq->cdjq", beta, basis), dims=u.dims, coords=u.coords)

    def new_group_draws(self, factor: str | None = None, seed: int | None = None) -> xr.DataArray:
        """Posterior predictive draws of a new group's coefficients γ_q + u_new, u_new ~ N(0, T) per draw
        (Student-t effects: u_new = L z / sqrt(w), w ~ Gamma(ν/2, rate ν/2), a t_ν(0, T) draw):
        a new group whose level-2 predictors are all zero (γ_q is the fixed effect named like coefficient q).

        Their quantiles are the Bayesian plausible-value interval (R&B 2002, eq. 4.6 with T's uncertainty).
        Seeded from the fit's seed unless ``seed`` is given.
        """
        name = self.factor_name(factor)
        f = self.design.factor(name)
        T = self.draws(f"T_{name}")
        rng = np.random.default_rng([self.sampler["seed"], 2] if seed is None else seed)
        L = self._chol[name]
        z = rng.standard_normal(L.shape[:-1])
        u = np.einsum("cdij,cdj->cdi", L, z)
        if self._student_t:
            nu = np.broadcast_to(self.draws("nu").values, L.shape[:2])
            u = u / np.sqrt(rng.gamma(nu / 2.0, 2.0 / nu))[..., None]
        coef_dim = f"{name}__coef"
        draws = xr.DataArray(u, dims=("chain", "draw", coef_dim),
                             coords={"chain": T.chain, "draw": T.draw, coef_dim: list(f.coef_names)})
        return draws + self._fixed_part(name)

    def plausible_values(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Posterior-predictive interval of a new group's coefficients at level-2 predictors of zero: the
        Bayesian plausible-value range (R&B 2002, eq. 4.4, with the uncertainty about gamma and T included).
        Columns as for likelihood fits: center (posterior-predictive mean), sd, lower, upper."""
        draws = self.new_group_draws(factor)
        coef_dim = draws.dims[-1]
        lower, upper = equal_tailed_interval(draws.transpose("chain", "draw", coef_dim).values.reshape(
            -1, draws.sizes[coef_dim]), level)
        return pd.DataFrame({"center": draws.mean(("chain", "draw")).values,
                             "sd": draws.std(("chain", "draw")).values, "lower": lower, "upper": upper},
                            index=pd.Index(draws[coef_dim].values, name="coefficient"))

    def predicted_group_coefficients(self, factor: str | None = None, level: float = 0.95) -> pd.DataFrame:
        """Posterior mean of each group's predicted coefficient γ_q'W_j and the equal-tailed interval of
        γ_q'W_j + u_new, u_new drawn from N(0, T) per draw (the uncertainty about γ and T widens the range;
        see :meth:`FitResult.predicted_group_coefficients`)."""
        check_level(level)
        name = self.factor_name(factor)
        f = self.design.factor(name)
        fixed = self.group_coefficient_draws(name) - self.draws(f"u_{name}")
        new_u = self.new_group_draws(name) - self._fixed_part(name)
        center = fixed.mean(("chain", "draw")).transpose(name, f"{name}__coef").values
        spread = (fixed + new_u).transpose("chain", "draw", name, f"{name}__coef").values
        lower, upper = equal_tailed_interval(spread.reshape(-1, *spread.shape[2:]), level)
        return long_table(f, {"center": center, "lower": lower, "upper": upper})

    # --- prediction and checks (:mod:`bayeshlm.results.prediction`, :mod:`.predictive_data`) ---------
    def predict(self, newdata: pd.DataFrame | None = None, groups: str = "conditional", kind: str = "mean",
                level: float = 0.95, random_seed: int | None = None):
        """Predictions for ``newdata`` (default: the fitted rows) from every posterior draw: ``kind="mean"`` a table
        of the linear predictor's posterior (estimate, se, lower, upper, new_groups); ``"interval"`` the same for a
        new observation (adds a new group's effect from N(0, T) and the level-1 error); ``"draws"`` those
        posterior predictive draws as a DataArray (chain, draw, obs). ``groups`` as for likelihood fits."""
        from .prediction import predict_bayes, prediction_rows

        if self._student_t and kind != "mean":
            rows = prediction_rows(self.design, newdata)
            if groups != "conditional" or any((rows.codes[f.name] < 0).any() for f in self.design.factors):
                raise OptionError(f"predict(kind={kind!r}) for a new group draws its effect from N(0, T), but this "
                                  "fit's group effects are Student-t: use kind='mean', or predict for groups of the "
                                  "fit with groups='conditional'.")
        return predict_bayes(self, newdata, groups, kind, level, random_seed)

    def posterior_predictive(self, random_seed: int | None = None) -> xr.DataTree:
        """Add replicated data (group ``posterior_predictive``) and ``observed_data`` to ``posterior``, for
        ArviZ's predictive checks (``az.plot_ppc_dist(fit.posterior_predictive())``)."""
        from ..bayes.predictive_data import posterior_predictive

        return posterior_predictive(self, random_seed)

    def log_likelihood(self, kind: str = "conditional", factor: str | None = None) -> xr.DataTree:
        """Add the pointwise log-likelihood (group ``log_likelihood``) to ``posterior`` for ``az.loo`` /
        ``az.compare``: per observation (``"conditional"``) or per group with its effects integrated out
        (``"marginal"``, leave-one-group-out; see :mod:`bayeshlm.bayes.predictive_data`)."""
        from ..bayes.predictive_data import log_likelihood

        if self._student_t and kind == "marginal":
            raise OptionError("log_likelihood(kind='marginal') integrates Gaussian group effects out, but this fit's "
                              "group effects are Student-t: use kind='conditional'.")
        return log_likelihood(self, kind, factor)

    # --- text ------------------------------------------------------------------------------------
    def summary(self) -> str:
        """Plain-text report: model, sampler, priors, diagnostics, fixed effects, variance components."""
        s = self.sampler
        lines = [self.design.summary(), "",
                 f"Full Bayes: {s['sampler']} NUTS, {s['chains']} chains x {s['draws']} draws "
                 f"({s['tune']} tuning), seed {s['seed']}; route {s['route']} "
                 f"({', '.join(f'{k}: {v}' for k, v in s['parameterization'].items())})",
                 "Priors:"]
        lines += [f"  {k}: {v}" for k, v in self.priors.items()]
        d = self.diagnostics
        lines.append(f"Diagnostics: {d['divergences']} divergences; max R-hat {d['max_rhat']:.3f}; "
                     f"min ESS bulk {d['min_ess_bulk']:.0f}, tail {d['min_ess_tail']:.0f}; "
                     f"min BFMI {d['min_bfmi']:.2f}")
        lines += [f"  PROBLEM: {m}" for m in self.messages] or ["  no problems detected"]
        lines += ["", "Fixed effects (posterior mean, SD, 95% interval):", self.fixed_effects.to_string(), "",
                  "Variance components:", self.variance_components.to_string(index=False)]
        return "\n".join(lines)

    # --- state (what :mod:`bayeshlm.results.storage` saves) ------------------------------------------
    def to_state(self) -> tuple[dict, dict]:
        """(record, datasets) from which :meth:`from_state` rebuilds this fit with its design: the priors, sampler
        record, diagnostics and messages (JSON-ready); the posterior DataTree as ``bayes`` and the per-draw
        Cholesky factors of each T (``L_<factor>``) as ``cholesky``."""
        p = self.model_info.priors
        priors = {"fixed": {k: _prior_to_dict(v) for k, v in p.fixed.items()}, "sigma": _prior_to_dict(p.sigma),
                  "tau": {k: _prior_to_dict(v) for k, v in p.tau.items()},
                  "corr": {k: v.eta for k, v in p.corr.items()}, "kind": p.kind,
                  "nu": _prior_to_dict(p.nu) if isinstance(p.nu, Prior) else p.nu}
        record = {"priors": priors, "sampler": self.sampler, "diagnostics": self.diagnostics,
                  "messages": self.messages}
        chol = {f"L_{name}": (("chain", "draw", f"{name}__row", f"{name}__col"), L) for name, L in self._chol.items()}
        return record, {"bayes": self.posterior, "cholesky": xr.Dataset(chol)}

    @staticmethod
    def from_state(design: Design, record: dict, datasets: dict) -> BayesFit:
        """The fit of ``design`` from its record and datasets (:meth:`to_state`): the PyMC model is rebuilt from
        the design and priors, in the user's units (for ``pymc_model()`` and prior predictive checks), without
        sampling."""
        from ..bayes.plan import PlannedGraph, plan_model
        from ..bayes.priors import LKJ, PriorSet

        p = record["priors"]
        priors = PriorSet(fixed={k: _prior_from_dict(v) for k, v in p["fixed"].items()},
                          sigma=_prior_from_dict(p["sigma"]), tau={k: _prior_from_dict(v) for k, v in p["tau"].items()},
                          corr={k: LKJ(eta) for k, eta in p["corr"].items()}, kind=p["kind"],
                          nu=_prior_from_dict(p["nu"]) if isinstance(p.get("nu"), dict) else p.get("nu"))
        sampler = record["sampler"]
        route = sampler["route"]
        parameterization = sampler["parameterization"] if route == "sampled" else None
        info = plan_model(design, priors, route, parameterization)
        cholesky = datasets["cholesky"]
        chol = {name[2:]: cholesky[name].values for name in cholesky.data_vars}
        return BayesFit(PosteriorSample(design, datasets["bayes"], info, sampler, record["diagnostics"],
                                        record["messages"], PlannedGraph(design, info), chol))

    def report_sections(self) -> list[tuple[str, str]]:
        """How the posterior was drawn, the priors, and the convergence diagnostics."""
        priors = "\n".join(f"{name}: {prior}" for name, prior in self.priors.items()) or "not recorded"
        return [("Sampling", self._sampling_text()), ("Priors", priors), ("Diagnostics", self._diagnostics_text())]

    def describe_estimates(self) -> str:
        return "Numbers are posterior means; ranges are 95% posterior intervals."

    def _sampling_text(self) -> str:
        """Sampler, chains x draws after tuning, seed, target acceptance, route, times."""
        s = self.sampler or {}
        if not s:
            return "not recorded"
        kernel = f" ({s['log_density']})" if s.get("log_density") else ""
        lines = [f"sampler: {s.get('sampler', '?')} NUTS{kernel}",
                 f"chains: {s.get('chains')}; draws per chain: {s.get('draws')} after {s.get('tune')} tuning draws",
                 f"seed: {s.get('seed')}; target acceptance: {s.get('target_accept')}"]
        if s.get("parameterization"):
            routes = ", ".join(f"{k}: {v}" for k, v in s["parameterization"].items())
            lines.append(f"random effects: {routes} (route: {s.get('route', '?')})")
        if s.get("note"):
            lines.append(f"note: {s['note']}")
        timing = [f"{label} {significant(s[key])} s" for label, key in (("compile", "compile_seconds"),
                                                                        ("sampling", "sampling_seconds")) if key in s]
        if timing:
            lines.append("time: " + ", ".join(timing))
        return "\n".join(lines)

    def _diagnostics_text(self) -> str:
        d = self.diagnostics or {}
        if not d:
            return "no diagnostics recorded"
        rate = d.get("divergence_rate", float("nan"))
        return "\n".join([
            f"divergences: {d.get('divergences')} of {d.get('draws')} draws ({significant(100 * rate)}%)",
            f"max R-hat: {decimals(d.get('max_rhat'), 3)} (want < 1.01; needs 2 or more chains)",
            f"min ESS: bulk {decimals(d.get('min_ess_bulk'), 0)}, tail {decimals(d.get('min_ess_tail'), 0)} "
            "(want >= 100 per chain)",
            f"min energy BFMI: {decimals(d.get('min_bfmi'), 2)} (want > 0.3)"])

    def __repr__(self) -> str:
        d = self.diagnostics
        return (f"<BayesFit {self.design.spec.formula()!r}: {self.sampler['chains']}x{self.sampler['draws']} "
                f"draws, {d['divergences']} divergences, max R-hat {d['max_rhat']:.3f}>")

    # --- helpers ---------------------------------------------------------------------------------
    @property
    def _student_t(self) -> bool:
        """True for Student-t group effects (``random_effects="student_t"``)."""
        return self.model_info.priors.student_t

    def _refuse_if_student_t(self, what: str) -> None:
        """Variance ratios (ICC, reliability, variance explained) read T as the group effects' covariance; with
        Student-t effects T is their scale (covariance T nu / (nu - 2), none for nu <= 2), so they are refused."""
        if self._student_t:
            raise OptionError(f"{what} is a ratio of variances, but this fit's group effects are Student-t: T_<factor> "
                              "is their scale, not their variance (covariance T nu / (nu - 2) for nu > 2). Fit "
                              "Gaussian group effects for HLM's variance-ratio statistics.")

    def _fixed_part(self, name: str) -> xr.DataArray:
        """Draws of γ_q, the fixed effect named like each random coefficient of ``name`` (else 0)."""
        f = self.design.factor(name)
        beta = self.draws("beta")
        coef_dim = f"{name}__coef"
        parts = [beta.isel(fixed=self.design.fixed_names.index(c)) if c in self.design.fixed_names
                 else xr.zeros_like(beta.isel(fixed=0)) for c in f.coef_names]
        return xr.concat(parts, dim=coef_dim, coords="minimal", compat="override").drop_vars(
            "fixed", errors="ignore").assign_coords({coef_dim: list(f.coef_names)})



def _prior_to_dict(prior) -> dict | None:
    if prior is None:
        return None
    return {"dist": prior.dist, "on": prior.on, "params": {k: v.tolist() for k, v in prior.params.items()}}


def _prior_from_dict(d: dict | None):
    return None if d is None else Prior(d["dist"], on=d["on"], **d["params"])


def _stats(draws: np.ndarray, level: float) -> dict:
    """Posterior mean, SD and equal-tailed ``level`` interval over the first axis of ``draws`` (flattened draws)."""
    lower, upper = equal_tailed_interval(draws, level)
    return {"estimate": draws.mean(0), "se": draws.std(0, ddof=1), "lower": lower, "upper": upper}
