"""Meta-analytic summaries of a fully Bayesian univariate meta-analysis (``bh.meta(..., method="bayes")``).

The posterior comes from the HLM engine (``HLM.fit(method="bayes")``: the study effects integrated out, then drawn
from their exact conditional posterior). This module turns the draws into the quantities a meta-analysis reports,
each computed per draw so that its posterior carries the uncertainty about tau^2 (R&B 2002, ch. 13):

    I^2 = 100 tau^2 / (tau^2 + s^2),   H^2 = (tau^2 + s^2) / s^2     (s^2 the typical sampling variance,
                                                                      Higgins & Thompson 2002, as the REML fit)
    delta_j = x_j'gamma + u_j                                         (true effect of study j)
    delta_new = x'gamma + tau z,  z ~ N(0, 1)                         (posterior predictive for a new study)

The posterior-predictive interval of delta_new is the Bayesian prediction interval (Higgins, Thompson &
Spiegelhalter 2009, JRSS A 172(1)); unlike the REML one it does not plug in tau^2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import OptionError, closest_names
from ..results.contract import equal_tailed_interval

LEVEL = 0.95  # of the posterior intervals in the tables


class MetaBayesFit:
    """A univariate meta-analysis fitted by full Bayes (see :func:`~bayeshlm.meta` with ``method="bayes"``).

    ``bayes_fit`` (the engine's :class:`~bayeshlm.results.BayesFit`: posterior DataTree, priors, sampler, diagnostics),
    ``reml`` (the REML :class:`~bayeshlm.MetaFit` of the same model), ``fixed_effects``, ``heterogeneity``
    (posterior of tau^2, tau, I^2, H^2), ``prediction()``, ``study_effects``, ``comparison()``, ``messages``
    (sampling problems), ``notes`` (how the posterior relates to a boundary REML fit).
    Point estimates are posterior means, ``sd`` posterior SDs, intervals equal-tailed 95%.
    """

    method = "bayes"

    def __init__(self, reml, bayes_fit):
        self.reml = reml
        self.bayes_fit = bayes_fit
        self.model = reml.model
        self.design = reml.design
        self.k, self.p = reml.k, reml.p
        self._factor = self.design.factors[0]
        self._beta = bayes_fit.draws("beta").transpose("chain", "draw", "fixed").values.reshape(-1, self.p)
        self._tau2 = bayes_fit.draws(f"T_{self._factor.name}").values[..., 0, 0].reshape(-1)

    @property
    def posterior(self):
        return self.bayes_fit.posterior

    @property
    def diagnostics(self) -> dict:
        return self.bayes_fit.diagnostics

    @property
    def messages(self) -> list[str]:
        return self.bayes_fit.messages

    @property
    def notes(self) -> list[str]:
        """Plain-words notes on how the posterior relates to the REML fit (the boundary case of eight schools)."""
        if not self.reml.boundary:
            return []
        t2 = self.heterogeneity.loc["tau2"]
        return [f"REML estimates tau^2 = 0, the boundary of its range: the observed effects vary no more than their "
                f"sampling variances explain ({self.reml.q_test}), so the REML study effects all equal the pooled "
                "estimate. The posterior does not set tau^2 to 0: it averages over the values the data allow "
                f"(median {t2['median']:.4g}, 95% interval {t2['eti_lower']:.4g} to {t2['eti_upper']:.4g}), so the "
                "study effects are shrunk towards the pooled mean, not onto it, and gamma's interval is wider."]

    @property
    def fixed_effects(self) -> pd.DataFrame:
        """Posterior mean, SD, median, 95% interval and P(gamma <= 0 | d) of each coefficient, with R-hat and ESS."""
        table = posterior_table(self._beta, list(self.design.fixed_names), "term")
        table["p_below_zero"] = (self._beta <= 0).mean(0)
        engine = self.bayes_fit.fixed_effects
        table["r_hat"], table["ess_bulk"] = engine["r_hat"].to_numpy(), engine["ess_bulk"].to_numpy()
        return table

    @property
    def heterogeneity(self) -> pd.DataFrame:
        """Posterior of tau^2, tau, I^2 (percent) and H^2, each computed draw by draw (module docstring)."""
        s2 = self.reml.typical_variance
        t2 = self._tau2
        values = np.stack([t2, np.sqrt(t2), 100 * t2 / (t2 + s2), (t2 + s2) / s2], axis=-1)
        return posterior_table(values, ["tau2", "tau", "I2", "H2"], "parameter")

    def prediction(self, moderators: dict[str, float] | None = None, level: float = 0.95,
                   seed: int | None = None) -> pd.Series:
        """Posterior mean of x'gamma with its credible interval (``ci_*``), and the posterior-predictive interval
        (``pi_*``) of a new study's true effect x'gamma + tau z. ``moderators`` as for the REML fit's
        ``prediction()``; the draws of z are seeded from the fit's seed unless ``seed`` is given."""
        names = list(self.design.fixed_names)
        given = dict(moderators or {})
        unknown = [n for n in given if n not in names or n == "(Intercept)"]
        if unknown:
            raise OptionError(f"moderators: {unknown[0]!r} is not a moderator of this model."
                              f"{closest_names(unknown[0], names)} Moderators: {names}.")
        missing = [n for n in names if n != "(Intercept)" and n not in given]
        if missing:
            raise OptionError(f"moderators: give a value for {missing} (e.g. prediction({{{missing[0]!r}: 0}})).")
        x = np.array([1.0 if n == "(Intercept)" else float(given[n]) for n in names])
        mean = self._beta @ x
        rng = np.random.default_rng([self.bayes_fit.sampler["seed"], 3] if seed is None else seed)
        new = mean + np.sqrt(self._tau2) * rng.standard_normal(mean.shape)
        (ci_lo, ci_hi), (pi_lo, pi_hi) = equal_tailed_interval(mean, level), equal_tailed_interval(new, level)
        return pd.Series({"estimate": mean.mean(), "sd": mean.std(ddof=1), "ci_lower": ci_lo, "ci_upper": ci_hi,
                          "pi_lower": pi_lo, "pi_upper": pi_hi})

    @property
    def study_effects(self) -> pd.DataFrame:
        """Per study (data row order): observed effect and SE, and the posterior mean, SD and 95% interval of the
        true effect delta_j = x_j'gamma + u_j (R&B Table 13.1 panel (b); the REML fit's ``eb`` is panel (d))."""
        f = self._factor
        u = self.bayes_fit.draws(f"u_{f.name}").values[..., 0].reshape(len(self._beta), -1)
        delta = self._beta @ self.design.X.T + u[:, f.codes]
        lo, hi = equal_tailed_interval(delta, LEVEL)
        return pd.DataFrame({"effect": self.design.y, "se": np.sqrt(self.design.known_variance),
                             "mean": delta.mean(0), "sd": delta.std(0, ddof=1), "eti_lower": lo, "eti_upper": hi},
                            index=self.reml.study_effects.index)

    def forest_rows(self) -> tuple[pd.DataFrame, str, float, float]:
        """What :func:`bayeshlm.plots.forest` draws, in the columns of ``MetaFit.forest_rows``: the posterior mean
        and 95% interval of each true effect as eb / eb_lower / eb_upper, the observed effects' 95% CIs, the
        posterior mean of x_j'gamma as fitted; the label, and the posterior means of tau^2 and I^2."""
        table = self.study_effects.rename(columns={"mean": "eb", "eti_lower": "eb_lower", "eti_upper": "eb_upper"})
        z = stats.norm.ppf(0.975)
        table["ci_lower"], table["ci_upper"] = table["effect"] - z * table["se"], table["effect"] + z * table["se"]
        table["fitted"] = self.design.X @ self.fixed_effects["mean"].to_numpy()
        posterior = self.heterogeneity["mean"]
        return table, "posterior mean of the true effect, 95% interval", posterior["tau2"], posterior["I2"]

    def comparison(self) -> pd.DataFrame:
        """REML beside the posterior for each coefficient, tau^2 and I^2. ``shift_in_sd`` = (posterior mean - REML)
        / posterior SD; tau^2's posterior is right-skewed, so its mean exceeds the REML estimate (a mode)."""
        fe = self.fixed_effects
        reml_fe = self.reml.fixed_effects
        het = self.heterogeneity.loc[["tau2", "I2"]]
        table = pd.concat([fe[het.columns], het])
        table.insert(0, "reml_se", [*reml_fe["se"], self.reml.se_tau2, np.nan])
        table.insert(0, "reml", [*reml_fe["estimate"], self.reml.tau2, self.reml.i2])
        table["shift_in_sd"] = (table["mean"] - table["reml"]) / table["sd"]
        table.index.name = "parameter"
        return table

    def summary(self) -> str:
        s, d = self.bayes_fit.sampler, self.diagnostics
        het = self.heterogeneity
        fmt = {"float_format": lambda x: f"{x:.4f}"}
        lines = [f"{'Mixed' if self.p > 1 else 'Random'}-effects meta-analysis (full Bayes), k = {self.k} studies",
                 f"{s['sampler']} NUTS, {s['chains']} chains x {s['draws']} draws, seed {s['seed']}; priors:"]
        lines += [f"  {k}: {v}" for k, v in self.bayes_fit.priors.items()]
        lines.append(f"Diagnostics: {d['divergences']} divergences; max R-hat {d['max_rhat']:.3f}; min ESS bulk "
                     f"{d['min_ess_bulk']:.0f}")
        lines += [f"  PROBLEM: {m}" for m in self.messages] or ["  no problems detected"]
        lines += ["", f"tau^2: posterior mean {het.loc['tau2', 'mean']:.4g}, median {het.loc['tau2', 'median']:.4g},"
                      f" 95% interval ({het.loc['tau2', 'eti_lower']:.4g}, {het.loc['tau2', 'eti_upper']:.4g}); "
                      f"I^2 posterior mean {het.loc['I2', 'mean']:.1f}%",
                  f"Test for {'residual ' if self.p > 1 else ''}heterogeneity (data only): {self.reml.q_test}",
                  "", "Posterior beside REML:", self.comparison().to_string(**fmt)]
        if self.p == 1:
            pr = self.prediction()
            lines += ["", f"Posterior-predictive interval for a new study's true effect: ({pr['pi_lower']:.4f}, "
                          f"{pr['pi_upper']:.4f})"]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<MetaBayesFit {self.model.spec.formula()!r}: k = {self.k}, posterior mean tau^2 = "
                f"{self._tau2.mean():.4g}, {self.diagnostics['divergences']} divergences>")


def posterior_table(values: np.ndarray, labels: list[str], index_name: str) -> pd.DataFrame:
    """mean, median, sd and 95% equal-tailed interval of draws shaped (..., k), one row per label."""
    values = values.reshape(-1, values.shape[-1])
    lo, hi = equal_tailed_interval(values, LEVEL)
    return pd.DataFrame({"mean": values.mean(0), "median": np.median(values, axis=0),
                         "sd": values.std(0, ddof=1), "eti_lower": lo, "eti_upper": hi},
                        index=pd.Index(labels, name=index_name))
