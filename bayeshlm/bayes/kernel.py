"""A compiled log-posterior for the commonest models: one grouping factor, or two nested ones (three-level
models), their effects integrated out, plus any crossed factors whose effects are sampled.

For a model whose integrated chain is one factor (two-level) or a factor nested in another (three-level), with
q_l random coefficients per factor in one LKJ block or with independent SDs, and a homogeneous σ² or known
level-1 variances, the log posterior density and its gradient are written out by hand below and compiled by
Numba with an on-disk cache. nutpie samples them directly, so a fit skips the PyTensor -> Numba compile of the
model graph (65-90 s with a cold cache, 30-50 s warm for nutpie here; see :mod:`.sampling`): the kernel
compiles once per machine and loads from the cache in under a second. The density is the one
:func:`~.build.build_model` writes as a PyMC graph -- same likelihood, same priors with their normalising
constants -- and the test suite checks the two agree to rounding error at random points.

In a crossed design the effects of the other factors are sampled (:mod:`.build`): they enter the integrated
likelihood as coefficients of extra columns of X (their indicator-times-Z columns, which the sufficient
statistics already carry), c = [β, u_1, u_2, ...], centred (b_j = γ_c + u_j ~ N(γ_c, T_f) the coordinates of
x, γ_c the fixed effects the coefficients are centred on, :func:`~.build.centring`, or 0) or non-centred
(u_j = L_f z_j with z_j ~ N(0, I), the z's coordinates of x).

Unconstrained coordinates x = [β, sampled effects (u or z, group by group), log σ, log τ per factor, y per
correlated factor] (log σ absent with known variances; factors in the order: integrated levels innermost first,
then the sampled factors; y_l the q_l(q_l-1)/2 canonical partial correlations of factor l on the tanh scale).
Factor l has T_l = L_l L_l', L_l = diag(τ_l) L_Ω,l; integrated effects are whitened, u_l = L_l z_l with
z_l ~ N(0, I). With s = 1/σ², c in place of β, and per group the sufficient statistics of
:class:`~.marginal.ChainStatistics`, innermost level first:

    A = s Z'Z - K,  b = s (Z'y - Z'X c) - k,  M = I + L'A L = C C',  w = C^{-1} L'b,
    log p(y | c, T, σ²) = -1/2 [N log 2π - N log s + Σ_groups log|M| + s e'e - Σ_groups |w|²]

(R&B 2002 eq. 3.52 for two levels, in Cholesky form; e = y - Xc). K, k are zero for the innermost level; a
level-1 group collects K = Σ G'G and k = Σ G'w over its level-0 groups, G = C^{-1} L_0' s Z_0'Z_1 (the
recursion of :mod:`.marginal`). The gradient is Fisher's identity: the posterior mean, given y, of the
gradient of the complete-data log-likelihood log p(y | z, θ) = N/2 log s - s/2 |y - Xc - Σ_l Z_l L_l z_l|²
(p(z) is free of θ). With ẑ, Σ the posterior means and (cross-)covariances of the whitened effects and
r̂ = e - Σ_l Z_l L_l ẑ_l,

    ∂/∂c = s X' r̂,    ∂/∂log σ = -N + s (|r̂|² + Σ tr(Z_l L_l Σ_ll' L_l'Z_l')),
    ∂/∂L_l = s Σ_groups [Z_l' r̂ ẑ_l' - Σ_l' Z_l'Z_l' L_l' Σ_l'l],

all from the per-group statistics. At the top level ẑ = C^{-T} w and Σ = M^{-1}; a level-0 group j in
level-1 group k has ẑ_0j = C^{-T} w - H ẑ_1k, Σ_0j = M^{-1} + H Σ_1k H', Σ_0j,1k = -H Σ_1k with
H = C^{-T} G L_1 (the conditional given z_1, R&B 2002 eq. 13.17, averaged over z_1). The sampled effects'
priors and the chain rule from ∂/∂c to their coordinates are in :func:`_sampled_terms`.

The correlation factor L_Ω is built from tanh(y) as canonical partial correlations (Lewandowski, Kurowicka &
Joe 2009; the Stan reference manual's "Cholesky factors of correlation matrices" transform), with the LKJ
density of L_Ω, Σ_i (2η - 2 + q - i) log L_Ω[i,i] (one-based i, as PyMC's LKJCorr), and the transform's
log-Jacobian Σ_{i>k} [log(1 - z_ik²) + 1/2 log(1 - Σ_{l<k} L_Ω[i,l]²)].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np

from ..design import Design
from .priors import PriorSet

# Prior families the kernel evaluates, with the parameter names PyMC uses for them (others: the PyMC graph)
FIXED_FAMILIES = {"Normal": ("mu", "sigma"), "Flat": ()}
SCALE_FAMILIES = {"HalfFlat": (), "HalfNormal": ("sigma",), "HalfStudentT": ("nu", "sigma"),
                  "HalfCauchy": ("beta",), "Exponential": ("lam",)}
_SCALE_CODE = {name: code for code, name in enumerate(SCALE_FAMILIES)}


# Layout of the packed buffer the compiled functions read (one float64 array: header, then the arrays). Level 1
# is empty (q1 = J1 = 0) in two-level models. p counts the fixed effects, p_ext adds the sampled factors' effects
# (the columns of X the sufficient statistics are extended by); "sampled" holds a row per sampled factor, and
# "centre" per sampled effect (p_ext - p of them) the index of the fixed effect it is centred on, or -1.
_HEADER = ("levels", "q0", "q1", "p", "p_ext", "n_sampled", "n_scale", "J0", "J1", "has_sigma", "correlated0",
           "correlated1", "n_obs", "yty", "logdet_V", "eta0", "eta1", "sigma_variance", "tau_variance0",
           "tau_variance1", "n_dim", "n_expanded", "length")
(_LEVELS, _Q0, _Q1, _P, _P_EXT, _N_SAMPLED, _N_SCALE, _J0, _J1, _HAS_SIGMA, _CORRELATED0, _CORRELATED1, _N_OBS,
 _YTY, _LOGDET_V, _ETA0, _ETA1, _SIGMA_VARIANCE, _TAU_VARIANCE0, _TAU_VARIANCE1, _N_DIM, _N_EXPANDED,
 _LENGTH) = range(len(_HEADER))
_ARRAYS = ("Z0tZ0", "Z0tX", "Z0ty", "Z0tZ1", "parent", "Z1tZ1", "Z1tX", "Z1ty", "XtX", "Xty", "beta_mu",
           "beta_sd", "scale_code", "scale_a", "scale_b", "scale_on_variance", "sampled", "centre")
# the columns of a row of "sampled": its number of coefficients and of groups, correlated (one LKJ block) or
# not, centred (u ~ N(0, T)) or non-centred (u = L z), the LKJ eta, and whether τ² is reported
_SAMPLED = ("q", "J", "correlated", "centred", "eta", "tau_variance")
(_S_Q, _S_J, _S_CORRELATED, _S_CENTRED, _S_ETA, _S_TAU_VARIANCE) = range(len(_SAMPLED))


@dataclass(frozen=True)
class KernelModel:
    """What the compiled kernel needs: its data and priors packed into one float64 buffer (the header
    :data:`_HEADER`, then the arrays :data:`_ARRAYS`), and how to name its output."""

    n_dim: int
    data: dict[str, np.ndarray]
    buffer: np.ndarray
    names: dict[str, object]  # fixed-effect names, σ² reported or not, and per integrated level and per sampled
    has_sigma: bool           # factor its name, coefficient names, τ² reported or not, correlations or not

    @property
    def levels(self) -> list[dict]:
        """The integrated factors, innermost first."""
        return self.names["levels"]

    @property
    def sampled(self) -> list[dict]:
        """The factors whose effects are sampled (crossed designs), with their groups and parameterisation."""
        return self.names["sampled"]

    def unconstrained_start(self, seed: int) -> np.ndarray:
        """A starting point: least-squares β, sampled effects u at zero, log σ from the residual SD of β, log τ at
        a quarter of the outcome's SD, zero correlations; the scales jittered by U(-1/2, 1/2)."""
        d = self.data
        p = len(self.names["fixed"])
        XtX, Xty = d["XtX"][:p, :p], d["Xty"][:p]
        beta = np.linalg.lstsq(XtX + 1e-9 * np.eye(p), Xty, rcond=None)[0]
        ee = float(d["yty"] - 2 * beta @ Xty + beta @ XtX @ beta)
        sd = math.sqrt(max(ee, 1e-12) / max(float(d["n_obs"]), 1.0))
        n_effects = d["XtX"].shape[0] - p
        n_tau = sum(len(factor["coef"]) for factor in self.levels + self.sampled)
        rng = np.random.default_rng(seed)
        scales = np.log(np.r_[[sd] if self.has_sigma else [], np.full(n_tau, d["start_tau"])])
        scales = scales + rng.uniform(-0.5, 0.5, len(scales))
        centre = d["centre"].astype(int)
        effects = np.where(centre >= 0, beta[np.maximum(centre, 0)], 0.0)  # b_j = γ_c + u_j at u_j = 0
        return np.r_[beta, effects, scales, np.zeros(self.n_dim - p - n_effects - len(scales))]


