"""Fully Bayesian multivariate V-known meta-analysis (R&B 2002 section 7.4 and ch. 13; Berkey et al. 1998).

The model of :mod:`bayeshlm.meta.multivariate`: study j reports m_j of the q outcomes, d_j = X_j gamma + Z_j b_j + e_j,
e_j ~ N(0, V_j) with V_j known, b_j ~ N(0, T) (T unstructured). The study effects are integrated out, so the
likelihood NUTS sees is the marginal one,

    d_j ~ N(X_j gamma, Sigma_j),   Sigma_j = V_j + Z_j T Z_j',

a multivariate normal per study, batched by m_j (the batches of ``_StudyBlocks``); summed over studies it is the
ML log-likelihood of :mod:`bayeshlm.meta.multivariate` before gamma is profiled out. NUTS samples only gamma and
T = diag(tau) R diag(tau), R = C C' with C the Cholesky factor of an LKJ correlation matrix. Afterwards, for every
posterior draw, b_j is drawn from its exact conditional posterior (R&B eq. 3.52 / 13.17 with known V_j):

    b_j | d, gamma, T ~ N(S_j g_j, S_j),   S_j = (T^{-1} + A_j)^{-1},
    A_j = Z_j' V_j^{-1} Z_j,   g_j = Z_j' V_j^{-1} (d_j - X_j gamma),

written with T = L L' as S_j = L M_j^{-1} L', M_j = I + L' A_j L = K_j K_j', and drawn as
b_j = L (M_j^{-1} L' g_j + K_j^{-T} z), z ~ N(0, I), which stays finite when T is singular. Studies that do not
report an outcome still get a posterior for its true effect (through the correlations in T).

Priors (``priors=None``): the univariate defaults of :mod:`bayeshlm.bayes.priors` applied outcome by outcome, with
s_q = sqrt(var(d_q) + mean(V_qq)) over the effects of outcome q: intercept of outcome q
Normal(mean(d_q), sqrt((2.5 s_q)^2 + sum_m (2.5 s_q mean(m) / sd(m))^2)), moderator slope of outcome q
Normal(0, 2.5 s_q / sd(m)), tau_q ~ HalfStudentT(nu=3, sigma=s_q), correlations LKJ(eta=2).
``priors="flat"``: the book's flat priors (ch. 13) where they can be sampled: p(gamma) flat, a flat prior on each
variance tau_q^2 over (0, inf) and uniform correlations LKJ(eta=1). The posterior is then proper only when the
data bound T. For one outcome with k studies and p coefficients the restricted likelihood decays like
(tau^2)^{-(k-p)/2}, so the posterior is proper when k - p > 2 and E(tau^2 | d) is finite only when k - p > 4; the
fit checks each outcome against these bounds and says when they fail (dat.berkey1998, 5 studies: k - p = 4, a proper
posterior whose tau^2 has no finite mean; read its medians, and expect a few divergences in the far tail).
A dict overrides priors by name: ``"beta"`` (every coefficient), a coefficient name (``"AL"``, ``"AL:year"``),
``"tau"`` (the SDs; ``on="variance"`` puts it on tau_q^2) and ``"corr"`` (the LKJ eta).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from ..bayes.convergence import ess_bulk, per_entry, rhat
from ..bayes.diagnostics import diagnose, warn_if_problems
from ..bayes.marginal_graph import cholesky_unrolled, forward_solve_unrolled
from ..bayes.priors import LKJ, Prior
from ..bayes.sampling import check_sampler_options, new_seed, run_sampler
from ..errors import OptionError, closest_names
from ..results.contract import equal_tailed_interval
from .univariate_bayes import LEVEL, posterior_table

LOG_2PI = float(np.log(2.0 * np.pi))
OPTIONS = ("draws", "tune", "chains", "random_seed", "priors", "sampler", "target_accept", "progressbar")


@dataclass(frozen=True)
class MVPriors:
    """Priors of a multivariate meta-analysis: one per coefficient, the SDs tau_q, the LKJ correlation prior."""

    beta: dict[str, Prior]
    tau: Prior
    corr: LKJ
    kind: str  # 'default', 'flat' or 'default+overrides'

    def as_dict(self) -> dict[str, str]:
        return {**{name: str(p) for name, p in self.beta.items()}, "tau": str(self.tau), "corr": str(self.corr)}

    def signature(self) -> tuple:
        return (tuple(p.signature() for p in self.beta.values()), self.tau.signature(), self.corr.signature())


@dataclass(frozen=True)
class _Graph:
    """What :func:`~bayeshlm.bayes.sampling.run_sampler` reads of a ``ModelInfo``: the graph key and data for the
    cached nutpie compile, and the compiled kernel, which does not cover this model (nutpie samples the graph)."""

    key: tuple
    data: dict[str, np.ndarray]
    kernel: None = None


def _outcome_scales(studies, q: int) -> np.ndarray:
    """s_q = sqrt(var(d_q) + mean(V_qq)) over the reported effects of each outcome (0 variance for one study)."""
    v = np.diag(studies.V_all)
    out = np.empty(q)
    for k in range(q):
        y = studies.y_all[studies.codes == k]
        out[k] = np.sqrt((np.var(y, ddof=1) if len(y) > 1 else 0.0) + np.mean(v[studies.codes == k]))
    return out


def default_priors(studies, q: int, names: list[str]) -> MVPriors:
    """Weakly informative priors scaled to each outcome's effects (formulas in the module docstring)."""
    s = _outcome_scales(studies, q)
    X, codes = studies.X_all, studies.codes
    beta = {}
    n_mods = len(names) // q - 1
    for k in range(q):
        rows = codes == k
        mods = X[rows][:, [k + q * (m + 1) for m in range(n_mods)]]
        sd = np.where(mods.std(axis=0) > 1e-12, mods.std(axis=0), 1.0)
        slope_sd = 2.5 * s[k] / sd
        spread = np.sqrt((2.5 * s[k]) ** 2 + np.sum((slope_sd * mods.mean(axis=0)) ** 2))
        beta[names[k]] = Prior("Normal", mu=float(studies.y_all[rows].mean()), sigma=float(spread))
        for m in range(n_mods):
            beta[names[k + q * (m + 1)]] = Prior("Normal", mu=0.0, sigma=float(slope_sd[m]))
    beta = {name: beta[name] for name in names}
    return MVPriors(beta, Prior("HalfStudentT", nu=np.full(q, 3.0), sigma=s), LKJ(2.0), "default")


