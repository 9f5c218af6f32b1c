"""Full Bayes for hierarchical generalized linear models (R&B 2002, ch. 10): binary, binomial and count outcomes.

``HLM(..., family=...).fit(method="bayes")`` calls :func:`fit_bayes_glmm`. The group effects cannot be integrated
out in closed form, so every factor's effects are sampled with the other parameters: the posterior is exact (no
Laplace or quadrature approximation). Per factor, the effects are non-centred (u_j = L z_j, z_j ~ N(0, I)) unless
the data dominate their prior, judged from the Laplace fit (made by the caller, ``HLM.fit``): the average
reliability 1 - Var(b_qj | y) / tau_qq of the group coefficients, with the conditional variances of the Laplace
fit, is at least 0.7 for every random coefficient q of the factor; then centred on the fixed effects
(b_j = gamma + u_j ~ N(gamma, T) sampled), which mixes better for well-measured groups (Papaspiliopoulos,
Roberts & Skold 2007), a factor with group-level predictors on its level-2 model. A factor nested in another
stays non-centred. The choice and the reliabilities are recorded in ``fit.sampler``.

For the logit-binomial/Bernoulli, log-Poisson and log-negative-binomial models with the usual prior families,
nutpie samples a compiled log density (:mod:`.glmm_kernel`: a C extension built at install, Numba as the
fallback; no PyMC graph is compiled), with the fixed effects shifted by the effects of non-centred factors with
group-level predictors (an exact reparameterisation, :func:`fixed_effect_shift`, recorded in
``fit.sampler["shifted"]``, their z scaled along those columns by ``fit.sampler["latent_scale"]`` and partially
centred by ``fit.sampler["partial_centring"]``), and observation-level factors conditionally centred
(:func:`conditional_centring_default`, ``fit.sampler["conditional_centring"]``); other
links and priors sample the PyMC graph of :func:`glmm_pymc_model`, the same model, which ``model.pymc_model()``
returns for posterior predictive simulation.

Priors (link scale; see docs/hglm_bayes.md), overridable by name as for Gaussian models
(:mod:`bayeshlm.bayes.priors`: ``"beta"``, a fixed-effect name, ``"tau_<factor>"``, ``"corr_<factor>"``, and
``"shape"`` for the negative binomial):

- slope of x_k: Normal(0, 2.5 / sd(x_k)) (rstanarm's autoscaled default for GLMs);
- intercept: Normal(g(ybar), sqrt(2.5^2 + sum_k (2.5 mean(x_k) / sd(x_k))^2)), g the link and ybar the pooled
  proportion (binomial) or rate per unit of exposure (counts), clipped to [0.01, 0.99] / at least 0.5 events;
- SD of a random coefficient z_k: HalfStudentT(nu=3, sigma=2.5 / sd(z_k)) (2.5 for an intercept; brms's
  student_t(3, 0, 2.5));
- correlations: LKJ(eta=2);
- negative binomial shape k (var = mu + mu^2 / k): Gamma(alpha=0.01, beta=0.01) (brms's default).

``priors="flat"``: flat on the fixed effects and on each variance, uniform correlations (R&B ch. 13); the
shape keeps its default.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from .. import progress
from ..design import Design
from ..errors import OptionError, closest_names
from ..families.outcome import GLMOutcome
from .priors import LKJ, Prior, PriorSet, flat_priors, named_override
from .samples import GLMMPosteriorSample, GLMMPriorDraws

OPTIONS = ("draws", "tune", "chains", "random_seed", "priors", "sampler", "target_accept", "parameterization",
           "progressbar")
CENTRED_RELIABILITY = 0.7
PARAMETERIZATIONS = ("centred", "non-centred")
SHAPE_PRIOR = ("Gamma", {"alpha": 0.01, "beta": 0.01})
LARGEST_POISSON_MEAN = 1e15  # prior predictive counts: above it y = mu (integer sampling would overflow)


# --- priors ---------------------------------------------------------------------------------------------
def _link_of_mean(design: Design, outcome: GLMOutcome) -> float:
    """g(ybar): the link of the pooled proportion or rate, where the intercept's prior is centred."""
    family, link = outcome.family, outcome.family.link.name
    if family.counts:
        return float(np.log(max(outcome.y.sum(), 0.5) / np.exp(outcome.offset).sum()))
    p = float(np.clip(outcome.y.sum() / outcome.size.sum(), 0.01, 0.99))
    from scipy import special

    return {"logit": special.logit(p), "probit": special.ndtri(p), "cloglog": np.log(-np.log1p(-p))}[link]


def default_glmm_priors(design: Design, outcome: GLMOutcome) -> PriorSet:
    """The link-scale defaults of the module docstring."""
    cs = design.column_summary()
    constant = cs.X_ptp == 0
    x_sd = np.where(cs.X_sd > 1e-12, cs.X_sd, 1.0)
    slope_sd = 2.5 / x_sd
    centre = _link_of_mean(design, outcome)
    fixed = {}
    for k, name in enumerate(design.fixed_names):
        if constant[k]:
            first = cs.X_first[k]
            spread = np.sqrt(2.5**2 + np.sum((slope_sd * cs.X_mean)[~constant] ** 2))
            fixed[name] = Prior("Normal", mu=centre / first, sigma=spread / abs(first))
        else:
            fixed[name] = Prior("Normal", mu=0.0, sigma=slope_sd[k])
    tau, corr = {}, {}
    for f in design.factors:
        z_sd = np.where((cs.Z_ptp[f.name] > 0) & (cs.Z_sd[f.name] > 1e-12), cs.Z_sd[f.name], 1.0)
        tau[f.name] = Prior("HalfStudentT", nu=np.full(f.n_coef, 3.0), sigma=2.5 / z_sd)
        if any(len(b) > 1 for b in f.blocks):
            corr[f.name] = LKJ(2.0)
    return PriorSet(fixed, None, tau, corr, "default")


def valid_glmm_prior_names(design: Design, outcome: GLMOutcome) -> list[str]:
    names = ["beta", *design.fixed_names]
    for f in design.factors:
        names.append(f"tau_{f.name}")
        if any(len(b) > 1 for b in f.blocks):
            names.append(f"corr_{f.name}")
    if outcome.family.name == "negative_binomial":
        names.append("shape")
    return names