def _pack(data: dict, header: dict) -> np.ndarray:
    arrays = [np.asarray(data[name], dtype=float).ravel() for name in _ARRAYS]
    header = dict(header, length=len(_HEADER) + sum(len(a) for a in arrays))
    return np.concatenate([np.array([float(header[name]) for name in _HEADER]), *arrays])


def _groups_last(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(values, 0, -1))


def _one_block_or_none(f) -> bool:
    """The kernel's covariance forms: one LKJ block over all coefficients, or independent coefficients."""
    return len(f.blocks) == 1 or all(len(b) == 1 for b in f.blocks)


def kernel_model(design: Design, priors: PriorSet, stats, chain: tuple[str, ...], sampled: tuple[str, ...],
                 parameterization: dict[str, str], centre_on: dict[str, list[int]], strata,
                 ar1) -> KernelModel | None:
    """The :class:`KernelModel` of a model the kernel covers (module docstring), else None (the PyMC graph
    is sampled instead): one or two integrated factors, any number of sampled ones (crossed designs), no
    level-1 variance model or AR(1) errors, per factor one LKJ block or none, and prior families in
    :data:`FIXED_FAMILIES` / :data:`SCALE_FAMILIES` with their usual parameter names."""
    if not 1 <= len(chain) <= 2 or strata is not None or ar1 is not None or stats is None:
        return None
    factors = [design.factor(name) for name in chain]
    crossed = [design.factor(name) for name in sampled]
    if not all(_one_block_or_none(f) for f in factors + crossed):
        return None
    correlated = {f.name: len(f.blocks) == 1 and f.n_coef > 1 for f in factors + crossed}
    fixed = [priors.fixed[name] for name in design.fixed_names]
    if len({p.dist for p in fixed}) != 1 or any(set(p.params) != set(FIXED_FAMILIES.get(p.dist, ["?"]))
                                                 for p in fixed):
        return None
    has_sigma = design.known_variance is None
    scale_entries = ([(priors.sigma, 1, 0)] if has_sigma else []) + [
        (priors.tau[f.name], f.n_coef, k) for f in factors + crossed for k in range(f.n_coef)]
    if any(set(prior.params) != set(SCALE_FAMILIES.get(prior.dist, ["?"])) for prior, _, _ in scale_entries):
        return None
    n_scale = len(scale_entries)
    code, first, second = np.zeros(n_scale, dtype=np.int64), np.ones(n_scale), np.ones(n_scale)
    on_variance = np.zeros(n_scale, dtype=np.int64)
    for i, (prior, size, k) in enumerate(scale_entries):
        values = [np.broadcast_to(prior.params[name], (size,))[k] for name in SCALE_FAMILIES[prior.dist]]
        code[i], on_variance[i] = _SCALE_CODE[prior.dist], prior.on == "variance"
        if values:
            first[i], second[i] = values[0], values[-1]
    a = stats.arrays
    p = len(design.fixed_names)
    p_ext = a["XtX"][0].shape[0]
    q = [f.n_coef for f in factors] + [0]
    two = len(factors) == 2
    flat = fixed[0].dist == "Flat"

    def describe(f) -> dict:
        return {"factor": f.name, "coef": list(f.coef_names), "tau_variance": priors.tau[f.name].on == "variance",
                "correlated": correlated[f.name], "eta": float(priors.corr[f.name].eta) if correlated[f.name] else 1.0}

    levels = [describe(f) for f in factors]
    sampled_factors = [describe(f) | {"groups": [str(v) for v in f.levels],
                                      "centred": parameterization[f.name] == "centred"} for f in crossed]
    centre = [np.tile(centre_on.get(f.name, [-1] * f.n_coef), f.n_groups) for f in crossed]
    data = {  # groups last, for the kernel's vectorised loops
        "Z0tZ0": _groups_last(a["Z0tZ"][0][..., :q[0]]), "Z0tX": _groups_last(a["Z0tX"][0]),
        "Z0ty": _groups_last(a["Z0ty"][0]), "Z0tZ1": _groups_last(a["Z0tZ"][0][..., q[0]:]),
        "parent": stats.parents[0] if two else np.zeros(0),
        "Z1tZ1": _groups_last(a["Z1tZ"][0]) if two else np.zeros(0),
        "Z1tX": _groups_last(a["Z1tX"][0]) if two else np.zeros(0),
        "Z1ty": _groups_last(a["Z1ty"][0]) if two else np.zeros(0),
        "XtX": np.ascontiguousarray(a["XtX"][0]), "Xty": np.ascontiguousarray(a["Xty"][0]),
        "yty": float(a["yty"][0]), "n_obs": float(a["n_obs"]), "logdet_V": float(a.get("logdetV", 0.0)),
        "beta_mu": np.zeros(p) if flat else np.array([float(pr.params["mu"]) for pr in fixed]),
        "beta_sd": np.full(p, np.inf) if flat else np.array([float(pr.params["sigma"]) for pr in fixed]),
        "scale_code": code, "scale_a": first, "scale_b": second, "scale_on_variance": on_variance,
        "sampled": np.array([[len(f["coef"]), len(f["groups"]), f["correlated"], f["centred"], f["eta"],
                              f["tau_variance"]] for f in sampled_factors], dtype=float).reshape(-1, len(_SAMPLED)),
        "centre": np.concatenate(centre) if centre else np.zeros(0),
        "start_tau": 0.25 * _outcome_sd(a),
    }
    names = {"fixed": list(design.fixed_names), "levels": levels, "sampled": sampled_factors,
             "sigma_variance": has_sigma and priors.sigma.on == "variance"}
    n_corr = sum(len(f["coef"]) * (len(f["coef"]) - 1) // 2 for f in levels + sampled_factors if f["correlated"])
    n_dim = p_ext + n_scale + n_corr
    n_expanded = p + (1 + names["sigma_variance"] if has_sigma else 0) + sum(
        len(f["coef"]) * (1 + f["tau_variance"]) + (len(f["coef"]) ** 2 if f["correlated"] else 0)
        for f in levels + sampled_factors) + sum(
        2 * len(f["coef"]) * len(f["groups"]) for f in sampled_factors)
    level1 = levels[1] if two else {"tau_variance": False, "correlated": False, "eta": 1.0}
    header = {"levels": len(factors), "q0": q[0], "q1": q[1], "p": p, "p_ext": p_ext,
              "n_sampled": len(sampled_factors), "n_scale": n_scale, "J0": factors[0].n_groups,
              "J1": factors[1].n_groups if two else 0,
              "has_sigma": has_sigma, "correlated0": levels[0]["correlated"], "correlated1": level1["correlated"],
              "n_obs": data["n_obs"], "yty": data["yty"], "logdet_V": data["logdet_V"],
              "eta0": levels[0]["eta"], "eta1": level1["eta"], "sigma_variance": names["sigma_variance"],
              "tau_variance0": levels[0]["tau_variance"], "tau_variance1": level1["tau_variance"],
              "n_dim": n_dim, "n_expanded": n_expanded}
    return KernelModel(n_dim, data, _pack(data, header), names, has_sigma)


def _outcome_sd(a: dict) -> float:
    n = float(a["n_obs"])
    mean = a["Xty"][0][0] / n if a["XtX"][0][0, 0] == n else 0.0  # first X column all ones: Σy
    return math.sqrt(max(float(a["yty"][0]) / n - mean**2, 1e-12))


# --- log density and gradient ------------------------------------------------------------------------------
_LOG_2PI = math.log(2.0 * math.pi)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _scale_log_prior(code, a, b, on_variance, theta):
    """Log prior (with its normalising constant) and Jacobian of a scale x = exp(θ), as a function of θ, and
    its derivative. With ``on_variance`` the density is that of x² (a prior on the variance)."""
    x = math.exp(theta)
    if on_variance:
        t, dt, logjac, dlogjac = x * x, 2.0 * x * x, math.log(2.0) + 2.0 * theta, 2.0
    else:
        t, dt, logjac, dlogjac = x, x, theta, 1.0
    if code == 0:  # HalfFlat
        lp, dlp = 0.0, 0.0
    elif code == 1:  # HalfNormal(sigma=a)
        lp = 0.5 * math.log(2.0 / math.pi) - math.log(a) - 0.5 * (t / a) ** 2
        dlp = -t / (a * a)
    elif code == 2:  # HalfStudentT(nu=a, sigma=b)
        r = t * t / (a * b * b)
        lp = (math.log(2.0) + math.lgamma((a + 1.0) / 2.0) - math.lgamma(a / 2.0)
              - 0.5 * math.log(a * math.pi * b * b) - (a + 1.0) / 2.0 * math.log1p(r))
        dlp = -(a + 1.0) * t / (a * b * b * (1.0 + r))
    elif code == 3:  # HalfCauchy(beta=a)
        lp = math.log(2.0 / (math.pi * a)) - math.log1p((t / a) ** 2)
        dlp = -2.0 * t / (a * a + t * t)
    else:  # Exponential(lam=a)
        lp = math.log(a) - a * t
        dlp = -a
    return lp + logjac, dlp * dt + dlogjac


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lkj_log_normaliser(eta, q):
    out = (q - 1) * math.lgamma(eta + 0.5 * (q - 1))
    for k in range(1, q):
        out -= 0.5 * k * math.log(math.pi) + math.lgamma(eta + 0.5 * (q - 1 - k))
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _correlation_factor(y, q):
    """L_Ω (q x q) and the intermediate values the reverse pass needs: z = tanh(y) and the remaining squared
    row norm 1 - Σ_{l<k} L_Ω[i,l]² before each entry."""
    L = np.zeros((q, q))
    z = np.zeros((q, q))
    rest = np.ones((q, q))
    L[0, 0] = 1.0
    pos = 0
    for i in range(1, q):
        acc = 0.0
        for k in range(i):
            z[i, k] = math.tanh(y[pos])
            pos += 1
            rest[i, k] = 1.0 - acc
            L[i, k] = z[i, k] * math.sqrt(rest[i, k])
            acc += L[i, k] ** 2
        rest[i, i] = 1.0 - acc
        L[i, i] = math.sqrt(rest[i, i])
    return L, z, rest


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _correlation_terms(y, q, eta, gL, grad_y):
    """LKJ(η) log density of L_Ω plus the log-Jacobian of y -> L_Ω; adds to ``grad_y`` the gradient of that
    plus Σ gL * L_Ω (``gL``: the gradient of the rest of the density with respect to L_Ω)."""
    L, z, rest = _correlation_factor(y, q)
    lp = _lkj_log_normaliser(eta, q)
    pos = q * (q - 1) // 2
    for i in range(q - 1, 0, -1):
        c = 2.0 * eta - 2.0 + q - (i + 1)
        lp += c * math.log(L[i, i])
        for k in range(i):
            lp += math.log(1.0 - z[i, k] ** 2) + 0.5 * math.log(rest[i, k])
        # reverse pass along row i: rest_{k+1} = rest_k - L[i,k]², L[i,k] = z sqrt(rest_k), L[i,i] = sqrt(rest_i)
        bar_rest = (gL[i, i] + c / L[i, i]) * (0.5 / L[i, i])
        pos -= i
        for k in range(i - 1, -1, -1):
            root = math.sqrt(rest[i, k])
            bar_L = gL[i, k] - 2.0 * L[i, k] * bar_rest
            bar_z = bar_L * root - 2.0 * z[i, k] / (1.0 - z[i, k] ** 2)
            bar_rest = bar_rest + bar_L * z[i, k] * 0.5 / root + 0.5 / rest[i, k]
            grad_y[pos + k] += bar_z * (1.0 - z[i, k] ** 2)
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sum_of_logs(values):
    """Σ log values[j] with one logarithm per run of factors whose product stays in range; NaN if any value is
    not positive."""
    total = 0.0
    product = 1.0
    for x in values:
        if not x > 0.0:
            return np.nan
        product *= x
        if product > 1e200 or product < 1e-200:
            total += math.log(product)
            product = 1.0
    return total + math.log(product)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _cholesky_batch(M, C, inv, pivots):
    """C C' = M for a batch of q x q matrices stored groups last (q, q, J); inv = 1 / diag(C) (q, J);
    multiplies ``pivots`` (J) by each |M|."""
    q, J = M.shape[0], M.shape[2]
    for c in range(q):
        for j in range(J):
            acc = M[c, c, j]
            for k in range(c):
                acc -= C[c, k, j] ** 2
            pivots[j] *= acc
            C[c, c, j] = math.sqrt(acc)
            inv[c, j] = 1.0 / C[c, c, j]
        for r in range(c + 1, q):
            for j in range(J):
                acc = M[r, c, j]
                for k in range(c):
                    acc -= C[r, k, j] * C[c, k, j]
                C[r, c, j] = acc * inv[c, j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _forward_batch(C, inv, rhs, out):
    """out = C^{-1} rhs per group (rhs, out: (q, J))."""
    q, J = rhs.shape
    for a in range(q):
        for j in range(J):
            acc = rhs[a, j]
            for k in range(a):
                acc -= C[a, k, j] * out[k, j]
            out[a, j] = acc * inv[a, j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _backward_batch(C, inv, rhs, out):
    """out = C^{-T} rhs per group (rhs, out: (q, J))."""
    q, J = rhs.shape
    for a in range(q - 1, -1, -1):
        for j in range(J):
            acc = rhs[a, j]
            for k in range(a + 1, q):
                acc -= C[k, a, j] * out[k, j]
            out[a, j] = acc * inv[a, j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _inverse_batch(C, inv, out):
    """out = (C C')^{-1} per group (q, q, J)."""
    q, J = inv.shape
    unit, column = np.empty((q, J)), np.empty((q, J))
    for c in range(q):
        unit[:] = 0.0
        unit[c] = 1.0
        _forward_batch(C, inv, unit, column)
        _backward_batch(C, inv, column, unit)
        for a in range(q):
            for j in range(J):
                out[a, c, j] = unit[a, j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _integrate_groups(beta, s, L, ZtZ, ZtX, Zty, grad_beta, G):
    """Σ_j log|M_j|, Σ_j t_j'v_j and Σ_j [q - tr M_j^{-1} - t_j'v_j - v_j'v_j] of the module docstring; adds
    -s Σ_j Z_j'X' m_j to ``grad_beta`` and Σ_j ∂/∂L to ``G``. The statistics are stored groups-last
    (``ZtZ`` (q, q, J), ``ZtX`` (q, p, J), ``Zty`` (q, J)) and every step loops over the groups innermost, so
    the q x q algebra vectorises for any q. Returns a non-finite log-determinant if some M_j is not SPD."""
    q, p, J = ZtX.shape
    b = np.empty((q, J))
    AL = np.empty((q, q, J))
    M = np.empty((q, q, J))
    C = np.zeros((q, q, J))
    w = np.empty((q, J))
    v = np.empty((q, J))
    Minv = np.empty((q, q, J))
    for a in range(q):  # b = s (Z'y - Z'X β)
        b[a] = Zty[a]
        for k in range(p):
            for j in range(J):
                b[a, j] -= ZtX[a, k, j] * beta[k]
        for j in range(J):
            b[a, j] *= s
    for a in range(q):  # A L with A = s Z'Z (L lower triangular)
        for k in range(q):
            AL[a, k] = 0.0
            for d in range(k, q):
                for j in range(J):
                    AL[a, k, j] += s * ZtZ[a, d, j] * L[d, k]
    for a in range(q):  # M = I + L'AL
        for k in range(q):
            M[a, k] = 1.0 if a == k else 0.0
            for d in range(a, q):
                for j in range(J):
                    M[a, k, j] += L[d, a] * AL[d, k, j]
    inv = np.empty((q, J))  # 1 / C[c, c]
    pivots = np.ones(J)  # Π_c C[c, c]² = |M_j|
    _cholesky_batch(M, C, inv, pivots)
    logdet = _sum_of_logs(pivots)
    for a in range(q):  # t = L'b (kept in v), C w = t
        for j in range(J):
            acc = 0.0
            for d in range(a, q):
                acc += L[d, a] * b[d, j]
            v[a, j] = acc
    _forward_batch(C, inv, v, w)
    reduction = 0.0
    for a in range(q):
        for j in range(J):
            reduction += w[a, j] ** 2
    _backward_batch(C, inv, w, v)  # C'v = w
    _inverse_batch(C, inv, Minv)
    sigma_terms = 0.0
    for a in range(q):
        for j in range(J):
            sigma_terms += 1.0 - Minv[a, a, j] - w[a, j] ** 2 - v[a, j] ** 2
    for a in range(q):  # m = L v, the posterior means; ∂/∂β -= s Σ_j Z_j'X' m_j
        for k in range(p):
            acc = 0.0
            for j in range(J):
                mean = 0.0
                for d in range(a + 1):
                    mean += L[a, d] * v[d, j]
                acc += ZtX[a, k, j] * mean
            grad_beta[k] -= s * acc
    for a in range(q):  # ∂/∂L += Σ_j (b - A L v) v' - A L M^{-1}
        for k in range(a + 1):
            acc = 0.0
            for j in range(J):
                r = b[a, j]
                for d in range(q):
                    r -= AL[a, d, j] * v[d, j]
                acc += r * v[k, j]
                for d in range(q):
                    acc -= AL[a, d, j] * Minv[d, k, j]
            G[a, k] += acc
    return logdet, reduction, sigma_terms


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _integrate_nested(beta, s, L0, L1, Z0tZ0, Z0tZ1, Z0tX, Z0ty, parent, Z1tZ1, Z1tX, Z1ty, grad_beta, G0, G1):
    """The three-level counterpart of :func:`_integrate_groups` (module docstring): level-0 groups (statistics
    ``Z0t*``, groups last) nested in level-1 groups (``Z1t*``) through ``parent``. Returns the log-determinants,
    the reduction Σ |w|² and the terms s E|r|² - s e'e of ∂/∂log σ; adds to ``grad_beta``, and ∂/∂L_0, ∂/∂L_1
    to ``G0``, ``G1``. Level 0 loops over its groups innermost, so its q x q algebra vectorises."""
    q0, p, J0 = Z0tX.shape
    q1, J1 = Z1ty.shape
    up = np.empty(J0, dtype=np.int64)
    for j in range(J0):
        up[j] = int(parent[j])
    # level 0: integrate, and leave K = Σ G'G, k = Σ G'w to the parent
    b0, t0, w0 = np.empty((q0, J0)), np.empty((q0, J0)), np.empty((q0, J0))
    AL0, M0, C0, inv0 = np.empty((q0, q0, J0)), np.empty((q0, q0, J0)), np.zeros((q0, q0, J0)), np.empty((q0, J0))
    BL1 = np.empty((q0, q1, J0))  # B_0 L_1, B_0 = s Z_0'Z_1
    F, G = np.empty((q1, q0, J0)), np.empty((q1, q0, J0))  # column c of L_0'B_0 and of C^{-1} L_0'B_0
    pivots0 = np.ones(J0)
    for a in range(q0):
        for j in range(J0):
            b0[a, j] = Z0ty[a, j]
        for c in range(p):
            for j in range(J0):
                b0[a, j] -= Z0tX[a, c, j] * beta[c]
        for j in range(J0):
            b0[a, j] *= s
    for a in range(q0):
        for c in range(q0):
            AL0[a, c] = 0.0
            for d in range(c, q0):
                for j in range(J0):
                    AL0[a, c, j] += s * Z0tZ0[a, d, j] * L0[d, c]
        for c in range(q1):
            BL1[a, c] = 0.0
            for d in range(c, q1):
                for j in range(J0):
                    BL1[a, c, j] += s * Z0tZ1[a, d, j] * L1[d, c]
    for a in range(q0):
        for c in range(q0):
            M0[a, c] = 1.0 if a == c else 0.0
            for d in range(a, q0):
                for j in range(J0):
                    M0[a, c, j] += L0[d, a] * AL0[d, c, j]
        for c in range(q1):
            F[c, a] = 0.0
            for d in range(a, q0):
                for j in range(J0):
                    F[c, a, j] += s * L0[d, a] * Z0tZ1[d, c, j]
        t0[a] = 0.0
        for d in range(a, q0):
            for j in range(J0):
                t0[a, j] += L0[d, a] * b0[d, j]
    _cholesky_batch(M0, C0, inv0, pivots0)
    _forward_batch(C0, inv0, t0, w0)
    for c in range(q1):
        _forward_batch(C0, inv0, F[c], G[c])
    K, k1 = np.zeros((q1, q1, J1)), np.zeros((q1, J1))
    reduction = 0.0
    for a in range(q1):
        for c in range(q1):
            for e in range(q0):
                for j in range(J0):
                    K[a, c, up[j]] += G[a, e, j] * G[c, e, j]
        for e in range(q0):
            for j in range(J0):
                k1[a, up[j]] += G[a, e, j] * w0[e, j]
    for a in range(q0):
        for j in range(J0):
            reduction += w0[a, j] ** 2

    # level 1 (few groups): integrate; posterior moments of z_1; its gradient terms
    z1, S1 = np.empty((q1, J1)), np.empty((q1, q1, J1))
    b1, AL1, raw_AL1 = np.empty((q1, J1)), np.empty((q1, q1, J1)), np.empty((q1, q1, J1))
    M1, C1, inv1, t1, w1 = (np.empty((q1, q1, J1)), np.zeros((q1, q1, J1)), np.empty((q1, J1)), np.empty((q1, J1)),
                            np.empty((q1, J1)))
    pivots1 = np.ones(J1)
    for g in range(J1):
        for a in range(q1):
            acc = Z1ty[a, g]
            for c in range(p):
                acc -= Z1tX[a, c, g] * beta[c]
            b1[a, g] = s * acc  # uncorrected: Fisher's identity needs s Z_1'e
            for c in range(q1):
                raw, corrected = 0.0, 0.0
                for d in range(c, q1):
                    raw += s * Z1tZ1[a, d, g] * L1[d, c]
                    corrected += (s * Z1tZ1[a, d, g] - K[a, d, g]) * L1[d, c]
                raw_AL1[a, c, g] = raw
                AL1[a, c, g] = corrected
        for a in range(q1):
            for c in range(q1):
                acc = 1.0 if a == c else 0.0
                for d in range(a, q1):
                    acc += L1[d, a] * AL1[d, c, g]
                M1[a, c, g] = acc
            acc = 0.0
            for d in range(a, q1):
                acc += L1[d, a] * (b1[d, g] - k1[d, g])
            t1[a, g] = acc
    _cholesky_batch(M1, C1, inv1, pivots1)
    _forward_batch(C1, inv1, t1, w1)
    _backward_batch(C1, inv1, w1, z1)
    _inverse_batch(C1, inv1, S1)
    sigma_terms = 0.0
    m1 = np.empty(q1)
    for g in range(J1):
        for a in range(q1):
            reduction += w1[a, g] ** 2
            acc = 0.0
            for d in range(a + 1):
                acc += L1[a, d] * z1[d, g]
            m1[a] = acc
        for c in range(p):
            acc = 0.0
            for a in range(q1):
                acc += Z1tX[a, c, g] * m1[a]
            grad_beta[c] -= s * acc
        for a in range(q1):  # -2 m'b + m'A m + tr(A L S L'), with A m = A L z
            Az = 0.0
            for d in range(q1):
                Az += raw_AL1[a, d, g] * z1[d, g]
            sigma_terms += m1[a] * (Az - 2.0 * b1[a, g])
            for c in range(q1):
                LS = 0.0
                for d in range(a + 1):
                    LS += L1[a, d] * S1[d, c, g]
                sigma_terms += raw_AL1[a, c, g] * LS
        for a in range(q1):  # ∂/∂L_1 += b z' - A L (z z' + S)
            for c in range(a + 1):
                acc = b1[a, g] * z1[c, g]
                for d in range(q1):
                    acc -= raw_AL1[a, d, g] * (z1[d, g] * z1[c, g] + S1[d, c, g])
                G1[a, c] += acc

    # level 0 again: posterior moments of z_0 averaged over z_1 (H = C^{-T} G L_1), gradient terms
    zp, Sp = np.empty((q1, J0)), np.empty((q1, q1, J0))  # the parent's z_1 and S_1
    for a in range(q1):
        for j in range(J0):
            zp[a, j] = z1[a, up[j]]
        for c in range(q1):
            for j in range(J0):
                Sp[a, c, j] = S1[a, c, up[j]]
    z0, GL, H = np.empty((q0, J0)), np.empty((q0, J0)), np.empty((q1, q0, J0))
    S00, S01 = np.empty((q0, q0, J0)), np.zeros((q0, q1, J0))
    _backward_batch(C0, inv0, w0, z0)
    for c in range(q1):
        for a in range(q0):
            GL[a] = 0.0
            for d in range(c, q1):
                for j in range(J0):
                    GL[a, j] += G[d, a, j] * L1[d, c]
        _backward_batch(C0, inv0, GL, H[c])
    _inverse_batch(C0, inv0, S00)
    for a in range(q0):
        for c in range(q1):
            for d in range(q1):
                for j in range(J0):
                    S01[a, c, j] -= H[d, a, j] * Sp[d, c, j]  # -H S_1
            for j in range(J0):
                z0[a, j] -= H[c, a, j] * zp[c, j]
    for a in range(q0):
        for c in range(q0):
            for d in range(q1):
                for j in range(J0):
                    S00[a, c, j] -= S01[a, d, j] * H[d, c, j]  # + H S_1 H'
    m0 = np.zeros((q0, J0))
    for a in range(q0):
        for d in range(a + 1):
            for j in range(J0):
                m0[a, j] += L0[a, d] * z0[d, j]
    for c in range(p):
        acc = 0.0
        for a in range(q0):
            for j in range(J0):
                acc += Z0tX[a, c, j] * m0[a, j]
        grad_beta[c] -= s * acc
    for a in range(q0):  # -2 m'b + m'A m + 2 m'B m_1 + tr(A L S L') + 2 tr(B L_1 S_10 L')
        for j in range(J0):
            total = -2.0 * b0[a, j]
            for d in range(q0):
                total += AL0[a, d, j] * z0[d, j]
            for d in range(q1):
                total += 2.0 * BL1[a, d, j] * zp[d, j]
            sigma_terms += m0[a, j] * total
        for c in range(q0):
            for d in range(a + 1):
                for j in range(J0):
                    sigma_terms += AL0[a, c, j] * L0[a, d] * S00[d, c, j]
        for c in range(q1):
            for d in range(a + 1):
                for j in range(J0):
                    sigma_terms += 2.0 * BL1[a, c, j] * L0[a, d] * S01[d, c, j]
    for a in range(q0):  # ∂/∂L_0 += b z' - A L (z z' + S_00) - B L_1 (z_1 z' + S_10)
        for c in range(a + 1):
            acc = 0.0
            for j in range(J0):
                acc += b0[a, j] * z0[c, j]
            for d in range(q0):
                for j in range(J0):
                    acc -= AL0[a, d, j] * (z0[d, j] * z0[c, j] + S00[d, c, j])
            for d in range(q1):
                for j in range(J0):
                    acc -= BL1[a, d, j] * (zp[d, j] * z0[c, j] + S01[c, d, j])
            G0[a, c] += acc
    for a in range(q1):  # ∂/∂L_1 -= B'L_0 (z z_1' + S_01), (B'L_0)[a, d] = s Σ_r Z_0'Z_1[r, a] L_0[r, d]
        for c in range(a + 1):
            acc = 0.0
            for d in range(q0):
                for r in range(d, q0):
                    for j in range(J0):
                        acc += s * Z0tZ1[r, a, j] * L0[r, d] * (z0[d, j] * zp[c, j] + S01[d, c, j])
            G1[a, c] -= acc
    return _sum_of_logs(pivots0) + _sum_of_logs(pivots1), reduction, sigma_terms


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _unpack(buf):
    """Views of the packed buffer (see :data:`_HEADER` and :data:`_ARRAYS`)."""
    q0, q1, p, J0, J1 = int(buf[_Q0]), int(buf[_Q1]), int(buf[_P]), int(buf[_J0]), int(buf[_J1])
    p_ext, m, k = int(buf[_P_EXT]), int(buf[_N_SCALE]), int(buf[_N_SAMPLED])
    sizes = (q0 * q0 * J0, q0 * p_ext * J0, q0 * J0, q0 * q1 * J0, J0 * (int(buf[_LEVELS]) - 1), q1 * q1 * J1,
             q1 * p_ext * J1, q1 * J1, p_ext * p_ext, p_ext, p, p, m, m, m, m, k * len(_SAMPLED), p_ext - p)
    views = []
    at = len(_HEADER)
    for size in sizes:
        views.append(buf[at:at + size])
        at += size
    return (views[0].reshape((q0, q0, J0)), views[1].reshape((q0, p_ext, J0)), views[2].reshape((q0, J0)),
            views[3].reshape((q0, q1, J0)), views[4], views[5].reshape((q1, q1, J1)),
            views[6].reshape((q1, p_ext, J1)), views[7].reshape((q1, J1)), views[8].reshape((p_ext, p_ext)),
            views[9], views[10], views[11], views[12], views[13], views[14], views[15],
            views[16].reshape((k, len(_SAMPLED))), views[17])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _positions(buf, sampled):
    """Per factor (the two integrated levels, then the sampled factors; level 1 empty in two-level models):
    its number of coefficients, whether it has correlations, and where in x its effects (sampled factors only),
    its log τ's and its correlation coordinates start; ``y_at`` has one more entry, the end of the last."""
    k = sampled.shape[0]
    n = 2 + k
    q, correlated = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_)
    q[0], q[1] = int(buf[_Q0]), int(buf[_Q1])
    correlated[0], correlated[1] = buf[_CORRELATED0] > 0, buf[_CORRELATED1] > 0
    effects_at = np.zeros(n, dtype=np.int64)
    at = int(buf[_P])
    for i in range(k):
        q[2 + i], correlated[2 + i] = int(sampled[i, _S_Q]), sampled[i, _S_CORRELATED] > 0
        effects_at[2 + i] = at
        at += int(sampled[i, _S_J]) * q[2 + i]
    at += int(buf[_HAS_SIGMA])  # at = p_ext here: log σ, then the log τ's
    tau_at, y_at = np.empty(n, dtype=np.int64), np.empty(n + 1, dtype=np.int64)
    for f in range(n):
        tau_at[f] = at
        at += q[f]
    for f in range(n):
        y_at[f] = at
        if correlated[f]:
            at += q[f] * (q[f] - 1) // 2
    y_at[n] = at
    return q, correlated, effects_at, tau_at, y_at


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _level_factor(log_tau, y, correlated):
    """τ, L_Ω and L = diag(τ) L_Ω of one level."""
    q = len(log_tau)
    tau = np.exp(log_tau)
    L_omega = _correlation_factor(y, q)[0] if correlated else np.eye(q)
    L = np.empty((q, q))
    for i in range(q):
        for k in range(q):
            L[i, k] = tau[i] * L_omega[i, k]
    return tau, L_omega, L


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _factor_at(x, f, positions):
    """τ, L_Ω, L and the correlation coordinates of factor ``f`` (see :func:`_positions`) at ``x``."""
    q, correlated, _, tau_at, y_at = positions
    y = x[y_at[f]:y_at[f + 1]]
    tau, L_omega, L = _level_factor(x[tau_at[f]:tau_at[f] + q[f]], y, correlated[f])
    return tau, L_omega, L, y


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _level_terms(G, tau, L_omega, y, correlated, eta, grad_log_tau, grad_y):
    """Chain rule from ∂/∂L (``G``, lower triangle) to log τ and y of one level, plus the LKJ density and the
    correlation transform's Jacobian (returned)."""
    q = len(tau)
    gL_omega = np.zeros((q, q))
    for i in range(q):
        acc = 0.0
        for k in range(i + 1):
            acc += G[i, k] * L_omega[i, k]
            gL_omega[i, k] = tau[i] * G[i, k]
        grad_log_tau[i] += tau[i] * acc
    if correlated:
        return _correlation_terms(y, q, eta, gL_omega, grad_y)
    return 0.0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def log_density_two_level(x, buf, grad):
    """Log posterior density of a two-level model at unconstrained ``x`` (module docstring), its data and
    priors packed in ``buf``; writes the gradient into ``grad``. One entry point per model kind (two or three
    levels, with crossed factors or not), so that each model compiles (once per machine) only the code it
    runs."""
    lp, s, factors, positions = _density_setup(x, buf, grad)[:4]
    ee, grad_c, integrated, G0, G1 = _integrate_two_level(x[:int(buf[_P])].copy(), buf, s, factors)
    return _density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors, positions)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def log_density_two_level_crossed(x, buf, grad):
    """As :func:`log_density_two_level`, with sampled (crossed) factors."""
    lp, s, factors, positions, sampled, centre = _density_setup(x, buf, grad)
    c = _coefficients(x, sampled, centre, positions, int(buf[_P]), int(buf[_P_EXT]))
    ee, grad_c, integrated, G0, G1 = _integrate_two_level(c, buf, s, factors)
    lp += _sampled_prior(x, c, sampled, centre, positions, grad_c, grad)
    return _density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors, positions)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def log_density_three_level(x, buf, grad):
    """As :func:`log_density_two_level`, for a three-level model (two nested factors)."""
    lp, s, factors, positions = _density_setup(x, buf, grad)[:4]
    ee, grad_c, integrated, G0, G1 = _integrate_three_level(x[:int(buf[_P])].copy(), buf, s, factors)
    return _density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors, positions)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def log_density_three_level_crossed(x, buf, grad):
    """As :func:`log_density_three_level`, with sampled (crossed) factors."""
    lp, s, factors, positions, sampled, centre = _density_setup(x, buf, grad)
    c = _coefficients(x, sampled, centre, positions, int(buf[_P]), int(buf[_P_EXT]))
    ee, grad_c, integrated, G0, G1 = _integrate_three_level(c, buf, s, factors)
    lp += _sampled_prior(x, c, sampled, centre, positions, grad_c, grad)
    return _density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors, positions)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _integrate_two_level(c, buf, s, factors):
    """e'e, ∂/∂c, the integrated terms of :func:`_integrate_groups` and ∂/∂L_0 (and an empty ∂/∂L_1) for the
    coefficient vector c."""
    Z0tZ0, Z0tX, Z0ty = _unpack(buf)[:3]
    ee, grad_c = _residual_terms(c, buf, s)
    G0, G1 = np.zeros((Z0tX.shape[0], Z0tX.shape[0])), np.zeros((0, 0))
    integrated = _integrate_groups(c, s, factors[2], Z0tZ0, Z0tX, Z0ty, grad_c, G0)
    return ee, grad_c, integrated, G0, G1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _integrate_three_level(c, buf, s, factors):
    """As :func:`_integrate_two_level`, for two nested factors (:func:`_integrate_nested`)."""
    Z0tZ0, Z0tX, Z0ty, Z0tZ1, parent, Z1tZ1, Z1tX, Z1ty = _unpack(buf)[:8]
    ee, grad_c = _residual_terms(c, buf, s)
    q0, q1 = Z0tX.shape[0], Z1tX.shape[0]
    G0, G1 = np.zeros((q0, q0)), np.zeros((q1, q1))
    integrated = _integrate_nested(c, s, factors[2], factors[6], Z0tZ0, Z0tZ1, Z0tX, Z0ty, parent, Z1tZ1, Z1tX,
                                   Z1ty, grad_c, G0, G1)
    return ee, grad_c, integrated, G0, G1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _density_setup(x, buf, grad):
    """The priors of β and of the scales (their part of ``grad``, which it resets), s = 1/σ², per integrated
    level (τ, L_Ω, L, y), the positions of :func:`_positions`, the table of sampled factors and the fixed
    effect each sampled effect is centred on (the buffer's ``centre``)."""
    beta_mu, beta_sd, scale_code, scale_a, scale_b, on_variance, sampled, centre = _unpack(buf)[10:]
    p, p_ext = int(buf[_P]), int(buf[_P_EXT])
    has_sigma = buf[_HAS_SIGMA] > 0
    grad[:] = 0.0
    lp = 0.0
    for k in range(p):  # β ~ Normal(mu, sd), or flat (sd = inf)
        if np.isfinite(beta_sd[k]):
            d = (x[k] - beta_mu[k]) / beta_sd[k]
            lp += -0.5 * d * d - math.log(beta_sd[k]) - 0.5 * _LOG_2PI
            grad[k] -= d / beta_sd[k]
    for i in range(len(scale_code)):  # σ, then the τ's of every factor
        lps, dlps = _scale_log_prior(int(scale_code[i]), scale_a[i], scale_b[i], on_variance[i] > 0,
                                     x[p_ext + i])
        lp += lps
        grad[p_ext + i] += dlps
    s = math.exp(-2.0 * x[p_ext]) if has_sigma else 1.0
    positions = _positions(buf, sampled)
    tau0, L_omega0, L0, y0 = _factor_at(x, 0, positions)
    tau1, L_omega1, L1, y1 = _factor_at(x, 1, positions)
    return lp, s, (tau0, L_omega0, L0, y0, tau1, L_omega1, L1, y1), positions, sampled, centre


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _residual_terms(c, buf, s):
    """e'e = |y - X c|² and the likelihood's ∂/∂c before the group terms, s (X'y - X'X c), for the coefficient
    vector c = [β, the sampled factors' effects]."""
    XtX, Xty = _unpack(buf)[8:10]
    p_ext = len(c)
    xb = np.empty(p_ext)  # X'y - X'X c
    ee = buf[_YTY]
    for k in range(p_ext):
        acc = 0.0
        for j in range(p_ext):
            acc += XtX[k, j] * c[j]
        xb[k] = Xty[k] - acc
        ee -= c[k] * (Xty[k] + xb[k])  # e'e = y'y - 2 c'X'y + c'X'X c
    return ee, s * xb


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _coefficients(x, sampled, centre, positions, p, p_ext):
    """c = [β, u_1, u_2, ...]: the sampled effects u_j = b_j - γ_c from their coordinates b_j (centred; γ_c the
    fixed effect ``centre`` names, or 0) or u_j = L z_j (non-centred), each factor's (J, q) effects flattened
    group by group, as the columns of the extended X."""
    c = np.empty(p_ext)
    c[:p] = x[:p]
    q, effects_at = positions[0], positions[2]
    for i in range(sampled.shape[0]):
        f, J = 2 + i, int(sampled[i, _S_J])
        at, qf = effects_at[f], q[f]
        if sampled[i, _S_CENTRED] > 0:
            for m in range(at, at + J * qf):
                k = int(centre[m - p])
                c[m] = x[m] - x[k] if k >= 0 else x[m]
            continue
        L = _factor_at(x, f, positions)[2]
        for j in range(J):
            for a in range(qf):
                acc = 0.0
                for d in range(a + 1):
                    acc += L[a, d] * x[at + j * qf + d]
                c[at + j * qf + a] = acc
    return c


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sampled_prior(x, c, sampled, centre, positions, grad_c, grad):
    """The log prior of every sampled factor's effects, with its gradient (:func:`_sampled_terms`)."""
    lp = 0.0
    for i in range(sampled.shape[0]):
        lp += _sampled_terms(x, c, sampled, centre, i, positions, grad_c, grad)
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sampled_terms(x, c, sampled, centre, i, positions, grad_c, grad):
    """Log prior of sampled factor ``i``'s effects, and its gradient plus the chain rule of the likelihood's
    ∂/∂c: centred, log N(u_j | 0, T) with ∂/∂b_j = ∂/∂c_j - T^{-1} u_j (u_j = b_j - γ_c, so ∂/∂γ_c gains
    -Σ_j ∂/∂b_j) and ∂/∂L = L^{-T} (Σ_j w_j w_j' - J I), w_j = L^{-1} u_j; non-centred, log N(z_j | 0, I) with
    ∂/∂z_j = L' ∂/∂c_j - z_j and ∂/∂L = Σ_j ∂/∂c_j z_j'.
    Adds them to ``grad`` (effects, log τ and correlation coordinates) and returns the log density, LKJ
    density and correlation Jacobian included."""
    f, J, p = 2 + i, int(sampled[i, _S_J]), len(c) - len(centre)
    q_all, correlated, effects_at, tau_at, y_at = positions
    q, at = q_all[f], effects_at[f]
    tau, L_omega, L, y = _factor_at(x, f, positions)
    G = np.zeros((q, q))
    lp = -0.5 * J * q * _LOG_2PI
    if sampled[i, _S_CENTRED] > 0:
        for a in range(q):
            lp -= J * math.log(L[a, a])
        S = np.zeros((q, q))
        w, v = np.empty(q), np.empty(q)
        for j in range(J):
            for a in range(q):  # L w = u_j
                acc = c[at + j * q + a]
                for d in range(a):
                    acc -= L[a, d] * w[d]
                w[a] = acc / L[a, a]
            for a in range(q - 1, -1, -1):  # L'v = w: v = T^{-1} u_j
                acc = w[a]
                for d in range(a + 1, q):
                    acc -= L[d, a] * v[d]
                v[a] = acc / L[a, a]
            for a in range(q):
                lp -= 0.5 * w[a] ** 2
                m = at + j * q + a
                grad[m] += grad_c[m] - v[a]
                k = int(centre[m - p])
                if k >= 0:
                    grad[k] -= grad_c[m] - v[a]
                for d in range(q):
                    S[a, d] += w[a] * w[d]
        for col in range(q):  # G = L^{-T} (S - J I), column by column
            for a in range(q - 1, -1, -1):
                acc = S[a, col] - (J if a == col else 0.0)
                for d in range(a + 1, q):
                    acc -= L[d, a] * G[d, col]
                G[a, col] = acc / L[a, a]
    else:
        for j in range(J):
            for a in range(q):
                z = x[at + j * q + a]
                lp -= 0.5 * z * z
                acc = -z
                for d in range(a, q):
                    acc += L[d, a] * grad_c[at + j * q + d]
                grad[at + j * q + a] += acc
                for d in range(a, q):
                    G[d, a] += grad_c[at + j * q + d] * z
    return lp + _level_terms(G, tau, L_omega, y, correlated[f], sampled[i, _S_ETA],
                             grad[tau_at[f]:tau_at[f] + q], grad[y_at[f]:y_at[f + 1]])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _density_finish(buf, grad, lp, s, ee, grad_c, integrated, G0, G1, factors, positions):
    """Adds the integrated likelihood to the prior part ``lp`` and completes ``grad`` (module docstring)."""
    logdet_M, reduction, sigma_terms = integrated
    if not np.isfinite(logdet_M):
        return -np.inf
    tau0, L_omega0, L0, y0, tau1, L_omega1, L1, y1 = factors
    _, _, tau_at, y_at = positions[1:]
    p, p_ext = int(buf[_P]), int(buf[_P_EXT])
    has_sigma = buf[_HAS_SIGMA] > 0
    n_obs = buf[_N_OBS]
    logdet_R = -n_obs * math.log(s) if has_sigma else buf[_LOGDET_V]
    lp += -0.5 * (n_obs * _LOG_2PI + logdet_R + logdet_M + s * ee - reduction)
    for k in range(p):
        grad[k] += grad_c[k]
    if has_sigma:
        grad[p_ext] += -n_obs + s * ee + sigma_terms
    lp += _level_terms(G0, tau0, L_omega0, y0, buf[_CORRELATED0] > 0, buf[_ETA0],
                       grad[tau_at[0]:tau_at[0] + len(tau0)], grad[y_at[0]:y_at[1]])
    lp += _level_terms(G1, tau1, L_omega1, y1, buf[_CORRELATED1] > 0, buf[_ETA1],
                       grad[tau_at[1]:tau_at[1] + len(tau1)], grad[y_at[1]:y_at[2]])
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _expand_factor(tau, L_omega, correlated, tau_variance, out, at):
    """Writes τ [τ²] [L_Ω] of one factor into ``out`` from ``at``; returns the next position."""
    q = len(tau)
    for k in range(q):
        out[at + k] = tau[k]
    at += q
    if tau_variance:
        for k in range(q):
            out[at + k] = tau[k] ** 2
        at += q
    if correlated:
        for i in range(q):
            for k in range(q):
                out[at] = L_omega[i, k]
                at += 1
    return at