def resolve_priors(studies, q: int, names: list[str], priors) -> MVPriors:
    """``priors=`` (None, ``"flat"`` or a dict of overrides, see the module docstring) -> :class:`MVPriors`."""
    if priors is None or priors == "default":
        return default_priors(studies, q, names)
    if priors == "flat":
        return MVPriors(dict.fromkeys(names, Prior("Flat")), Prior("HalfFlat", on="variance"), LKJ(1.0), "flat")
    if not isinstance(priors, Mapping):
        raise OptionError(f"priors={priors!r}: use None (weakly informative defaults), 'flat' (the book's flat "
                          "priors) or a dict {parameter name: Prior(...)}.")
    base = default_priors(studies, q, names)
    beta, tau, corr = dict(base.beta), base.tau, base.corr
    valid = ["beta", *names, "tau", "corr"]
    for name, value in priors.items():
        if name not in valid:
            raise OptionError(f"priors: no parameter {name!r} in this model.{closest_names(str(name), valid)} "
                              f"Valid names: {', '.join(valid)}.")
        if name == "corr":
            try:
                corr = LKJ(float(value.eta if isinstance(value, LKJ) else value))
            except (TypeError, ValueError):
                raise OptionError("priors['corr']: give the LKJ eta as a number or LKJ(eta=...).") from None
            continue
        if not isinstance(value, Prior):
            raise OptionError(f"priors[{name!r}] = {value!r}: give a bayeshlm.bayes.Prior, "
                              "e.g. Prior('Normal', mu=0, sigma=1).")
        if name != "tau" and value.on != "sd":
            raise OptionError(f"priors[{name!r}]: on='variance' applies only to the 'tau' prior.")
        if name == "tau":
            tau = value
        elif name == "beta":
            beta = dict.fromkeys(names, value)
    beta |= {name: priors[name] for name in names if name in priors}  # a coefficient's own prior beats "beta"
    return MVPriors(beta, tau, corr, "default+overrides")