def resolve_glmm_priors(design: Design, outcome: GLMOutcome, priors) -> tuple[PriorSet, Prior | None]:
    """(PriorSet, shape prior or None) from ``priors=``: None, 'flat' or a dict of overrides by name."""
    shape = Prior(SHAPE_PRIOR[0], **SHAPE_PRIOR[1]) if outcome.family.name == "negative_binomial" else None
    if priors is None or priors == "default":
        return default_glmm_priors(design, outcome), shape
    if isinstance(priors, str):
        if priors != "flat":
            raise OptionError(f"priors={priors!r}: use None (weakly informative link-scale defaults), 'flat' or a "
                              "dict of per-parameter priors.")
        flat = flat_priors(design)
        return PriorSet(flat.fixed, None, flat.tau, flat.corr, "flat"), shape
    if not isinstance(priors, Mapping):
        raise OptionError("priors must be None, 'flat' or a dict {parameter name: Prior(...)}.")
    base = default_glmm_priors(design, outcome)
    fixed, tau, corr = dict(base.fixed), dict(base.tau), dict(base.corr)
    valid = valid_glmm_prior_names(design, outcome)
    for name, value in priors.items():
        value = named_override(name, value, valid, "Prior('Normal', mu=0, sigma=2.5)")
        if name.startswith("corr_"):
            corr[name[5:]] = value
            continue
        if name == "beta":
            fixed = dict.fromkeys(design.fixed_names, value)
        elif name.startswith("tau_"):
            tau[name[4:]] = value
        elif name == "shape":
            if value.on != "sd":
                raise OptionError("priors['shape']: the prior is on the shape k itself; on='variance' does not apply.")
            shape = value
        else:
            fixed[name] = value
    for name in fixed:  # a per-coefficient override beats "beta", whatever the dict order
        if name in priors:
            fixed[name] = priors[name]
    for name, p in fixed.items():
        if p.on != "sd":
            raise OptionError(f"priors[{name!r}]: on='variance' applies only to tau_* priors.")
    return PriorSet(fixed, None, tau, corr, "default+overrides"), shape


def prior_table(priors: PriorSet, shape: Prior | None) -> dict[str, str]:
    out = priors.as_dict()
    if shape is not None:
        out["shape"] = str(shape)
    return out


# --- geometry -------------------------------------------------------------------------------------------
def laplace_start(laplace_fit: Callable[[], object] | None):
    """The Laplace ML fit made by ``laplace_fit()`` (the caller's: this engine does not import the likelihood
    engine), or None when none is given or it cannot be made (e.g. separation)."""
    if laplace_fit is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return laplace_fit()
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            return None


def _coefficient_reliability(laplace, factor, q: int) -> float:
    """Average reliability 1 - Var(b_qj | y) / tau_qq of coefficient q's group values in the Laplace fit (its
    long ``random_effects`` table: ``se`` is the conditional SD); 0 at the variance's boundary."""
    tau_qq = float(laplace.tau[factor.name].iloc[q, q])
    if not tau_qq > 1e-8:
        return 0.0
    sd = laplace.random_effects(factor.name).xs(factor.coef_names[q], level=-1)["se"].to_numpy(dtype=float)
    return float(np.mean(1.0 - sd**2 / tau_qq))


def laplace_reliability(design: Design, laplace) -> dict[str, float]:
    """Per factor, the smallest average reliability over its random coefficients (R&B eq. 3.42 with the Laplace
    fit's conditional variances): a factor is only as well measured as its worst-measured coefficient. A random
    slope measured far less well than the intercept mixes badly centred (two-level Bernoulli with a random slope,
    docs/calibration.md: intercept reliability 0.81, slope 0.49; judged by the intercept, centred fits had
    1,581 divergences in 300 replications and R-hat up to 2.28, non-centred none). 0 when the fit is missing
    or does not give the tables: non-centred, the safe choice."""
    out = {}
    for f in design.factors:
        value = 0.0
        if laplace is not None:
            try:
                value = min(_coefficient_reliability(laplace, f, q) for q in range(f.n_coef))
            except (KeyError, ValueError, AttributeError, IndexError):
                value = 0.0
        out[f.name] = value
    return out


def choose_parameterization(design: Design, reliability: dict[str, float],
                            requested: Mapping | None) -> dict[str, str]:
    """Per factor 'centred' or 'non-centred'; ``requested`` ({factor: 'centred' | 'non-centred'}) overrides.

    Centred where the reliability (of its least reliable coefficient) is at least 0.7, the factor is not nested in
    another, and its intercept can be centred on a fixed effect not already taken by a more reliable factor: a
    factor centred on zero instead leaves a ridge (gamma_0 + c, b_j - c) that NUTS crosses slowly (VerbAgg's 316 x
    24 crossed design with both factors centred, one of them on zero: R-hat 1.15, min bulk ESS 23 of 4,000 draws).
    A factor with group-level predictors is centred on its level-2 model (:func:`centre_weights`), around the
    fixed effects before the shift of the non-centred factors (glmm_kernel's docstring). VerbAgg (items 0.91,
    persons 0.87: items centred, persons non-centred and shifted), default fits 4 x 1,000, seeds 1-3: max R-hat
    1.0063-1.0079, min bulk ESS 661-685 and the item-level effects and tau_item 2,960-5,200, against 1.0081-1.0151
    and 497-535 with both non-centred and shifted (benchmarks/results/bayes_verbagg_geometry.md; earlier attempts
    centred the items on beta after the shift, which counts the persons' mean twice: R-hat 1.025, min ESS 87-95);
    with the persons' z also scaled along their group-level columns (:func:`latent_scale`) 1.0028-1.0071 and
    905-1,042 (tau_id), and also partially centred (:func:`partial_weights_default`) 1.0018-1.0034 and
    3,265-3,629 (seeds 4-6: 1.0010-1.0029, 3,012-3,249).
    The result lists the factors in the order :func:`centring` gives out the fixed effects: requested centred
    ones, then by decreasing reliability."""
    if requested is not None and not isinstance(requested, Mapping):
        raise OptionError(f"parameterization={requested!r}: give a dict {{factor: 'centred' or 'non-centred'}}.")
    requested = dict(requested or {})
    for name, how in requested.items():
        if name not in design.factor_names:
            hint = closest_names(str(name), design.factor_names)
            raise OptionError(f"parameterization: no grouping factor {name!r}.{hint} "
                              f"Factors: {', '.join(design.factor_names)}.")
        if how not in PARAMETERIZATIONS:
            raise OptionError(f"parameterization[{name!r}] = {how!r}: use 'centred' or 'non-centred'.")
    order = sorted(design.factor_names, key=lambda name: (requested.get(name) != "centred", -reliability[name]))
    choice: dict[str, str] = {}
    for name in order:
        if name in requested:
            choice[name] = requested[name]
            continue
        candidate = reliability[name] >= CENTRED_RELIABILITY and not design.nesting.get(name)
        anchored = candidate and centring(design, choice | {name: "centred"})[name][0] >= 0
        choice[name] = "centred" if anchored else "non-centred"
    return choice