@numba.njit(cache=True, nogil=True, error_model="numpy")
def expand(x, buf, out):
    """The reported values at unconstrained ``x``, flattened into ``out`` in the order of
    :func:`output_layout`: β, σ [σ²], per integrated level τ [τ²] L_Ω. Returns the next position in ``out``."""
    p, p_ext = int(buf[_P]), int(buf[_P_EXT])
    positions = _positions(buf, _unpack(buf)[16])
    out[:p] = x[:p]
    at = p
    if buf[_HAS_SIGMA] > 0:
        out[at] = math.exp(x[p_ext])
        at += 1
        if buf[_SIGMA_VARIANCE] > 0:
            out[at] = math.exp(2.0 * x[p_ext])
            at += 1
    for f, tau_variance in ((0, buf[_TAU_VARIANCE0] > 0), (1, buf[_TAU_VARIANCE1] > 0)):
        tau, L_omega = _factor_at(x, f, positions)[:2]
        at = _expand_factor(tau, L_omega, positions[1][f], tau_variance, out, at)
    return at


@numba.njit(cache=True, nogil=True, error_model="numpy")
def expand_crossed(x, buf, out):
    """As :func:`expand`, followed by τ [τ²] L_Ω u, then b (centred) or z (non-centred), of each sampled
    factor."""
    at = expand(x, buf, out)
    sampled, centre = _unpack(buf)[16:]
    positions = _positions(buf, sampled)
    c = _coefficients(x, sampled, centre, positions, int(buf[_P]), int(buf[_P_EXT]))
    for i in range(sampled.shape[0]):
        f = 2 + i
        tau, L_omega = _factor_at(x, f, positions)[:2]
        at = _expand_factor(tau, L_omega, positions[1][f], sampled[i, _S_TAU_VARIANCE] > 0, out, at)
        start, size = positions[2][f], int(sampled[i, _S_J]) * positions[0][f]
        out[at:at + size] = c[start:start + size]
        out[at + size:at + 2 * size] = x[start:start + size]
        at += 2 * size
    return at