def build_model(studies, q: int, names: list[str], outcomes: pd.Index, priors: MVPriors) -> tuple[pm.Model, _Graph]:
    """The PyMC model with the study effects integrated out (module docstring). Data and prior hyperparameters
    are ``pm.Data``, so one compiled graph serves every data set of the same batch shapes."""
    data: dict[str, np.ndarray] = {}

    def add(name, value, dtype=float):
        data[name] = np.asarray(value, dtype=dtype)
        return pm.Data(name, data[name])

    with pm.Model(coords={"term": names, "outcome": list(map(str, outcomes))}) as model:
        families = {(p.dist, tuple(p.params)) for p in priors.beta.values()}
        if len(families) == 1:
            first = next(iter(priors.beta.values()))
            beta = getattr(pm, first.dist)("beta", dims="term", **{
                k: add(f"prior__beta__{k}", [p.params[k] for p in priors.beta.values()]) for k in first.params})
        else:
            parts = [getattr(pm, p.dist)(f"beta[{n}]", **{k: add(f"prior__beta[{n}]__{k}", v)
                                                          for k, v in p.params.items()})
                     for n, p in priors.beta.items()]
            beta = pm.Deterministic("beta", pt.stack(parts), dims="term")
        params = {k: add(f"prior__tau__{k}", np.broadcast_to(v, (q,))) for k, v in priors.tau.params.items()}
        if priors.tau.on == "sd":
            tau = getattr(pm, priors.tau.dist)("tau", **params, dims="outcome")
        else:
            tau2 = getattr(pm, priors.tau.dist)("tau2", **params, dims="outcome")
            tau = pm.Deterministic("tau", pt.sqrt(tau2), dims="outcome")
        if q > 1:
            L = tau[:, None] * pm.LKJCorr("corr", n=q, eta=add("prior__corr__eta", priors.corr.eta))
        else:
            L = tau[:, None]
        T = L @ L.T
        for b in studies.batches:
            m = b["rows"].shape[1]
            codes = add(f"data__codes_{m}", b["codes"], dtype=np.int64)
            V, X, y = (add(f"data__{name}_{m}", b[name]) for name in ("V", "X", "y"))
            pm.Potential(f"loglik_{m}", _batch_loglik(beta, T, codes, V, X, y, m, len(b["rows"])))
    key = ("meta_mv", q, priors.signature(),
           tuple((n, v.shape) for n, v in sorted(data.items()) if not n.startswith("prior__")))
    return model, _Graph(key, data)


def _batch_loglik(beta, T, codes, V, X, y, m: int, n_studies: int):
    """sum_j log N(d_j | X_j gamma, V_j + Z_j T Z_j') over a batch of studies reporting m effects each.

    The m x m Cholesky factor and forward solve are unrolled into elementwise operations over the studies
    (the helpers of :mod:`bayeshlm.bayes.marginal_graph`): a batched ``pm.MvNormal`` computes the same density but took
    over 5 minutes to compile for nutpie (Numba) on this machine."""
    Sigma = [[V[:, a, c] + T[codes[:, a], codes[:, c]] for c in range(m)] for a in range(m)]
    C = cholesky_unrolled(Sigma, m)
    w = forward_solve_unrolled(C, [y[:, a] - pt.dot(X[:, a, :], beta) for a in range(m)], m)
    logdet = 2.0 * sum(pt.sum(pt.log(C[a][a])) for a in range(m))
    return -0.5 * (n_studies * m * LOG_2PI + logdet + sum(pt.sum(w_a**2) for w_a in w))