def group_level_predictors(design: Design, factor) -> list[str]:
    """Fixed-effect columns (other than constants and the factor's own random columns) constant within every
    group of ``factor``: its level-2 predictors."""
    sizes = np.bincount(factor.codes, minlength=factor.n_groups).astype(float)
    out = []
    for k, name in enumerate(design.fixed_names):
        x = design.X[:, k]
        if np.ptp(x) == 0 or name in factor.coef_names:
            continue
        means = np.bincount(factor.codes, x, minlength=factor.n_groups) / np.maximum(sizes, 1.0)
        if np.allclose(x, means[factor.codes], rtol=1e-10, atol=1e-12 * (1.0 + np.abs(x).max())):
            out.append(name)
    return out


def centring(design: Design, choice: dict[str, str]) -> dict[str, list[int]]:
    """Per factor, the fixed effect each coefficient is centred on (index into beta, or -1): for a centred
    factor, the fixed effect whose column of X equals the coefficient's column of Z; each fixed effect centres
    one factor at most, the first in ``choice``'s order (factors absent from ``choice`` are not centred)."""
    taken: set[int] = set()
    out = {f.name: [-1] * f.n_coef for f in design.factors}
    for name, how in choice.items():
        f = design.factor(name)
        if how != "centred":
            continue
        for a, coef in enumerate(f.coef_names):
            k = design.fixed_names.index(coef) if coef in design.fixed_names else -1
            if k >= 0 and k not in taken and np.array_equal(design.X[:, k], f.Z[:, a]):
                out[f.name][a] = k
                taken.add(k)
    return out


def _first_rows(factor) -> np.ndarray:
    """A row of each group of ``factor`` (its first)."""
    first = np.zeros(factor.n_groups, dtype=np.int64)
    first[factor.codes[::-1]] = np.arange(len(factor.codes))[::-1]
    return first


def centre_weights(design: Design, choice: dict[str, str]) -> dict[str, np.ndarray]:
    """Per centred factor, C (J, q, p) with the centre of group j's coefficients c_j = C_j beta (the kernel's and
    the graph's form): 1 at each coefficient's own fixed effect (:func:`centring`), 0 elsewhere; except for an
    intercept centred on the fixed intercept whose factor has group-level predictors (:func:`group_level_predictors`,
    each for the first such factor in ``choice``'s order): it is centred on its level-2 model evaluated at the
    means of the other columns, c_j = gamma_0 + w_j'gamma_w + xbar_o'beta_o (R&B eq. 2.2; o: the non-constant
    columns other than w and the factor's own random columns). Any C gives the same model (u_j = b_j - C_j beta
    ~ N(0, T), eta from beta and u); this one makes b_j the group's level at the other columns' means, which the
    data measure directly, and keeps the slopes of those columns from moving every b_j: centred on gamma_0 + w_j'
    gamma_w alone, VerbAgg's items (with persons non-centred and shifted) had min bulk ESS 523-581 on Anger, whose
    mean 20 then moved all 24 b_j; with xbar_o 661-685 (benchmarks/results/bayes_verbagg_geometry.md)."""
    on = centring(design, choice)
    out, taken = {}, set()
    for name, how in choice.items():
        if how != "centred":
            continue
        f = design.factor(name)
        weights = np.zeros((f.n_groups, f.n_coef, design.n_fixed))
        first = _first_rows(f)
        for a, k in enumerate(on[name]):
            if k < 0:
                continue
            weights[:, a, k] = 1.0
            level2 = [w for w in map(design.fixed_names.index, group_level_predictors(design, f)) if w not in taken]
            if level2 and np.all(f.Z[:, a] == 1.0):
                weights[:, a, level2] = design.X[np.ix_(first, level2)]
                taken.update(level2)
                others = [m for m in range(design.n_fixed) if m not in level2 and np.ptp(design.X[:, m]) > 0
                          and design.fixed_names[m] not in f.coef_names]
                weights[:, a, others] = design.X[:, others].mean(axis=0)
        out[name] = weights
    return out


def fixed_effect_shift(design: Design, choice: dict[str, str]) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """Per shifted factor, the entries (k, a, P) of the kernel's shift beta_k -= P'u[:, a] (glmm_kernel's
    docstring). Shifted: the non-centred factors with group-level predictors (:func:`group_level_predictors`) and
    fewer groups than rows; their intercept coefficient a (a column of ones in Z) shifts the fixed intercept and
    the group-level predictors K, with P the rows of the pseudo-inverse (G'G)^+ G' of their values per group G
    (J x |K|), so that the sampled coefficients do not move along the ridge (beta_K + d, u_j - G_j d). Any P gives
    the same posterior (the map has Jacobian 1); where it is applied was measured (benchmarks/results/
    bayes_glmm_shift.md, default fits 4 x 1,000, seeds 1-3): VerbAgg (persons and items shifted) min bulk ESS
    225-304 -> 497-535. Not shifted, by measurement: factors without group-level predictors (cbpp's herds: min
    ESS unchanged; Contraception's (urban | district), with or without shifting the urban slope by its mean:
    the SDs' ESS fell, min ESS 862-1,069 -> 718-971, or 437-901 for the intercept alone) and observation-level
    factors (every column is then group-level; Poisson with (1 | obs): max R-hat 1.002-1.005 -> 1.003-1.013)."""
    out = {}
    for name, how in choice.items():
        f = design.factor(name)
        predictors = group_level_predictors(design, f)
        if how == "centred" or not predictors or f.n_groups >= design.n_obs:
            continue
        first = _first_rows(f)
        intercept = [k for k in range(design.n_fixed) if np.all(design.X[:, k] == 1.0)][:1]
        columns = intercept + [design.fixed_names.index(w) for w in predictors]
        P = np.linalg.pinv(design.X[np.ix_(first, columns)])
        entries = []
        for a in range(f.n_coef):
            if np.all(f.Z[:, a] == 1.0):
                entries += [(c, a, P[i]) for i, c in enumerate(columns)]
        if entries:
            out[name] = entries
    return out


def shift_record(design: Design, shift: dict[str, list]) -> dict[str, dict[str, list[str]]]:
    """``fit.sampler["shifted"]``: per non-centred factor, its coefficients and the fixed effects each shifts."""
    out = {}
    for name, entries in shift.items():
        coefs = design.factor(name).coef_names
        out[name] = {coefs[a]: [design.fixed_names[k] for k, b, _ in entries if b == a]
                     for a in sorted({a for _, a, _ in entries})}
    return out