def log_density_and_gradient(model: KernelModel):
    """``f(x) -> (log density, gradient)`` of ``model`` (for checks; nutpie calls the C callbacks)."""
    log_density = {(1, False): log_density_two_level, (1, True): log_density_two_level_crossed,
                   (2, False): log_density_three_level, (2, True): log_density_three_level_crossed}[
        len(model.levels), bool(model.sampled)]

    def evaluate(x):
        grad = np.empty(model.n_dim)
        return log_density(np.ascontiguousarray(x, dtype=float), model.buffer, grad), grad

    return evaluate


def constrained(model: KernelModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """The posterior variables at unconstrained ``x``, named as in the PyMC graph of :func:`~.build.build_model`
    (``beta``, ``sigma`` [``sigma2``], ``tau_<factor>`` [``tau2_<factor>``], ``corr_<factor>``, and ``u_<factor>``
    and ``coef_<factor>`` or ``z_<factor>`` of sampled factors)."""
    names, shapes, _, _ = output_layout(model)
    flat = np.empty(sum(int(np.prod(shape)) for shape in shapes))
    (expand_crossed if model.sampled else expand)(np.ascontiguousarray(x, dtype=float), model.buffer, flat)
    out, at = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape))
        out[name] = flat[at:at + size].reshape(shape)
        at += size
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _callback_arrays(dim, x_ptr, grad_ptr, user_data):
    """The packed buffer, x and the gradient behind a log-density callback's pointers (n = -1: wrong dim)."""
    header = numba.carray(user_data, (len(_HEADER),), np.float64)
    n = int(header[_N_DIM])
    buf = numba.carray(user_data, (int(header[_LENGTH]),), np.float64)
    return (n if dim == n else -1), buf, numba.carray(x_ptr, (n,)), numba.carray(grad_ptr, (n,))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _return_code(value, grad, logp_ptr):
    """Stores the log density; nutpie's codes: 0 ok, 4 log density or 3 gradient not finite (divergent)."""
    logp_ptr[0] = value
    if not np.isfinite(value):
        return 4
    for k in range(len(grad)):
        if not np.isfinite(grad[k]):
            return 3
    return 0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _expand_arrays(dim, n_expanded, x_ptr, out_ptr, user_data):
    """The packed buffer, x and the output behind a reported-values callback's pointers (ok False: wrong
    dimensions)."""
    header = numba.carray(user_data, (len(_HEADER),), np.float64)
    n, m = int(header[_N_DIM]), int(header[_N_EXPANDED])
    buf = numba.carray(user_data, (int(header[_LENGTH]),), np.float64)
    return dim == n and n_expanded == m, buf, numba.carray(x_ptr, (n,)), numba.carray(out_ptr, (m,))


