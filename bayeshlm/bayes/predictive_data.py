"""Posterior predictive draws of the data and pointwise log-likelihoods of a Gaussian Bayesian fit, added to its
DataTree so ArviZ's checks and cross-validation work on it (``az.plot_ppc_dist``, ``az.loo``, ``az.compare``).

The sampler integrates the group effects out (a Potential on sufficient statistics), so PyMC has no per-row
likelihood to replay; instead the draws are computed here from the posterior, whose group effects u were drawn
from their exact conditional posterior given (gamma, T, sigma^2) (:func:`bayeshlm.bayes.marginal.draw_group_effects`):

- predictive: y_rep,i = x_i'gamma + z_i'u_j + e_i, e_i ~ N(0, sigma^2), per draw;
- conditional log-likelihood: log N(y_i | x_i'gamma + z_i'u_j, sigma^2) per draw and row;
- marginal log-likelihood: log N(y_j | X_j gamma, Z_j T Z_j' + sigma^2 I) per draw and group, the group's data
  with its effects integrated out (one grouping factor; for two nested factors, per top-level group with the
  effects of both levels integrated out).

Level-1 errors: one sigma^2, known variances V_i (``known_variance=``), or one sigma_k^2 per stratum
(``level1_variance=``): row i's precision in draw s is w_i c_s,k(i) (:func:`_level1_precision`), and sigma^2 I
above stands for that diagonal R_j. AR(1) errors enter the marginal log-likelihood only (R_j tridiagonal in
precision, :class:`_Precision`); rows are then not independent, so neither per-row values nor replicates.

Why the marginal one for hierarchical models: leaving one row out while keeping that row's group effect u_j
(drawn using the row itself) asks how well the model predicts another observation of a group it knows, and
the importance weights of PSIS-LOO are unstable when each u_j rests on few rows (large Pareto k). Leaving
a whole group out asks how well it predicts a new group -- the question a multilevel model exists to answer --
and the integrated likelihood has no u_j to be refitted, so the weights are far better behaved.
The marginal density uses the determinant lemma and Woodbury's identity on the per-group sufficient
statistics: with M = I + L'Z_j'R_j^{-1}Z_j L (T = LL'),
log|V_j| = log|R_j| + log|M| and r'V_j^{-1}r = r'R_j^{-1}r - v'M^{-1}v, v = L'Z_j'R_j^{-1}r. The sums are
taken per stratum once and weighted by each draw's c_s,k.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..design.design import group_sums
from ..design.prediction_rows import PredictionRows, prediction_rows
from ..errors import OptionError, closest_names
from .units import centred_outcome

LOG_LIKELIHOOD_KINDS = ("conditional", "marginal")


def _check_gaussian_rows(fit, what: str, correlated: bool = False) -> None:
    """Refuse aggregates, and level-1 error models other than independent ones (and AR(1) if ``correlated``)."""
    if not fit.design.rows_available:
        raise OptionError(f"{what} needs the data's rows; this model was built from aggregates (a Dask DataFrame). "
                          "Build the model from a pandas DataFrame.")
    errors = fit.design.error_structure  # a Bayes fit holds one sigma^2, strata or AR(1) errors alone
    if errors.correlation is None or correlated:
        return
    covered = "one sigma^2, one per stratum of level1_variance=, or known variances"
    raise OptionError(f"{what} for a model with level-1 errors '{errors.describe()}' is not "
                      f"implemented yet; it covers independent level-1 errors ({covered})"
                      + (" and, for kind='marginal', AR(1) errors." if not correlated else "."))


def _level1_precision(fit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(strata, w, c) of independent level-1 errors: row i's precision 1/Var(e_i) in draw s is w[i] * c[s, strata[i]]
    (draws flattened over chains). Known variances V_i: w = 1/V, c = 1; one sigma^2: w = 1, c = 1/sigma^2; one
    sigma_k^2 per stratum k: w = 1, c[:, k] = 1/sigma_k^2."""
    design = fit.design
    posterior = fit.posterior["posterior"]
    n, draws = design.n_obs, posterior.sizes["chain"] * posterior.sizes["draw"]
    if design.known_variance is not None:
        return np.zeros(n, dtype=np.int64), 1.0 / design.known_variance, np.ones((draws, 1))
    strata = design.error_structure.variance.strata(design.residual)
    if strata is not None:
        sigma = fit.draws("sigma_strata").transpose("chain", "draw", "stratum").values.reshape(draws, -1)
        return strata.codes, np.ones(n), 1.0 / sigma ** 2
    sigma = fit.draws("sigma").transpose("chain", "draw").values.reshape(draws, 1)
    return np.zeros(n, dtype=np.int64), np.ones(n), 1.0 / sigma ** 2