def study_index(studies) -> list[np.ndarray]:
    """For each batch of ``_StudyBlocks``, the position of each of its studies in ``studies.levels``."""
    return [studies.levels.get_indexer(studies.labels[b["rows"][:, 0]]) for b in studies.batches]


def draw_study_effects(studies, q: int, beta: np.ndarray, L: np.ndarray, rng: np.random.Generator,
                       chunk: int = 500) -> np.ndarray:
    """Exact draws of b_j | d, gamma, T for every posterior draw (module docstring), shape (S, J, q).

    ``beta`` (S, p) and ``L`` (S, q, q), the Cholesky factor of T, are flattened posterior draws.
    """
    n_draws, J = beta.shape[0], len(studies.levels)
    A = np.zeros((J, q, q))
    P = []  # per batch: Z_j' V_j^{-1}, (J_m, q, m)
    for b, where in zip(studies.batches, study_index(studies)):
        Z = np.eye(q)[b["codes"]]  # (J_m, m, q)
        ZtVinv = np.swapaxes(Z, 1, 2) @ np.linalg.inv(b["V"])
        A[where] = ZtVinv @ Z
        P.append(ZtVinv)
    out = np.empty((n_draws, J, q))
    for start in range(0, n_draws, chunk):
        sl = slice(start, min(start + chunk, n_draws))
        g = np.zeros((sl.stop - start, J, q))
        for b, where, ZtVinv in zip(studies.batches, study_index(studies), P):
            resid = b["y"][None] - np.einsum("jmp,sp->sjm", b["X"], beta[sl])
            g[:, where] = np.einsum("jqm,sjm->sjq", ZtVinv, resid)
        Ls = L[sl][:, None]  # (S, 1, q, q)
        Lt = np.swapaxes(Ls, -1, -2)
        M = np.eye(q) + Lt @ A[None] @ Ls
        K = np.linalg.cholesky(M)
        mean_part = np.linalg.solve(M, Lt @ g[..., None])[..., 0]
        noise = np.linalg.solve(np.swapaxes(K, -1, -2), rng.standard_normal(g.shape)[..., None])[..., 0]
        out[sl] = (Ls @ (mean_part + noise)[..., None])[..., 0]
    return out


def fit_bayes(reml, *, draws: int = 1000, tune: int = 1000, chains: int = 4, random_seed: int | None = None,
              priors=None, sampler: str = "nutpie", target_accept: float = 0.9, progressbar: bool = False,
              **unknown) -> MetaMVBayesFit:
    """Sample the posterior of the model ``reml`` (a :class:`~bayeshlm.meta.MetaMVFit`) was fitted to."""
    if unknown:
        name = next(iter(unknown))
        raise OptionError(f"Unknown option {name!r} for method='bayes'.{closest_names(name, OPTIONS)} "
                          f"Options: {', '.join(OPTIONS)}.")
    check_sampler_options(draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                          target_accept=target_accept, sampler=sampler, progressbar=progressbar)
    if random_seed is None:
        random_seed = new_seed()
    studies, q, names = reml._studies, len(reml.outcomes), list(reml.vcov.index)
    prior_set = resolve_priors(studies, q, names, priors)
    model, graph = build_model(studies, q, names, reml.outcomes, prior_set)
    tree, record = run_sampler(model, graph, sampler=sampler, draws=draws, tune=tune, chains=chains,
                               seed=int(random_seed), target_accept=target_accept, progressbar=progressbar)
    start = time.perf_counter()
    post = _complete_posterior(tree["posterior"].to_dataset(), studies, q, names, reml.outcomes, int(random_seed))
    tree["posterior"] = xr.DataTree(post)
    record["study_effect_seconds"] = round(time.perf_counter() - start, 3)
    diagnostics, messages = diagnose(tree, ["beta", "tau2", "rho"] if q > 1 else ["beta", "tau2"], chains)
    if prior_set.kind == "flat":
        messages += _flat_prior_problems(studies, q, names, reml.outcomes)
    warn_if_problems(messages)
    return MetaMVBayesFit(reml, tree, prior_set, record, diagnostics, messages, model)