@functools.cache
def c_callbacks(levels: int, crossed: bool):
    """The C callbacks nutpie calls for the log density of a model with ``levels`` integrated factors (1 or
    2), with sampled (``crossed``) factors or without, and for its reported values, reading the packed buffer
    through nutpie's user-data pointer. Compiled on first use and cached on disk, like every function here;
    one named function per model kind, because the on-disk cache tells callbacks apart by name. Return codes
    follow nutpie's PyMC callbacks (-1: wrong dimension)."""
    double_ptr = numba.types.CPointer(numba.types.double)
    logp_signature = numba.types.int64(numba.types.uint64, double_ptr, double_ptr, double_ptr, numba.types.voidptr)
    expand_signature = numba.types.int64(numba.types.uint64, numba.types.uint64, double_ptr, double_ptr,
                                         numba.types.voidptr)
    compile_logp, compile_expand = (numba.cfunc(sig, cache=True, error_model="numpy")
                                    for sig in (logp_signature, expand_signature))
    if (levels, crossed) == (1, False):
        @compile_logp
        def logp_two_level(dim, x_ptr, grad_ptr, logp_ptr, user_data):
            n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
            return -1 if n < 0 else _return_code(log_density_two_level(x, buf, grad), grad, logp_ptr)
        logp_callback = logp_two_level
    elif (levels, crossed) == (1, True):
        @compile_logp
        def logp_two_level_crossed(dim, x_ptr, grad_ptr, logp_ptr, user_data):
            n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
            return -1 if n < 0 else _return_code(log_density_two_level_crossed(x, buf, grad), grad, logp_ptr)
        logp_callback = logp_two_level_crossed
    elif not crossed:
        @compile_logp
        def logp_three_level(dim, x_ptr, grad_ptr, logp_ptr, user_data):
            n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
            return -1 if n < 0 else _return_code(log_density_three_level(x, buf, grad), grad, logp_ptr)
        logp_callback = logp_three_level
    else:
        @compile_logp
        def logp_three_level_crossed(dim, x_ptr, grad_ptr, logp_ptr, user_data):
            n, buf, x, grad = _callback_arrays(dim, x_ptr, grad_ptr, user_data)
            return -1 if n < 0 else _return_code(log_density_three_level_crossed(x, buf, grad), grad, logp_ptr)
        logp_callback = logp_three_level_crossed
    if crossed:
        @compile_expand
        def reported_values_crossed(dim, n_expanded, x_ptr, out_ptr, user_data):
            ok, buf, x, out = _expand_arrays(dim, n_expanded, x_ptr, out_ptr, user_data)
            if ok:
                expand_crossed(x, buf, out)
            return 0 if ok else -1
        return logp_callback, reported_values_crossed

    @compile_expand
    def reported_values(dim, n_expanded, x_ptr, out_ptr, user_data):
        ok, buf, x, out = _expand_arrays(dim, n_expanded, x_ptr, out_ptr, user_data)
        if ok:
            expand(x, buf, out)
        return 0 if ok else -1
    return logp_callback, reported_values