def _row_sd(fit) -> np.ndarray:
    """(chain, draw, n) draws of each row's level-1 SD, or (chain, draw, 1) when all rows share one."""
    strata, w, c = _level1_precision(fit)
    shape = (fit.posterior["posterior"].sizes["chain"], fit.posterior["posterior"].sizes["draw"])
    if c.shape[1] == 1 and np.all(w == 1):
        return (1.0 / np.sqrt(c)).reshape(*shape, 1)
    return (1.0 / np.sqrt(w * c[:, strata])).reshape(*shape, -1)


class _Precision:
    """R^-1 = sum_m c[s, m] R_m in draw s, each R_m a fixed matrix given by parts (m, rows, weights): the part
    adds weights_e * a_e b_e' to A'R_m B, where row e is the sum of the rows ``rows[0][e]``, ``rows[1][e]``, ...
    Independent errors: one part per stratum, rows of that stratum with weights w. AR(1) errors (stationary
    variance sigma^2, correlation phi, consecutive occasions; see ``bayeshlm.level1.ar1_pairs``):
    R^-1 = [I - phi P + phi^2 D] / ((1 - phi^2) sigma^2), P the neighbour pairs (a_t b_t+1' + a_t+1 b_t' =
    (a_t + a_t+1)(b_t + b_t+1)' - a_t b_t' - a_t+1 b_t+1'), D the interior occasions; log|R_j| = n_j log sigma^2 +
    (pairs in j) log(1 - phi^2)."""

    def __init__(self, fit):
        design = fit.design
        n = design.n_obs
        correlation = design.error_structure.correlation
        if correlation is not None:
            pairs = correlation.pairs(design.residual, design.factor(design.residual.unit).codes)
            everyone, ones = np.arange(n), np.ones(n)
            self.parts = [(0, (everyone,), ones), (1, (pairs.first, pairs.second), np.ones(pairs.n_pairs)),
                          (1, (everyone,), -pairs.in_pairs), (2, (everyone,), pairs.interior)]
            phi = fit.draws("phi").transpose("chain", "draw").values.reshape(-1)
            sigma2 = fit.draws("sigma").transpose("chain", "draw").values.reshape(-1) ** 2
            self.c = np.column_stack([np.ones_like(phi), -phi, phi ** 2]) / ((1 - phi ** 2) * sigma2)[:, None]
            self._pair_rows, self._log_terms = pairs.first, (np.log(sigma2), np.log(1 - phi ** 2))
        else:
            strata, w, self.c = _level1_precision(fit)
            self.parts = [(k, (np.flatnonzero(strata == k),), w[strata == k]) for k in range(self.c.shape[1])]
            self._strata, self._w = strata, w

    def sums(self, codes: np.ndarray, n_groups: int, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """(K, J, a, b): A_j'R_m,j B_j for every component m and group j (``codes``: each row's group)."""
        out = np.zeros((self.c.shape[1], n_groups, A.shape[1], B.shape[1]))
        for m, rows, weights in self.parts:
            A_rows, B_rows = sum(A[r] for r in rows), sum(B[r] for r in rows)
            out[m] += group_sums(codes[rows[0]], A_rows * weights[:, None], B_rows, n_groups)
        return out

    def log_det(self, codes: np.ndarray, n_groups: int) -> np.ndarray:
        """(S, J) log|R_j| per draw and group."""
        n_j = np.bincount(codes, minlength=n_groups)
        if hasattr(self, "_pair_rows"):
            log_sigma2, log_one_minus = self._log_terms
            pairs_j = np.bincount(codes[self._pair_rows], minlength=n_groups)
            return np.outer(log_sigma2, n_j) + np.outer(log_one_minus, pairs_j)
        K = self.c.shape[1]
        counts = np.bincount(self._strata * n_groups + codes, minlength=K * n_groups).reshape(K, n_groups)
        return np.bincount(codes, weights=-np.log(self._w), minlength=n_groups)[None] - np.log(self.c) @ counts


def _per_draw(c: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """sum_m c[s, m] sums[m, ...]: the component sums weighted by draw s's precisions."""
    return np.tensordot(c, sums, axes=(1, 0))


def _observed(fit) -> xr.Dataset:
    name = fit.design.outcome_name
    return xr.Dataset({name: ("obs", fit.design.y)}, coords={"obs": np.arange(fit.design.n_obs)})


def posterior_predictive(fit, random_seed=None) -> xr.DataTree:
    """Add ``posterior_predictive`` (the outcome's replicates, dims chain, draw, obs) and ``observed_data`` to
    ``fit.posterior`` and return it."""
    _check_gaussian_rows(fit, "Posterior predictive draws")
    rows = prediction_rows(fit.design, None)
    rng = seeded_rng(fit, random_seed, 4)
    eta = linear_predictor_draws(fit, rows, "conditional", new_effects=False, rng=rng)
    y_rep = eta  # replicated in place: y_rep = eta + e
    y_rep += _row_sd(fit) * rng.standard_normal(eta.shape)
    beta = fit.draws("beta")
    replicates = xr.Dataset({fit.design.outcome_name: (("chain", "draw", "obs"), y_rep)},
                            coords={"chain": beta.chain.values, "draw": beta.draw.values,
                                    "obs": np.arange(fit.design.n_obs)})
    fit.posterior["posterior_predictive"] = xr.DataTree(replicates)
    fit.posterior["observed_data"] = xr.DataTree(_observed(fit))
    return fit.posterior


def log_likelihood(fit, kind: str = "conditional", factor: str | None = None) -> xr.DataTree:
    """Add a ``log_likelihood`` group (the outcome's pointwise log-likelihood per draw; replaced if present) and
    ``observed_data`` to ``fit.posterior`` and return it. ``kind="conditional"``: per row, dim ``obs``;
    ``kind="marginal"``: per group of ``factor`` (the model's only grouping factor, or the top one of two nested
    factors), dim named after it."""
    if kind not in LOG_LIKELIHOOD_KINDS:
        raise OptionError(f"kind={kind!r} is not an option.{closest_names(str(kind), LOG_LIKELIHOOD_KINDS)} Use "
                          "'conditional' (per observation, given the drawn group effects) or 'marginal' (per group, "
                          "its effects integrated out: leave-one-group-out cross-validation).")
    _check_gaussian_rows(fit, "The pointwise log-likelihood" if kind == "conditional" else
                         "The marginal log-likelihood", correlated=kind == "marginal")
    beta = fit.draws("beta")
    coords = {"chain": beta.chain.values, "draw": beta.draw.values}
    name = fit.design.outcome_name
    if kind == "conditional":
        if factor is not None:
            raise OptionError("factor= applies to kind='marginal' (the groups to leave out).")
        rows = prediction_rows(fit.design, None)
        eta = linear_predictor_draws(fit, rows, "conditional", new_effects=False, rng=np.random.default_rng(0))
        sd = _row_sd(fit)
        values = -0.5 * np.log(2 * np.pi) - np.log(sd) - 0.5 * ((fit.design.y - eta) / sd) ** 2
        data = xr.Dataset({name: (("chain", "draw", "obs"), values)}, coords=coords | {"obs": np.arange(rows.n)})
    else:
        group, values = _marginal_by_group(fit, factor)
        data = xr.Dataset({name: (("chain", "draw", group.name), values)},
                          coords=coords | {group.name: [str(v) for v in group.levels]})
    fit.posterior["log_likelihood"] = xr.DataTree(data)
    fit.posterior["observed_data"] = xr.DataTree(_observed(fit))
    return fit.posterior


def _marginal_by_group(fit, factor: str | None):
    """(factor, (chain, draw, J) array) of log N(y_j | X_j gamma, Z_j T Z_j' + R_j) (module docstring)."""
    design = fit.design
    chain = design.chain
    if len(design.factors) == 2 and len(chain) == 2:
        top = chain[1]
        if factor is not None and design.factor(factor).name != top.name:
            raise OptionError(f"kind='marginal' of a three-level model leaves out one {top.name!r} group at a time "
                              f"(with its {chain[0].name!r} groups inside); factor={factor!r} is not that factor.")
        return top, _marginal_two_levels(fit, chain)
    if len(design.factors) != 1:
        raise OptionError(f"kind='marginal' integrates out the group effects of one grouping factor or of two nested "
                          f"ones; this model has {', '.join(design.factor_names)} ({design.structure}), whose groups "
                          "do not split the data into independent parts. Use kind='conditional'.")
    f = design.factor(fit.factor_name(factor))
    J = f.n_groups
    precision = _Precision(fit)
    c = precision.c
    y, beta = centred_outcome(design, fit.draws("beta").transpose("chain", "draw", "fixed").values)
    shape = beta.shape[:2]
    beta = beta.reshape(-1, beta.shape[-1])

    def sums(A, B):
        return precision.sums(f.codes, J, A, B)

    y1 = y[:, None]
    ZtZ = _per_draw(c, sums(f.Z, f.Z))  # (S, J, q, q): Z_j'R_j^-1 Z_j; Ztr: Z_j'R_j^-1 r_j
    Ztr = _per_draw(c, sums(f.Z, y1)[..., 0]) - np.einsum("sk,kjqp,sp->sjq", c, sums(f.Z, design.X), beta)
    Xty, XtX = sums(design.X, y1)[..., 0], sums(design.X, design.X)
    yty = sums(y1, y1)[..., 0, 0]
    rr_by_stratum = (yty[None] - 2 * np.einsum("sp,kjp->skj", beta, Xty)
                     + np.einsum("sp,kjpr,sr->skj", beta, XtX, beta))
    rr = np.einsum("sk,skj->sj", c, rr_by_stratum)  # r_j'R_j^-1 r_j
    log_det_R = precision.log_det(f.codes, J)

    L = covariance_cholesky(fit, f.name).reshape(len(beta), f.n_coef, f.n_coef)
    v = np.einsum("sqr,sjq->sjr", L, Ztr)  # L'Z'R^-1 r
    M = np.eye(f.n_coef) + np.einsum("sqa,sjqr,srb->sjab", L, ZtZ, L)
    C = np.linalg.cholesky(M)
    solved = np.linalg.solve(C, v[..., None])[..., 0]
    log_det_V = log_det_R + 2 * np.log(np.diagonal(C, axis1=-2, axis2=-1)).sum(-1)
    quad = rr - (solved ** 2).sum(-1)
    values = -0.5 * (f.group_sizes[None] * np.log(2 * np.pi) + log_det_V + quad)
    return f, values.reshape(*shape, J)


def _marginal_two_levels(fit, chain, chunk: int = 250) -> np.ndarray:
    """(chain, draw, J_top) log N(y_k | X_k gamma, V_k) per top-level group k of a nested chain (inner, top), with
    V_k = blockdiag_c(R_c + Z0_c T0 Z0_c') + Z1_k T1 Z1_k': Woodbury twice. Within inner group c,
    V_c^-1 = R^-1 - R^-1 Z0 L0 M0^-1 L0'Z0' R^-1 (M0 = I + L0'Z0'R^-1 Z0 L0); then over the top group,
    P = sum_c Z1_c'V_c^-1 Z1_c, g = sum_c Z1_c'V_c^-1 r_c, h = sum_c r_c'V_c^-1 r_c, M1 = I + L1'P L1,
    log|V_k| = sum_c log|V_c| + log|M1| and r'V_k^-1 r = h - g'L1 M1^-1 L1'g. Every sum carries R^-1: the
    stratum sums weighted by each draw's precisions."""
    from ..design.design import chain_parents

    design = fit.design
    inner, top = chain
    parent = chain_parents(list(chain))[0]
    precision = _Precision(fit)
    c_draws = precision.c
    centred_y, beta_draws = centred_outcome(design, fit.draws("beta").transpose("chain", "draw", "fixed").values)
    X, y = design.X, centred_y[:, None]
    J0, J1 = inner.n_groups, top.n_groups

    def inner_sums(A, B):
        return precision.sums(inner.codes, J0, A, B)

    def top_sums(A, B):
        return precision.sums(top.codes, J1, A, B)

    A0, B0 = inner_sums(inner.Z, inner.Z), inner_sums(inner.Z, top.Z)
    C0X, C0y = inner_sums(inner.Z, X), inner_sums(inner.Z, y)[..., 0]
    A1, C1X, C1y = top_sums(top.Z, top.Z), top_sums(top.Z, X), top_sums(top.Z, y)[..., 0]
    XtX, Xty, yty = top_sums(X, X), top_sums(X, y)[..., 0], top_sums(y, y)[..., 0, 0]
    log_det_R = precision.log_det(top.codes, J1)

    shape = beta_draws.shape[:2]
    beta_draws = beta_draws.reshape(-1, beta_draws.shape[-1])
    S = len(beta_draws)
    L0_draws = covariance_cholesky(fit, inner.name).reshape(S, inner.n_coef, inner.n_coef)
    L1_draws = covariance_cholesky(fit, top.name).reshape(S, top.n_coef, top.n_coef)
    order = np.argsort(parent, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(parent, minlength=J1))[:-1]])

    def to_top(values: np.ndarray) -> np.ndarray:
        """Sums of (S, J0, ...) over the inner groups of each top group: (S, J1, ...)."""
        return np.add.reduceat(values[:, order], starts, axis=1)

    out = np.empty((S, J1))
    for start in range(0, S, chunk):
        part = slice(start, min(start + chunk, S))
        beta, c, L0, L1 = beta_draws[part], c_draws[part], L0_draws[part], L1_draws[part]
        r0 = _per_draw(c, C0y) - np.einsum("sk,kjqp,sp->sjq", c, C0X, beta)  # Z0'R^-1 r per inner group
        r1 = _per_draw(c, C1y) - np.einsum("sk,kjqp,sp->sjq", c, C1X, beta)
        rr = np.einsum("sk,skj->sj", c, yty[None] - 2 * np.einsum("sp,kjp->skj", beta, Xty)
                       + np.einsum("sp,kjpr,sr->skj", beta, XtX, beta))
        M0 = np.eye(inner.n_coef) + np.einsum("sqa,sjqr,srb->sjab", L0, _per_draw(c, A0), L0)
        K0 = np.linalg.cholesky(M0)
        U = np.linalg.solve(K0, np.einsum("sqa,sjqb->sjab", L0, _per_draw(c, B0)))  # K0^-1 L0'Z0'R^-1 Z1
        v = np.linalg.solve(K0, np.einsum("sqa,sjq->sja", L0, r0)[..., None])[..., 0]  # K0^-1 L0'Z0'R^-1 r
        log_det_M0 = 2 * np.log(np.diagonal(K0, axis1=-2, axis2=-1)).sum(-1)
        P = _per_draw(c, A1) - to_top(np.einsum("sjqa,sjqb->sjab", U, U))
        g = r1 - to_top(np.einsum("sjqa,sjq->sja", U, v))
        h = rr - to_top((v ** 2).sum(-1))
        M1 = np.eye(top.n_coef) + np.einsum("sqa,skqr,srb->skab", L1, P, L1)
        K1 = np.linalg.cholesky(M1)
        z = np.linalg.solve(K1, np.einsum("sqa,skq->ska", L1, g)[..., None])[..., 0]
        log_det_V = (log_det_R[part] + to_top(log_det_M0)
                     + 2 * np.log(np.diagonal(K1, axis1=-2, axis2=-1)).sum(-1))
        out[part] = -0.5 * (top.group_sizes[None] * np.log(2 * np.pi) + log_det_V + h - (z ** 2).sum(-1))
    return out.reshape(*shape, J1)