# --- the PyMC graph -------------------------------------------------------------------------------------
def glmm_pymc_model(design: Design, outcome: GLMOutcome, priors=None, parameterization: Mapping | None = None,
                    choice: dict[str, str] | None = None):
    """The PyMC model of a hierarchical GLM with its observed likelihood ``y`` (dims 'obs'), for
    ``pm.sample_posterior_predictive``, ArviZ, or extension. ``choice`` (factor -> 'centred'/'non-centred')
    defaults to ``parameterization`` or non-centred."""
    import pymc as pm
    import pytensor.tensor as pt

    prior_set, shape_prior = resolve_glmm_priors(design, outcome, priors)
    if choice is None:
        choice = choose_parameterization(design, {f.name: 0.0 for f in design.factors}, parameterization)
    weights = centre_weights(design, choice)
    coords = {"fixed": list(design.fixed_names), "obs": np.arange(design.n_obs)}
    for f in design.factors:
        coords[f"{f.name}__coef"] = list(f.coef_names)
        coords[f.name] = [str(v) for v in f.levels]
    family, link = outcome.family, outcome.family.link.name
    with pm.Model(coords=coords) as model:
        beta = _fixed_effects(design, prior_set)
        eta = pt.dot(pm.Data("data__X", design.X), beta) + outcome.offset
        for f in design.factors:
            L = _cholesky(f, prior_set)
            u = _group_effects(f, L, choice[f.name], beta, weights.get(f.name))
            codes = pm.Data(f"data__codes__{f.name}", f.codes.astype(np.int64))
            eta = eta + pt.sum(pm.Data(f"data__Z__{f.name}", f.Z) * u[codes], axis=1)
        y = pm.Data("data__y", outcome.y)
        if family.counts:
            mu = pt.exp(eta)
            if family.name == "poisson":
                pm.Poisson("y", mu=mu, observed=y, dims="obs")
            else:
                shape = _positive(pm, "shape", shape_prior, ())
                pm.NegativeBinomial("y", mu=mu, alpha=shape, observed=y, dims="obs")
        else:
            p_kwargs = {"logit_p": eta} if link == "logit" else {
                "p": pm.math.invprobit(eta) if link == "probit" else 1.0 - pt.exp(-pt.exp(eta))}
            if family.name == "bernoulli":
                pm.Bernoulli("y", **p_kwargs, observed=y, dims="obs")
            else:
                pm.Binomial("y", n=pm.Data("data__trials", outcome.size.astype(np.int64)), **p_kwargs,
                            observed=y, dims="obs")
    return model


def _fixed_effects(design: Design, priors: PriorSet):
    import pymc as pm
    import pytensor.tensor as pt

    fixed = [priors.fixed[name] for name in design.fixed_names]
    if len({(p.dist, tuple(p.params)) for p in fixed}) == 1:
        params = {k: np.array([p.params[k] for p in fixed]) for k in fixed[0].params}
        return getattr(pm, fixed[0].dist)("beta", **params, dims="fixed")
    parts = [getattr(pm, p.dist)(f"beta[{name}]", **p.params) for name, p in zip(design.fixed_names, fixed)]
    return pm.Deterministic("beta", pt.stack(parts), dims="fixed")


def _positive(pm, name: str, prior: Prior, shape: tuple, dims=None):
    """A positive parameter with its prior on itself, or (``on='variance'``) on its square."""
    import pytensor.tensor as pt

    params = {k: np.broadcast_to(v, shape) for k, v in prior.params.items()}
    size = {"dims": dims} if dims else {"shape": shape}
    dist = getattr(pm, prior.dist)
    if prior.on == "sd":
        return dist(name, **params, **size)
    variance = dist(name.replace("tau_", "tau2_", 1), **params, **size)
    return pm.Deterministic(name, pt.sqrt(variance), **({"dims": dims} if dims else {}))


def _cholesky(f, priors: PriorSet):
    """L = diag(tau) L_Omega (one LKJ block) or diag(tau); other block structures are built blockwise."""
    import pymc as pm
    import pytensor.tensor as pt

    tau = _positive(pm, f"tau_{f.name}", priors.tau[f.name], (f.n_coef,), dims=f"{f.name}__coef")
    multi = [b for b in f.blocks if len(b) > 1]
    if not multi:
        return pt.diag(tau)
    L = pt.zeros((f.n_coef, f.n_coef))
    for i, block in enumerate(f.blocks):
        if len(block) == 1:
            L = pt.set_subtensor(L[block[0], block[0]], tau[block[0]])
            continue
        name = f"corr_{f.name}" if len(multi) == 1 else f"corr_{f.name}_{i}"
        omega = pm.LKJCorr(name, n=len(block), eta=float(priors.corr[f.name].eta))
        if len(block) == f.n_coef:
            return tau[:, None] * omega
        idx = np.array(block)
        L = pt.set_subtensor(L[idx[:, None], idx[None, :]], tau[idx][:, None] * omega)
    return L


def _group_effects(f, L, how: str, beta, weights):
    import pymc as pm
    import pytensor.tensor as pt

    dims = (f.name, f"{f.name}__coef")
    if how == "non-centred":
        z = pm.Normal(f"z_{f.name}", 0.0, 1.0, dims=dims)
        return pm.Deterministic(f"u_{f.name}", pt.dot(z, L.T), dims=dims)
    centre = pt.tensordot(pt.constant(weights), beta, axes=1)  # (J, q): c_j = C_j beta
    b = pm.MvNormal(f"coef_{f.name}", mu=centre, chol=L, dims=dims)
    return pm.Deterministic(f"u_{f.name}", b - centre, dims=dims)


# --- the compiled kernel --------------------------------------------------------------------------------
def kernel_covers(design: Design, outcome: GLMOutcome, priors: PriorSet, shape: Prior | None) -> str | None:
    """None when the compiled kernel covers the model, else why not (then the PyMC graph is sampled)."""
    from .glmm_kernel import FAMILY_CODES, FIXED_FAMILIES, SCALE_FAMILIES

    family = outcome.family
    if (family.name, family.link.name) not in FAMILY_CODES:
        return f"the {family.link.name} link of the {family.name} family"
    for f in design.factors:
        if not (len(f.blocks) == 1 or all(len(b) == 1 for b in f.blocks)):
            return f"the block-diagonal covariance of {f.name!r}"
    for name, p in priors.fixed.items():
        if p.dist not in FIXED_FAMILIES or set(p.params) != set(FIXED_FAMILIES[p.dist]):
            return f"the {p.dist} prior of {name!r}"
    scales = [(f"tau_{f}", p) for f, p in priors.tau.items()] + ([("shape", shape)] if shape is not None else [])
    for name, p in scales:
        if p.dist not in SCALE_FAMILIES or set(p.params) != set(SCALE_FAMILIES[p.dist]):
            return f"the {p.dist} prior of {name!r}"
    return None