def output_layout(model: KernelModel) -> tuple[list[str], list[tuple], dict, dict]:
    """Names, shapes, dims and coords of the reported values (:func:`expand`), as in the PyMC graph."""
    layout = [("beta", (len(model.names["fixed"]),), ("fixed",))]
    coords = {"fixed": model.names["fixed"]}
    if model.has_sigma:
        layout.append(("sigma", (), ()))
        if model.names["sigma_variance"]:
            layout.append(("sigma2", (), ()))
    for factor in model.levels + model.sampled:
        name, q = factor["factor"], len(factor["coef"])
        coef_dim = f"{name}__coef"
        coords[coef_dim] = factor["coef"]
        layout.append((f"tau_{name}", (q,), (coef_dim,)))
        if factor["tau_variance"]:
            layout.append((f"tau2_{name}", (q,), (coef_dim,)))
        if factor["correlated"]:
            corr_dims = (f"corr_{name}_dim_0", f"corr_{name}_dim_1")
            layout.append((f"corr_{name}", (q, q), corr_dims))
            coords |= dict.fromkeys(corr_dims, np.arange(q))
        if "groups" in factor:  # a sampled factor: its effects u, and the coordinates sampled, b or z
            coords[name] = factor["groups"]
            layout += [(f"{kind}_{name}", (len(factor["groups"]), q), (name, coef_dim))
                       for kind in ("u", "coef" if factor["centred"] else "z")]
    names, shapes, dims = zip(*layout, strict=True)
    return list(names), list(shapes), {name: d for name, _, d in layout if d}, coords