# --- draws of the linear predictor (also behind fit.predict, :mod:`bayeshlm.results.prediction`) ---------

def linear_predictor_draws(fit, rows: PredictionRows, groups: str, new_effects: bool,
                           rng: np.random.Generator) -> np.ndarray:
    """(chain, draw, m) draws of x'gamma + sum_f z_f'u_f: known groups from the posterior draws of u; new groups
    at u = 0, or (``new_effects``) with u drawn from N(0, T) per posterior draw and new group label."""
    beta = fit.draws("beta").transpose("chain", "draw", "fixed").values
    eta = np.einsum("cdp,np->cdn", beta, rows.X)
    for f in fit.design.factors:
        codes, Z = rows.codes[f.name], rows.Z[f.name]
        known = (codes >= 0) if groups == "conditional" else np.zeros(rows.n, dtype=bool)
        if known.any():
            u = fit.draws(f"u_{f.name}").transpose("chain", "draw", f.name, f"{f.name}__coef").values
            rows_known, groups_known = np.flatnonzero(known), codes[known]
            for k in range(f.n_coef):  # one coefficient at a time: no (chain, draw, rows, q) temporary
                eta[..., rows_known] += u[:, :, groups_known, k] * Z[rows_known, k]
        if new_effects and not known.all():
            labels, which = np.unique(rows.labels[f.name][~known], return_inverse=True)
            L = covariance_cholesky(fit, f.name)
            noise = rng.standard_normal((*L.shape[:2], len(labels), L.shape[-1]))
            u_new = np.einsum("cdqr,cdjr->cdjq", L, noise)
            rows_new = np.flatnonzero(~known)
            for k in range(f.n_coef):
                eta[..., rows_new] += u_new[:, :, which, k] * Z[rows_new, k]
    return eta


def covariance_cholesky(fit, name: str) -> np.ndarray:
    """(chain, draw, q, q) lower Cholesky factors of the posterior draws of T_<name> (user units)."""
    T = fit.draws(f"T_{name}").values
    jitter = 1e-12 * np.trace(T, axis1=-2, axis2=-1)[..., None, None] * np.eye(T.shape[-1])
    return np.linalg.cholesky(T + jitter)


def seeded_rng(fit, random_seed, stream: int) -> np.random.Generator:
    """``random_seed`` if given, else the fit's sampler seed with a stream number of its own (reproducible)."""
    if random_seed is not None:
        return np.random.default_rng(random_seed)
    seed = (getattr(fit, "sampler", None) or {}).get("seed")
    return np.random.default_rng(None if seed is None else [int(seed), stream])