def latent_scale(reliability: float) -> float:
    """lambda = 1 / sqrt(1 - r) in [1, 3] for a shifted factor of reliability r (glmm_kernel's docstring): after
    the shift, the components of z along the group-level columns are N(0, 1) (the data do not see them), the
    others have posterior variance about 1 - r, so z' = z / lambda along those columns has about the others'
    scale. 1 (no scaling) without a Laplace fit."""
    return float(np.clip(1.0 / np.sqrt(max(1.0 - reliability, 1e-12)), 1.0, 3.0))


def latent_scales_default(design: Design, choice: dict[str, str], laplace) -> dict[str, float]:
    """Per shifted factor (:func:`fixed_effect_shift`), its :func:`latent_scale` from the Laplace reliability."""
    reliability = laplace_reliability(design, laplace)
    return {name: latent_scale(reliability[name]) for name in fixed_effect_shift(design, choice)}


def partial_weights_default(design: Design, choice: dict[str, str], laplace) -> dict[str, float]:
    """Per shifted factor with one random coefficient, w = 1 - r in [0.1, 1] from its Laplace reliability r: the
    kernel samples z' = u / tau^w (glmm_kernel's docstring; partial non-centring, Papaspiliopoulos, Roberts &
    Skold 2003, whose weight for a normal two-level model is 1 - r). 1 (non-centred) without a Laplace fit."""
    reliability = laplace_reliability(design, laplace)
    return {name: float(np.clip(1.0 - reliability[name], 0.1, 1.0)) for name in fixed_effect_shift(design, choice)
            if design.factor(name).n_coef == 1}