def _complete_posterior(post: xr.Dataset, studies, q: int, names: list[str], outcomes: pd.Index,
                        seed: int) -> xr.Dataset:
    """Label the draws and add tau2, T, rho (correlations), the study effects b and true effects delta."""
    out_names = [str(o) for o in outcomes]
    study = str(studies.levels.name)
    levels = [str(s) for s in studies.levels]
    post = post.assign_coords(term=names, outcome=out_names)
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    tau = post["tau"].transpose("chain", "draw", "outcome").values
    corr = post["corr"].values if q > 1 else np.ones((n_chain, n_draw, 1, 1))
    L = tau[..., :, None] * corr
    T = L @ np.swapaxes(L, -1, -2)
    pair = ("chain", "draw", "outcome", "outcome_")
    coords = {"outcome_": out_names}
    post = post.drop_vars([v for v in ("corr", "tau2") if v in post])
    post["tau2"] = post["tau"] ** 2
    post["T"] = xr.DataArray(T, dims=pair, coords=coords)
    sd = np.sqrt(np.diagonal(T, axis1=-2, axis2=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        post["rho"] = xr.DataArray(T / (sd[..., :, None] * sd[..., None, :]), dims=pair, coords=coords)
    beta = post["beta"].transpose("chain", "draw", "term").values.reshape(n_chain * n_draw, -1)
    b = draw_study_effects(studies, q, beta, L.reshape(-1, q, q), np.random.default_rng([seed, 1]))
    b = b.reshape(n_chain, n_draw, len(levels), q)
    dims = ("chain", "draw", study, "outcome")
    post["b"] = xr.DataArray(b, dims=dims, coords={study: levels})
    post["delta"] = xr.DataArray(b + np.einsum("cdp,jqp->cdjq", beta.reshape(n_chain, n_draw, -1),
                                               _study_design(studies, q)), dims=dims, coords={study: levels})
    return post


def _study_design(studies, q: int) -> np.ndarray:
    """(J, q, p): the fixed-effect row of every study and outcome, reported or not. Columns are outcome indicators
    and then each moderator times each indicator, so a study's moderator values sit at columns k + q s of any of
    its rows (k the row's outcome)."""
    X, p = studies.X_all, studies.p
    n_mods = p // q - 1
    out = np.zeros((len(studies.levels), q, p))
    first = {label: row for row, label in reversed(list(enumerate(studies.labels)))}
    for j, label in enumerate(studies.levels):
        row = first[label]
        values = X[row, studies.codes[row]::q]  # [1, m_1, ..., m_s]
        for k in range(q):
            out[j, k, [k + q * s for s in range(n_mods + 1)]] = values
    return out


def _flat_prior_problems(studies, q: int, names: list[str], outcomes: pd.Index) -> list[str]:
    """Outcomes whose flat-prior posterior of tau_q^2 may be improper (k_q - p_q <= 2) or has no finite mean
    (k_q - p_q <= 4); see the module docstring."""
    out = []
    per_outcome = len(names) // q
    for k, o in enumerate(outcomes):
        k_q = len(np.unique(studies.labels[studies.codes == k]))
        what = (f"Outcome {o!r} is reported by {k_q} studies for {per_outcome} coefficient(s): with the flat "
                "prior on its between-study variance the posterior")
        if k_q - per_outcome <= 2:
            out.append(f"{what} may be improper (its upper tail does not decay fast enough), so the draws of tau^2 "
                       "can wander off. Use the default priors.")
        elif k_q - per_outcome <= 4:
            out.append(f"{what} is proper but tau^2 has no finite posterior mean (too heavy an upper tail): report "
                       "its median and interval, not its mean, or use the default priors.")
    return out


class MetaMVBayesFit:
    """A fully Bayesian multivariate meta-analysis (see :func:`~bayeshlm.meta_mv` with ``method="bayes"``).

    ``posterior`` (ArviZ DataTree; group ``posterior`` holds ``beta`` (dim ``term``), ``tau`` (SDs) and ``tau2``
    (dim ``outcome``), ``T`` and ``rho`` (dims ``outcome``, ``outcome_``), ``b`` and ``delta`` (the study effects
    and true effects, dims ``<study>``, ``outcome``; unreported outcomes included)), ``fixed_effects``,
    ``variance_components``, ``tau`` / ``tau2`` / ``correlation`` (posterior means), ``study_effects``,
    ``comparison()`` (beside the REML fit, ``reml``), ``priors``, ``sampler``, ``diagnostics``, ``messages``.
    Point estimates are posterior means, ``sd`` posterior SDs, intervals equal-tailed 95%.
    """

    method = "bayes"

    def __init__(self, reml, posterior: xr.DataTree, priors: MVPriors, sampler: dict, diagnostics: dict,
                 messages: list[str], model: pm.Model):
        self.reml = reml
        self.outcomes = reml.outcomes
        self.k, self.n = reml.k, reml.n
        self.posterior = posterior
        self.priors = priors.as_dict()
        self.prior_kind = priors.kind
        self.sampler = sampler
        self.diagnostics = diagnostics
        self.messages = messages
        self._model = model

    def draws(self, name: str) -> xr.DataArray:
        """Posterior draws of one variable (dims chain, draw, ...)."""
        return self.posterior["posterior"][name]

    def pymc_model(self) -> pm.Model:
        """The ``pm.Model`` that was sampled (study effects integrated out)."""
        return self._model

    @property
    def fixed_effects(self) -> pd.DataFrame:
        """Posterior mean, SD, 95% interval, R-hat and bulk ESS of each coefficient."""
        beta = self.draws("beta")
        table = posterior_table(beta.transpose("chain", "draw", "term").values, list(beta["term"].values), "term")
        ordered = beta.transpose("chain", "draw", ...).values
        table["r_hat"] = per_entry(rhat, ordered) if beta.sizes["chain"] > 1 else np.nan
        table["ess_bulk"] = per_entry(ess_bulk, ordered)
        return table

    @property
    def variance_components(self) -> pd.DataFrame:
        """tau^2 of each outcome, then each covariance and correlation of the outcomes' true effects."""
        T, rho = self.draws("T").values, self.draws("rho").values
        names = [str(o) for o in self.outcomes]
        columns, labels = [], []
        for a in range(len(names)):
            columns.append(T[..., a, a])
            labels.append(f"tau2({names[a]})")
        for a in range(len(names)):
            for c in range(a + 1, len(names)):
                columns += [T[..., a, c], rho[..., a, c]]
                labels += [f"cov({names[a]}, {names[c]})", f"rho({names[a]}, {names[c]})"]
        return posterior_table(np.stack(columns, axis=-1), labels, "parameter")

    @property
    def tau(self) -> pd.DataFrame:
        """Posterior mean of T."""
        return pd.DataFrame(self.draws("T").mean(("chain", "draw")).values, index=self.outcomes,
                            columns=self.outcomes)

    @property
    def tau2(self) -> pd.Series:
        return pd.Series(np.diag(self.tau.to_numpy()), index=self.outcomes, name="tau2")

    @property
    def correlation(self) -> pd.DataFrame:
        """Posterior mean of the between-study correlation matrix (not the correlation of the mean T)."""
        return pd.DataFrame(self.draws("rho").mean(("chain", "draw")).values, index=self.outcomes,
                            columns=self.outcomes)

    @property
    def study_effects(self) -> pd.DataFrame:
        """Per reported effect (data row order): study, outcome, observed effect, and the posterior mean, SD and
        95% interval of its true effect x'gamma + b_j (the Bayesian counterpart of the REML fit's ``eb``)."""
        s = self.reml._studies
        delta = self.draws("delta")
        values = delta.values.reshape(-1, *delta.shape[2:])  # (S, J, q)
        picked = values[:, s.levels.get_indexer(s.labels), s.codes]
        lo, hi = equal_tailed_interval(picked, LEVEL)
        return pd.DataFrame({s.levels.name: s.labels, self.outcomes.name: self.outcomes[s.codes], "effect": s.y_all,
                             "mean": picked.mean(0), "sd": picked.std(0, ddof=1), "eti_lower": lo, "eti_upper": hi})

    def comparison(self) -> pd.DataFrame:
        """REML estimates beside the posterior: coefficients (with REML SEs), tau^2 per outcome and correlations.

        ``shift_in_sd`` = (posterior mean - REML) / posterior SD. With few studies the posterior of T is skewed
        and its mean sits above the REML estimate (which is a mode of the restricted likelihood), and gamma's
        posterior SD includes the uncertainty about T that the REML SE ignores."""
        reml = self.reml
        fe = self.fixed_effects
        rows = pd.DataFrame({"reml": reml.fixed_effects["estimate"].to_numpy(),
                             "reml_se": reml.fixed_effects["se"].to_numpy()}, index=fe.index)
        rows = rows.join(fe[["mean", "median", "sd", "eti_lower", "eti_upper"]])
        vc = self.variance_components
        T, corr = reml.tau.to_numpy(), reml.correlation.to_numpy()
        q = len(self.outcomes)
        values = [T[a, a] for a in range(q)]
        for a in range(q):
            for c in range(a + 1, q):
                values += [T[a, c], corr[a, c]]
        more = vc[["mean", "median", "sd", "eti_lower", "eti_upper"]].assign(reml=values, reml_se=np.nan)
        table = pd.concat([rows, more[rows.columns]])
        table["shift_in_sd"] = (table["mean"] - table["reml"]) / table["sd"]
        table.index.name = "parameter"
        return table

    def summary(self) -> str:
        s, d = self.sampler, self.diagnostics
        fmt = {"float_format": lambda x: f"{x:.4f}"}
        lines = [f"Multivariate meta-analysis (full Bayes): {self.n} effects of {len(self.outcomes)} outcomes in "
                 f"{self.k} studies; study effects integrated out, then drawn from their conditional posterior",
                 f"{s['sampler']} NUTS, {s['chains']} chains x {s['draws']} draws ({s['tune']} tuning), "
                 f"seed {s['seed']}; priors: {self.prior_kind}"]
        lines += [f"  {k}: {v}" for k, v in self.priors.items()]
        lines.append(f"Diagnostics: {d['divergences']} divergences; max R-hat {d['max_rhat']:.3f}; min ESS bulk "
                     f"{d['min_ess_bulk']:.0f}, tail {d['min_ess_tail']:.0f}; min BFMI {d['min_bfmi']:.2f}")
        lines += [f"  PROBLEM: {m}" for m in self.messages] or ["  no problems detected"]
        lines += ["", "Posterior beside REML:", self.comparison().to_string(**fmt)]
        if self.reml.messages:  # a boundary REML estimate of T: the posterior averages over T instead
            lines += ["", "About the REML fit (the posterior averages over the T the data allow instead of fixing "
                          "T at this estimate):", *(f"  {m}" for m in self.reml.messages)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        d = self.diagnostics
        return (f"<MetaMVBayesFit: {self.n} effects, {self.k} studies, outcomes {list(self.outcomes)}; "
                f"{self.sampler['chains']}x{self.sampler['draws']} draws, {d['divergences']} divergences, "
                f"max R-hat {d['max_rhat']:.3f}>")