def row_score_information(outcome: GLMOutcome, eta: np.ndarray, shape: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the score g_i = dl_i/deta_i and the Fisher information h_i = E(-d^2 l_i/deta_i^2) at ``eta``
    (kernel families): binomial logit y - n p and n p (1 - p); Poisson log y - mu and mu; negative binomial log
    k (y - mu) / (k + mu) and k mu / (k + mu) (k = ``shape``)."""
    y, name = outcome.y.astype(float), outcome.family.name
    if name in ("binomial", "bernoulli"):
        p = 1.0 / (1.0 + np.exp(-eta))
        return y - outcome.size * p, outcome.size * p * (1.0 - p)
    mu = np.exp(eta)
    if name == "poisson":
        return y - mu, mu
    return shape * (y - mu) / (shape + mu), shape * mu / (shape + mu)


def conditional_centring_default(design: Design, outcome: GLMOutcome, choice: dict[str, str],
                                 laplace) -> dict[str, np.ndarray]:
    """Per observation-level factor (one group per row) that is non-centred with one coefficient, the (J, 2) table
    of (c_j, h_j) of its conditional centring (glmm_kernel's docstring): the likelihood of its effect u_j taken as
    Gaussian, l_j(u) ~ c_j u - h_j u^2 / 2, from the Laplace fit's linear predictor eta_i and its mode u0_j:
    h_j = sum_i z_i^2 h_i, c_j = sum_i z_i (g_i + h_i z_i u0_j) over group j's rows, with the score g_i and
    information h_i of :func:`row_score_information`. Then z_j given tau is about N(tau c_j / (1 + tau^2 h_j),
    1 / (1 + tau^2 h_j)), which the kernel samples as z'_j ~ about N(0, 1). Empty without a Laplace fit (or when
    it gives no linear predictor or modes)."""
    if laplace is None:
        return {}
    out = {}
    for name, how in choice.items():
        f = design.factor(name)
        if how == "centred" or f.n_coef != 1 or f.n_groups != design.n_obs:
            continue
        try:
            eta = np.asarray(laplace.predict(type="link"), dtype=float)
            mode = laplace.random_effects(name)["estimate"].to_numpy(dtype=float)
        except (AttributeError, KeyError, ValueError):
            return {}
        if eta.shape != (design.n_obs,) or mode.shape != (f.n_groups,):
            return {}
        score, information = row_score_information(outcome, eta, _laplace_shape(laplace))
        z = f.Z[:, 0]
        h = np.bincount(f.codes, z * z * information, f.n_groups)
        c = np.bincount(f.codes, z * (score + information * z * mode[f.codes]), f.n_groups)
        if np.all(np.isfinite(c)) and np.all(np.isfinite(h)) and np.all(h >= 0):
            out[name] = np.column_stack([c, h])
    return out


def build_kernel(design: Design, outcome: GLMOutcome, priors: PriorSet, shape: Prior | None,
                 choice: dict[str, str], laplace, latent_scales: Mapping | None = None,
                 partial_weights: Mapping | None = None, conditional: Mapping | None = None):
    """Pack the model for :mod:`.glmm_kernel`, with a start at the Laplace estimates when there are some;
    ``latent_scales``: per shifted factor, lambda (None: :func:`latent_scales_default`); ``partial_weights``:
    per shifted factor with one coefficient, w (None: :func:`partial_weights_default`); ``conditional``: per
    non-centred factor with one coefficient that is not partially centred, the (J, 2) table (c_j, h_j) of its
    conditional centring (None: :func:`conditional_centring_default`). A factor these leave out is not scaled
    (lambda 1), not partially centred (w 1) or not conditionally centred; entries for other factors are ignored."""
    from scipy import special

    from .glmm_kernel import FAMILY_CODES, SCALE_CODE, SCALE_FAMILIES, pack

    family = outcome.family
    y, size = outcome.y.astype(float), outcome.size.astype(float)
    if family.name in ("binomial", "bernoulli"):
        constant = float(np.sum(special.gammaln(size + 1) - special.gammaln(y + 1) - special.gammaln(size - y + 1)))
    else:
        constant = -float(np.sum(special.gammaln(y + 1)))
    fixed = [priors.fixed[name] for name in design.fixed_names]
    beta_mu = np.array([float(p.params.get("mu", 0.0)) for p in fixed])
    beta_sd = np.array([float(p.params["sigma"]) if p.dist == "Normal" else 0.0 for p in fixed])
    weights = centre_weights(design, choice)
    shift = fixed_effect_shift(design, choice)
    if latent_scales is None:
        latent_scales = latent_scales_default(design, choice, laplace)
    if partial_weights is None:
        partial_weights = partial_weights_default(design, choice, laplace)
    scales = {k: float(v) for k, v in latent_scales.items() if k in shift}
    partial = {k: float(v) for k, v in partial_weights.items() if k in shift and design.factor(k).n_coef == 1}
    if conditional is None:
        conditional = conditional_centring_default(design, outcome, choice, laplace)
    conditional = {k: np.asarray(v, dtype=float) for k, v in conditional.items()
                   if choice[k] != "centred" and design.factor(k).n_coef == 1 and partial.get(k, 1.0) == 1.0}
    # start at the Laplace estimates: beta' = beta0 + shift(u) with the non-centred effects' start u = 0, so beta0
    beta0 = _laplace_beta(design, laplace)
    A = standardising_map(design.X)
    constant += float(np.linalg.slogdet(A)[1])  # the density of beta_s = A^{-1} beta: |A| times beta's
    coords: dict[str, list] = {"fixed": list(design.fixed_names)}
    layout = [("beta", (design.n_fixed,), ("fixed",))]
    factors, start, jitter = [], [np.linalg.solve(A, beta0)], [np.full(design.n_fixed, 0.1)]
    for f in design.factors:
        prior = priors.tau[f.name]
        values = [np.broadcast_to(prior.params[k], (f.n_coef,)) for k in SCALE_FAMILIES[prior.dist]]
        rows = np.zeros((f.n_coef, 4))
        rows[:, 0] = SCALE_CODE[prior.dist]
        rows[:, 3] = prior.on == "variance"
        if values:
            rows[:, 1], rows[:, 2] = values[0], values[-1]
        correlated = f.n_coef > 1 and len(f.blocks) == 1
        centred = choice[f.name] == "centred"
        factors.append({"q": f.n_coef, "J": f.n_groups, "correlated": correlated, "centred": centred,
                        "eta": float(priors.corr[f.name].eta) if correlated else 1.0, "codes": f.codes,
                        "Z": f.Z, "centre": weights.get(f.name, np.zeros(0)), "prior": rows,
                        "shift": shift.get(f.name, []), "latent_scale": scales.get(f.name, 1.0),
                        "partial": partial.get(f.name, 1.0),
                        **({"conditional": conditional[f.name]} if f.name in conditional else {}),
                        "shift_values": np.array([design.X[_first_rows(f), k] for k, _, _ in shift.get(f.name, [])])})
        if scales.get(f.name, 1.0) != 1.0:  # the Jacobian of z' -> z: lambda^rank(G)
            columns = sorted({k for k, _, _ in shift[f.name]})
            constant += np.linalg.matrix_rank(design.X[np.ix_(_first_rows(f), columns)]) * np.log(scales[f.name])
        tau0 = _laplace_tau(f, laplace)
        effects = np.zeros((f.n_groups, f.n_coef))
        if centred:
            effects += weights[f.name] @ beta0
        scale0 = np.log(tau0**2) if prior.on == "variance" else np.log(tau0)
        n_corr = f.n_coef * (f.n_coef - 1) // 2 if correlated else 0
        start += [effects.ravel(), np.broadcast_to(scale0, (f.n_coef,)), np.zeros(n_corr)]
        effect_jitter = 0.5 * tau0 if centred else np.full(f.n_coef, 0.5)
        jitter += [np.tile(effect_jitter, f.n_groups), np.ones(f.n_coef), np.ones(n_corr)]
        coef_dim = f"{f.name}__coef"
        coords[coef_dim] = list(f.coef_names)
        coords[f.name] = [str(v) for v in f.levels]
        layout.append((f"tau_{f.name}", (f.n_coef,), (coef_dim,)))
        if correlated:
            corr_dims = (f"corr_{f.name}_dim_0", f"corr_{f.name}_dim_1")
            coords |= {d: [str(c) for c in f.coef_names] for d in corr_dims}
            layout.append((f"corr_{f.name}", (f.n_coef, f.n_coef), corr_dims))
        layout.append((f"u_{f.name}", (f.n_groups, f.n_coef), (f.name, coef_dim)))
        layout.append((f"{'coef' if centred else 'z'}_{f.name}", (f.n_groups, f.n_coef), (f.name, coef_dim)))
    shape_row = None
    if family.name == "negative_binomial":
        values = [float(shape.params[k]) for k in SCALE_FAMILIES[shape.dist]]
        shape_row = (SCALE_CODE[shape.dist], values[0] if values else 1.0, values[-1] if values else 1.0, 0.0)
        k0 = _laplace_shape(laplace)
        start.append([np.log(k0)])
        jitter.append([1.0])
        layout.append(("shape", (), ()))
    X, offset = design.X, outcome.offset
    if family.name in ("binomial", "bernoulli"):
        X, offset, y, size = merge_binomial_rows(X, offset, y, size, factors)
    return pack(FAMILY_CODES[family.name, family.link.name], y, size, offset, constant, X, A,
                beta_mu, beta_sd, factors, shape_row, np.concatenate([np.ravel(s) for s in start]),
                np.concatenate([np.ravel(j) for j in jitter]), layout, coords)


def merge_binomial_rows(X, offset, y, size, factors: list[dict]):
    """Rows with the same linear predictor (same x_i, offset_i and, per factor, group and z_i) merged into one
    binomial row with the summed successes and trials: sum_i [y_i eta - n_i log(1 + e^eta)] is the merged row's
    term, so the log density is unchanged (the binomial coefficients stay in the constant, computed from the
    rows as given). Contraception (1,934 Bernoulli rows) has 1,547 distinct ones. ``factors``' codes and Z are
    replaced by the merged rows'."""
    key = np.column_stack([X, offset, *(np.column_stack([f["codes"], f["Z"]]) for f in factors)])
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    if len(first) == len(key):
        return X, offset, y, size
    order = np.argsort(first)  # merged rows in the order of their first row in the data
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rows, first = rank[inverse.ravel()], first[order]
    for f in factors:
        f["codes"], f["Z"] = f["codes"][first], f["Z"][first]
    return X[first], offset[first], np.bincount(rows, y, len(first)), np.bincount(rows, size, len(first))


def standardising_map(X: np.ndarray) -> np.ndarray:
    """A with beta = A beta_s, beta_s the coefficients of the columns (X - m) / s (centred when there is an
    intercept column; constant columns kept as they are)."""
    constant = np.ptp(X, axis=0) == 0
    intercept = np.flatnonzero(constant & np.all(X == 1.0, axis=0))
    scale = np.where(constant, 1.0, X.std(axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    A = np.diag(1.0 / scale)
    if len(intercept):
        centre = np.where(constant, 0.0, X.mean(axis=0))
        A[intercept[0]] -= centre / scale
    return A


def kernel_coordinates(design: Design, priors: PriorSet, shape: Prior | None,
                       choice: dict[str, str]) -> list[tuple[str, tuple[int, ...]]]:
    """The kernel's unconstrained coordinates in order, named as the value variables of the PyMC graph
    (:func:`glmm_pymc_model` with the same ``choice``), with their shapes: to compare the two densities."""
    fixed = [priors.fixed[name] for name in design.fixed_names]
    if len({(p.dist, tuple(p.params)) for p in fixed}) == 1:
        out = [("beta", (design.n_fixed,))]
    else:
        out = [(f"beta[{name}]", ()) for name in design.fixed_names]
    for f in design.factors:
        kind = "coef" if choice[f.name] == "centred" else "z"
        scale = "tau2" if priors.tau[f.name].on == "variance" else "tau"
        out += [(f"{kind}_{f.name}", (f.n_groups, f.n_coef)), (f"{scale}_{f.name}_log__", (f.n_coef,))]
        if f.n_coef > 1 and len(f.blocks) == 1:
            out.append((f"corr_{f.name}_cholesky_corr__", (f.n_coef * (f.n_coef - 1) // 2,)))
    if shape is not None:
        out.append(("shape_log__", ()))
    return out


def _laplace_beta(design: Design, laplace) -> np.ndarray:
    if laplace is None:
        return np.zeros(design.n_fixed)
    return laplace.fixed_effects["estimate"].reindex(list(design.fixed_names)).fillna(0.0).to_numpy(dtype=float)


def _laplace_tau(f, laplace) -> np.ndarray:
    if laplace is None:
        return np.full(f.n_coef, 0.5)
    return np.clip(np.sqrt(np.diag(laplace.tau[f.name].to_numpy(dtype=float))), 0.1, 10.0)


def _laplace_shape(laplace) -> float:
    try:
        return float(np.clip(laplace.family_parameters["shape"], 0.05, 1e3))
    except (AttributeError, KeyError, TypeError):
        return 1.0


# --- prior predictive -----------------------------------------------------------------------------------
def prior_predictive(design: Design, outcome: GLMOutcome, priors=None, draws: int = 1000,
                     random_seed: int | None = None):
    """Draws from the prior predictive distribution (the same priors as ``fit(method="bayes", priors=...)``):
    per draw, gamma, T and u from the priors, each row's mean mu_i = g^-1(eta_i) (a probability, or an expected
    count with the offset) and an outcome y_i from the family: the parameters by PyMC's ``sample_prior_predictive``
    on :func:`glmm_pymc_model`, the outcomes by NumPy (seeded from ``random_seed``). Counts are floats: where a
    prior draw puts the expected count mu above 1e15, y is mu itself (relative Poisson SD below 3e-8; integer
    sampling would overflow). Returns :class:`~.samples.GLMMPriorDraws`. Flat priors are improper
    and have no prior predictive distribution: refused."""
    import pymc as pm

    from .sampling import check_sampler_options

    check_sampler_options(draws=draws, tune=0, chains=1, random_seed=random_seed, target_accept=0.9,
                          sampler="pymc", progressbar=False)
    prior_set, shape = resolve_glmm_priors(design, outcome, priors)
    improper = [name for name, p in [*prior_set.fixed.items(), *((f"tau_{k}", v) for k, v in prior_set.tau.items())]
                if p.dist in ("Flat", "HalfFlat")]
    if improper:
        raise OptionError(f"No prior predictive distribution: the prior of {', '.join(improper)} is flat "
                          "(improper). Give proper priors, e.g. the defaults (priors=None).")
    model = glmm_pymc_model(design, outcome, priors)
    names = ["beta", *(f"u_{f.name}" for f in design.factors), *(["shape"] if shape is not None else [])]
    prior = pm.sample_prior_predictive(draws=int(draws), model=model, var_names=names,
                                       random_seed=random_seed)["prior"]

    def flat(name):
        values = prior[name].values
        return values.reshape(-1, *values.shape[2:])

    eta = flat("beta") @ design.X.T + outcome.offset
    for f in design.factors:
        eta += np.einsum("iq,siq->si", f.Z, flat(f"u_{f.name}")[:, f.codes])
    mu = outcome.family.link.inverse(eta)
    rng = np.random.default_rng(None if random_seed is None else [int(random_seed), 4])
    if outcome.family.counts:
        if shape is not None:  # negative binomial: Poisson with a Gamma(k, mu / k) mean
            k = flat("shape")[:, None]
            mu_draw = rng.gamma(k, np.minimum(mu, 1e300) / k)
        else:
            mu_draw = mu
        huge = ~(mu_draw <= LARGEST_POISSON_MEAN)
        y = np.where(huge, mu_draw, rng.poisson(np.where(huge, 0.0, mu_draw)).astype(float))
    else:
        y = rng.binomial(outcome.size.astype(np.int64), mu)
    return GLMMPriorDraws(outcome, mu, y, prior_table(prior_set, shape), random_seed)


# --- fitting --------------------------------------------------------------------------------------------
def default_target_accept(design: Design, conditional: Mapping | None = None) -> float:
    """NUTS's target acceptance rate: 0.9; 0.95 when a factor has one row per group (an observation-level
    effect) that is not conditionally centred (``conditional``: the factors that are,
    :func:`conditional_centring_default`); 0.85 when every observation-level factor is.

    Non-centred observation-level effects are prior-dominated wherever the data show little overdispersion, and
    log tau then has the prior's long left tail, which larger steps cross badly: Poisson with exposure and
    (1 | g) + (1 | obs), 595 rows, 4 x 1,000 draws, seeds 1 and 3: tau_obs min bulk ESS 395 / 377 and R-hat
    1.0135 / 1.0102 at 0.9, ESS 808 / 737 and R-hat 1.0066 / 1.0043 at 0.95, for 1.5x the CPU time (31 instead of
    15 gradients per draw), so more ESS per CPU second too. Elsewhere 0.95 halved the ESS per second
    (Contraception, docs/hglm_bayes.md). Conditionally centred, the same model had tau_obs min bulk ESS
    1,624-2,218 at 0.8 (seeds 1-6, 15 gradients per draw, R-hat <= 1.0030), 1,372-1,743 at 0.85 (15 per draw),
    993-1,659 at 0.9 (15 per draw) and 1,774-1,926 at 0.95 (seeds 1-3, 31 per draw), 0 divergences at each; but
    cbpp with (1 | herd) + (1 | obs) (herds prior-dominated, reliability 0.06) had 1 divergence on 3 of seeds 1-6
    at 0.8 and none at 0.85, hence 0.85 (benchmarks/results/bayes_olre_geometry.md)."""
    observation_level = [f.name for f in design.factors if f.n_groups == design.n_obs]
    if not observation_level:
        return 0.9
    return 0.85 if all(name in (conditional or {}) for name in observation_level) else 0.95


def fit_bayes_glmm(design: Design, outcome: GLMOutcome, *, draws: int = 1000, tune: int = 1000, chains: int = 4,
                   random_seed: int | None = None, priors=None, sampler: str = "nutpie",
                   target_accept: float | None = None, parameterization: Mapping | None = None,
                   progressbar: bool = False,
                   laplace_fit: Callable[[], object] | None = None, **unknown):
    """Sample the exact posterior of a hierarchical GLM (module docstring); returns a
    :class:`~.samples.GLMMPosteriorSample`. Options as for Gaussian models (:func:`bayeshlm.bayes.fit_bayes`).
    ``laplace_fit``: a callable returning the Laplace ML fit of the same model (``HLM.fit`` passes
    ``fit_glmm``), used for the geometry and the start only; without it every factor is non-centred and the
    sampler starts from zeros. ``target_accept``: by default :func:`default_target_accept`."""
    from .diagnostics import diagnose, warn_if_problems
    from .sampling import check_sampler_options, new_seed

    if unknown:
        name = next(iter(unknown))
        raise OptionError(f"Unknown option {name!r} for method='bayes' with family={outcome.family.name!r}."
                          f"{closest_names(name, OPTIONS)} Options: {', '.join(OPTIONS)}.")
    check_sampler_options(draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                          target_accept=0.9 if target_accept is None else target_accept, sampler=sampler,
                          progressbar=progressbar)  # the default target_accept depends on the geometry (below)
    prior_set, shape = resolve_glmm_priors(design, outcome, priors)
    if parameterization is not None and not isinstance(parameterization, Mapping):
        raise OptionError(f"parameterization={parameterization!r}: give a dict {{factor: 'centred' or "
                          "'non-centred'}, e.g. parameterization={'herd': 'non-centred'}.")
    started = time.perf_counter()
    laplace = laplace_start(laplace_fit)
    reliability = laplace_reliability(design, laplace)
    choice = choose_parameterization(design, reliability, parameterization)
    laplace_seconds = time.perf_counter() - started
    seed = new_seed() if random_seed is None else int(random_seed)
    not_covered = kernel_covers(design, outcome, prior_set, shape)
    use_kernel = sampler == "nutpie" and not_covered is None
    conditional = conditional_centring_default(design, outcome, choice, laplace) if use_kernel else {}
    if target_accept is None:
        target_accept = default_target_accept(design, conditional)
    tree, record = _sample(design, outcome, priors, prior_set, shape, choice, laplace, conditional, use_kernel,
                           sampler=sampler, draws=int(draws), tune=int(tune), chains=int(chains), seed=seed,
                           target_accept=float(target_accept), progressbar=bool(progressbar))
    record |= {"parameterization": choice, "reliability": {k: round(v, 3) for k, v in reliability.items()},
               "laplace_seconds": round(laplace_seconds, 3),
               "kernel_not_used_because": None if use_kernel else (not_covered or f"sampler={sampler!r}")}
    var_names = ["beta", *(f"tau_{f.name}" for f in design.factors),
                 *(f"corr_{f.name}" for f in design.factors if f"corr_{f.name}" in tree["posterior"]),
                 *(["shape"] if shape is not None else [])]
    diagnostics, messages = diagnose(tree, var_names, int(chains))
    if laplace is None and laplace_fit is not None:
        messages = ["The Laplace fit could not be made (e.g. separation), so every factor is non-centred and the "
                    "sampler starts from zeros; the posterior is still exact, but check the fixed effects' "
                    "priors carry the information the data lack.", *messages]
    warn_if_problems(messages)
    return GLMMPosteriorSample(design, outcome, tree, prior_table(prior_set, shape), record, diagnostics, messages,
                               laplace, prior_set, shape)


def _sample(design, outcome, priors, prior_set, shape, choice, laplace, conditional, use_kernel, *, sampler, draws,
            tune, chains, seed, target_accept, progressbar):
    import os

    import xarray as xr

    from .sampling import check_complete, sample_nutpie, sample_pymc

    cores = min(chains, os.cpu_count() or 1)
    start = time.perf_counter()
    progress.step(progress.COMPILING if sampler == "nutpie" else "building the PyMC model...")
    options = {"draws": draws, "tune": tune, "chains": chains, "cores": cores, "seed": seed,
               "target_accept": target_accept, "progressbar": progressbar}
    if use_kernel:
        from .glmm_kernel import callbacks, extension_callbacks, nutpie_model

        misses = callbacks.cache_info().misses
        shift = fixed_effect_shift(design, choice)
        scales = latent_scales_default(design, choice, laplace)
        weights = partial_weights_default(design, choice, laplace)
        kernel = build_kernel(design, outcome, prior_set, shape, choice, laplace, scales, weights, conditional)
        compiled = nutpie_model(kernel)
        reused = callbacks.cache_info().misses == misses
        likelihood_rows = kernel.n_rows
        compiled_at = time.perf_counter()
        tree = sample_nutpie(compiled, **options, warmup=False)
        log_density = ("compiled HGLM kernel (C extension)" if callbacks() is extension_callbacks()
                       else "compiled HGLM kernel (Numba)")
        shifted = shift_record(design, shift)  # the maps the kernel was built with
        latent = {name: round(value, 3) for name, value in scales.items()}
        partial = {name: round(value, 3) for name, value in weights.items()}
        conditioned = {name: round(float(table[:, 1].mean()), 3) for name, table in conditional.items()}
    else:
        model = glmm_pymc_model(design, outcome, priors, choice=choice)
        reused = False
        likelihood_rows = design.n_obs
        if sampler == "nutpie":
            import nutpie

            compiled = nutpie.compile_pymc_model(model, backend="numba")
            compiled_at = time.perf_counter()
            tree = sample_nutpie(compiled, **options)
        else:
            compiled_at = start
            tree = sample_pymc(model, "compiling and ", **options)
        log_density = "PyMC graph"
        shifted = latent = partial = conditioned = None
    end = time.perf_counter()
    check_complete(tree, draws, chains)
    keep = ["beta", "shape", *(f"{kind}_{f.name}" for f in design.factors
                               for kind in ("tau", "corr", "u", "z", "coef"))]
    posterior = tree["posterior"].to_dataset()
    posterior = posterior[[v for v in keep if v in posterior.data_vars]]
    for f in design.factors:  # a prior on the variance: the graph's random variable is tau2
        if prior_set.tau[f.name].on == "variance":
            posterior[f"tau2_{f.name}"] = posterior[f"tau_{f.name}"] ** 2
    stats = tree["sample_stats"].to_dataset()
    stats = stats[[v for v in stats.data_vars if stats[v].dtype != object]]
    tree = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats})
    record = {"sampler": sampler, "log_density": log_density, "draws": draws, "tune": tune, "chains": chains,
              "cores": cores, "seed": seed, "target_accept": target_accept, "compiled_model_reused": reused,
              "compile_seconds": round(compiled_at - start, 3), "sampling_seconds": round(end - compiled_at, 3),
              "likelihood_rows": likelihood_rows, "shifted": shifted,
              "latent_scale": latent, "partial_centring": partial, "conditional_centring": conditioned}
    return tree, record
