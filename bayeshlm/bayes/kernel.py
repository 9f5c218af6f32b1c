"""A compiled log-posterior for the commonest model: one grouping factor, its effects integrated out.

For a two-level model (one grouping factor, q random coefficients with one LKJ block or independent SDs,
a homogeneous σ² or known level-1 variances) the log posterior density and its gradient are written out by
hand below and compiled by Numba with an on-disk cache. nutpie samples them directly, so a fit skips the
PyTensor -> Numba compile of the model graph (65-90 s with a cold cache, 30-50 s warm for nutpie here; see
:mod:`.sampling`): the kernel compiles once per machine in a few seconds and loads from the cache in under one.
The density is the one :func:`~.build.build_model` writes as a PyMC graph -- same likelihood, same priors with
their normalising constants -- and the test suite checks the two agree to rounding error at random points.

Unconstrained coordinates x = [β, log σ, log τ_1..q, y] (log σ absent with known variances; y the
q(q-1)/2 canonical partial correlations on the tanh scale, absent without correlations). With
T = L L', L = diag(τ) L_Ω, and per group j the sufficient statistics Z'Z, Z'X, Z'y (the marginal route's
:class:`~.marginal.ChainStatistics`), s = 1/σ²:

    A = s Z'Z,  b = s (Z'y - Z'X β),  M = I + L'A L = C C',  t = L'b,  v = M^{-1} t,
    log p(y | β, T, σ²) = -1/2 [N log 2π - N log s + Σ_j log|M_j| + s e'e - Σ_j t_j'v_j]

(the integrated likelihood of R&B 2002 eq. 3.52 in Cholesky form; e = y - Xβ). Its gradient follows from
the posterior mean m_j = L v_j of each group's effects (the EM identities of Dempster, Rubin & Tsutakawa 1981):

    ∂/∂β = s (X'y - X'X β) - s Σ_j Z_j'X' m_j,
    ∂/∂L = Σ_j [(b_j - A_j L v_j) v_j' - A_j L M_j^{-1}],
    ∂/∂log σ = -N + s e'e + Σ_j [q - tr M_j^{-1} - 2 b_j'm_j + t_j'v_j - v_j'v_j].

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


# Layout of the packed buffer the compiled functions read (one float64 array: header, then the arrays)
_HEADER = ("q", "p", "J", "has_sigma", "correlated", "n_obs", "yty", "logdet_V", "eta", "sigma_variance",
           "tau_variance", "n_dim", "n_expanded", "length")
_ARRAYS = ("ZtZ", "ZtX", "Zty", "XtX", "Xty", "beta_mu", "beta_sd", "scale_code", "scale_a", "scale_b",
           "scale_on_variance")


@dataclass(frozen=True)
class KernelModel:
    """What the compiled kernel needs: its data and priors packed into one float64 buffer (the header
    :data:`_HEADER`, then the arrays :data:`_ARRAYS`), and how to name its output."""

    n_dim: int
    data: dict[str, np.ndarray]
    buffer: np.ndarray
    names: dict[str, object]  # factor, fixed-effect and coefficient names; which variances are reported
    has_sigma: bool
    correlated: bool

    def unconstrained_start(self, seed: int) -> np.ndarray:
        """A starting point: least-squares β, log σ from its residual SD, log τ at a quarter of the outcome's
        SD, zero correlations; the scales jittered by U(-1/2, 1/2)."""
        d = self.data
        p = d["XtX"].shape[0]
        beta = np.linalg.lstsq(d["XtX"] + 1e-9 * np.eye(p), d["Xty"], rcond=None)[0]
        ee = float(d["yty"] - 2 * beta @ d["Xty"] + beta @ d["XtX"] @ beta)
        sd = math.sqrt(max(ee, 1e-12) / max(float(d["n_obs"]), 1.0))
        q = d["ZtZ"].shape[0]
        rng = np.random.default_rng(seed)
        scales = np.log(np.r_[[sd] if self.has_sigma else [], np.full(q, d["start_tau"])])
        scales = scales + rng.uniform(-0.5, 0.5, len(scales))
        return np.r_[beta, scales, np.zeros(self.n_dim - p - len(scales))]


def _pack(data: dict, header: dict) -> np.ndarray:
    arrays = [np.asarray(data[name], dtype=float).ravel() for name in _ARRAYS]
    header = dict(header, length=len(_HEADER) + sum(len(a) for a in arrays))
    return np.concatenate([np.array([float(header[name]) for name in _HEADER]), *arrays])


def kernel_model(design: Design, priors: PriorSet, stats, chain: tuple[str, ...], sampled: tuple[str, ...],
                 strata, ar1) -> KernelModel | None:
    """The :class:`KernelModel` of a model the kernel covers (module docstring), else None (the PyMC graph
    is sampled instead): one integrated factor, nothing sampled, no level-1 variance model or AR(1) errors,
    one LKJ block or none, and prior families in :data:`FIXED_FAMILIES` / :data:`SCALE_FAMILIES`
    with their usual parameter names."""
    if len(chain) != 1 or sampled or strata is not None or ar1 is not None or stats is None:
        return None
    f = design.factor(chain[0])
    q = f.n_coef
    correlated = len(f.blocks) == 1 and q > 1
    if not correlated and any(len(b) > 1 for b in f.blocks):
        return None
    fixed = [priors.fixed[name] for name in design.fixed_names]
    if len({p.dist for p in fixed}) != 1 or any(set(p.params) != set(FIXED_FAMILIES.get(p.dist, ["?"]))
                                                 for p in fixed):
        return None
    scale_priors = ([priors.sigma] if priors.sigma is not None else []) + [priors.tau[f.name]]
    if any(set(p.params) != set(SCALE_FAMILIES.get(p.dist, ["?"])) for p in scale_priors):
        return None
    has_sigma = design.known_variance is None
    a = stats.arrays
    p = len(design.fixed_names)
    flat = fixed[0].dist == "Flat"
    n_scale = int(has_sigma) + q
    code, first, second, on_variance = (np.zeros(n_scale, dtype=np.int64), np.ones(n_scale), np.ones(n_scale),
                                        np.zeros(n_scale, dtype=np.int64))
    entries = ([(0, priors.sigma)] if has_sigma else []) + [(int(has_sigma) + k, priors.tau[f.name])
                                                             for k in range(q)]
    for i, prior in entries:
        k = i - int(has_sigma)
        values = [np.broadcast_to(prior.params[name], (q,))[max(k, 0)] for name in SCALE_FAMILIES[prior.dist]]
        code[i] = _SCALE_CODE[prior.dist]
        on_variance[i] = prior.on == "variance"
        if values:
            first[i], second[i] = values[0], values[-1]
    data = {
        # groups last, for the kernel's vectorised loops
        "ZtZ": np.ascontiguousarray(np.moveaxis(a["Z0tZ"][0], 0, -1)),
        "ZtX": np.ascontiguousarray(np.moveaxis(a["Z0tX"][0], 0, -1)),
        "Zty": np.ascontiguousarray(a["Z0ty"][0].T), "XtX": np.ascontiguousarray(a["XtX"][0]),
        "Xty": np.ascontiguousarray(a["Xty"][0]), "yty": float(a["yty"][0]), "n_obs": float(a["n_obs"]),
        "logdet_V": float(a.get("logdetV", 0.0)),
        "beta_mu": np.zeros(p) if flat else np.array([float(pr.params["mu"]) for pr in fixed]),
        "beta_sd": np.full(p, np.inf) if flat else np.array([float(pr.params["sigma"]) for pr in fixed]),
        "scale_code": code, "scale_a": first, "scale_b": second, "scale_on_variance": on_variance,
        "eta": float(priors.corr[f.name].eta) if correlated else 1.0,
        "start_tau": 0.25 * _outcome_sd(a),
    }
    names = {"factor": f.name, "fixed": list(design.fixed_names), "coef": list(f.coef_names),
             "sigma_variance": has_sigma and priors.sigma.on == "variance",
             "tau_variance": priors.tau[f.name].on == "variance"}
    n_dim = p + n_scale + (q * (q - 1) // 2 if correlated else 0)
    n_expanded = (p + (1 + names["sigma_variance"] if has_sigma else 0) + q * (1 + names["tau_variance"])
                  + (q * q if correlated else 0))
    header = {"q": q, "p": p, "J": f.n_groups, "has_sigma": has_sigma, "correlated": correlated,
              "n_obs": data["n_obs"], "yty": data["yty"], "logdet_V": data["logdet_V"], "eta": data["eta"],
              "sigma_variance": names["sigma_variance"], "tau_variance": names["tau_variance"], "n_dim": n_dim,
              "n_expanded": n_expanded}
    return KernelModel(n_dim, data, _pack(data, header), names, has_sigma, correlated)


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
def _log_density(x, ZtZ, ZtX, Zty, XtX, Xty, yty, n_obs, logdet_V, beta_mu, beta_sd, scale_code, scale_a,
                 scale_b, scale_on_variance, eta, has_sigma, correlated, grad):
    """Log posterior density at unconstrained ``x`` (module docstring); writes its gradient into ``grad``."""
    q, p, J = ZtX.shape
    grad[:] = 0.0
    beta = x[:p]
    lp = 0.0
    for k in range(p):  # β ~ Normal(mu, sd), or flat (sd = inf)
        if np.isfinite(beta_sd[k]):
            d = (beta[k] - beta_mu[k]) / beta_sd[k]
            lp += -0.5 * d * d - math.log(beta_sd[k]) - 0.5 * _LOG_2PI
            grad[k] -= d / beta_sd[k]
    at = p
    s = 1.0
    if has_sigma:
        lps, dlps = _scale_log_prior(int(scale_code[0]), scale_a[0], scale_b[0], scale_on_variance[0] > 0,
                                     x[at])
        lp += lps
        grad[at] += dlps
        s = math.exp(-2.0 * x[at])
        at += 1
    tau = np.empty(q)
    for k in range(q):
        i = int(has_sigma) + k
        lps, dlps = _scale_log_prior(int(scale_code[i]), scale_a[i], scale_b[i], scale_on_variance[i] > 0,
                                     x[at + k])
        lp += lps
        grad[at + k] += dlps
        tau[k] = math.exp(x[at + k])
    y_corr = x[at + q:]
    if correlated:
        L_omega = _correlation_factor(y_corr, q)[0]
    else:
        L_omega = np.eye(q)
    L = np.empty((q, q))
    for i in range(q):
        for k in range(q):
            L[i, k] = tau[i] * L_omega[i, k]

    # the integrated likelihood, group by group
    xb = np.empty(p)  # X'y - X'X β
    ee = yty
    for k in range(p):
        acc = 0.0
        for c_ in range(p):
            acc += XtX[k, c_] * beta[c_]
        xb[k] = Xty[k] - acc
        ee -= beta[k] * (Xty[k] + xb[k])  # e'e = y'y - 2 β'X'y + β'X'X β
    grad_beta = s * xb
    G = np.zeros((q, q))
    logdet_M, reduction, sigma_terms = _integrate_groups(beta, s, L, ZtZ, ZtX, Zty, grad_beta, G)
    if not np.isfinite(logdet_M):
        return -np.inf
    log_s = math.log(s)
    logdet_R = logdet_V if not has_sigma else -n_obs * log_s
    lp += -0.5 * (n_obs * _LOG_2PI + logdet_R + logdet_M + s * ee - reduction)
    for k in range(p):
        grad[k] += grad_beta[k]
    at = p
    if has_sigma:
        grad[at] += -n_obs + s * ee + sigma_terms
        at += 1
    gL_omega = np.zeros((q, q))
    for i in range(q):
        acc = 0.0
        for k in range(i + 1):
            acc += G[i, k] * L_omega[i, k]
            gL_omega[i, k] = tau[i] * G[i, k]
        grad[at + i] += tau[i] * acc
    if correlated:
        lp += _correlation_terms(y_corr, q, eta, gL_omega, grad[at + q:])
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
    for c in range(q):  # M = C C'
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
    logdet = _sum_of_logs(pivots)
    for a in range(q):  # t = L'b (kept in v), C w = t
        for j in range(J):
            acc = 0.0
            for d in range(a, q):
                acc += L[d, a] * b[d, j]
            v[a, j] = acc
    for a in range(q):
        for j in range(J):
            acc = v[a, j]
            for k in range(a):
                acc -= C[a, k, j] * w[k, j]
            w[a, j] = acc * inv[a, j]
    reduction = 0.0
    for a in range(q):
        for j in range(J):
            reduction += w[a, j] ** 2
    for a in range(q - 1, -1, -1):  # C'v = w
        for j in range(J):
            acc = w[a, j]
            for k in range(a + 1, q):
                acc -= C[k, a, j] * v[k, j]
            v[a, j] = acc * inv[a, j]
    for c in range(q):  # M^{-1}, column by column
        for a in range(q):
            for j in range(J):
                acc = 1.0 if a == c else 0.0
                for k in range(a):
                    acc -= C[a, k, j] * Minv[k, c, j]
                Minv[a, c, j] = acc * inv[a, j]
        for a in range(q - 1, -1, -1):
            for j in range(J):
                acc = Minv[a, c, j]
                for k in range(a + 1, q):
                    acc -= C[k, a, j] * Minv[k, c, j]
                Minv[a, c, j] = acc * inv[a, j]
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
def _unpack(buf):
    """Views of the packed buffer (see :data:`_HEADER` and :data:`_ARRAYS`)."""
    q, p, J = int(buf[0]), int(buf[1]), int(buf[2])
    m = int(buf[3]) + q
    at = len(_HEADER)
    sizes = (q * q * J, q * p * J, q * J, p * p, p, p, p, m, m, m, m)
    views = []
    for size in sizes:
        views.append(buf[at:at + size])
        at += size
    return (q, p, J, views[0].reshape((q, q, J)), views[1].reshape((q, p, J)), views[2].reshape((q, J)),
            views[3].reshape((p, p)), views[4], views[5], views[6], views[7], views[8], views[9], views[10])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def log_density(x, buf, grad):
    """Log posterior density at unconstrained ``x`` of the model packed in ``buf``; its gradient goes into
    ``grad``."""
    q, p, J, ZtZ, ZtX, Zty, XtX, Xty, beta_mu, beta_sd, code, scale_a, scale_b, on_variance = _unpack(buf)
    return _log_density(x, ZtZ, ZtX, Zty, XtX, Xty, buf[6], buf[5], buf[7], beta_mu, beta_sd, code, scale_a,
                        scale_b, on_variance, buf[8], buf[3] > 0, buf[4] > 0, grad)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def expand(x, buf, out):
    """The reported values at unconstrained ``x``, flattened into ``out`` in the order of
    :func:`output_layout`: β, σ [σ²], τ [τ²], L_Ω."""
    q, p = int(buf[0]), int(buf[1])
    at = 0
    for k in range(p):
        out[at] = x[k]
        at += 1
    pos = p
    if buf[3] > 0:
        out[at] = math.exp(x[pos])
        at += 1
        if buf[9] > 0:
            out[at] = math.exp(2.0 * x[pos])
            at += 1
        pos += 1
    for k in range(q):
        out[at + k] = math.exp(x[pos + k])
    at += q
    if buf[10] > 0:
        for k in range(q):
            out[at + k] = math.exp(2.0 * x[pos + k])
        at += q
    if buf[4] > 0:
        L = _correlation_factor(x[pos + q:], q)[0]
        for i in range(q):
            for k in range(q):
                out[at] = L[i, k]
                at += 1


def log_density_and_gradient(model: KernelModel):
    """``f(x) -> (log density, gradient)`` of ``model`` (for checks; nutpie calls the C callbacks)."""
    def evaluate(x):
        grad = np.empty(model.n_dim)
        return log_density(np.ascontiguousarray(x, dtype=float), model.buffer, grad), grad

    return evaluate


def constrained(model: KernelModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """The posterior variables at unconstrained ``x``, named as in the PyMC graph of :func:`~.build.build_model`
    (``beta``, ``sigma`` [``sigma2``], ``tau_<factor>`` [``tau2_<factor>``], ``corr_<factor>``)."""
    names, shapes, _, _ = output_layout(model)
    flat = np.empty(sum(int(np.prod(shape)) for shape in shapes))
    expand(np.ascontiguousarray(x, dtype=float), model.buffer, flat)
    out, at = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape))
        out[name] = flat[at:at + size].reshape(shape)
        at += size
    return out


_N_DIM, _N_EXPANDED, _LENGTH = _HEADER.index("n_dim"), _HEADER.index("n_expanded"), _HEADER.index("length")


@functools.cache
def c_callbacks():
    """The C callbacks nutpie calls for the log density and the reported values, reading the packed buffer
    through nutpie's user-data pointer. Compiled on first use and cached on disk, like every function here.
    Return codes follow nutpie's PyMC callbacks: 0 ok, 3 gradient or 4 log density not finite (a divergent
    step), -1 wrong dimension."""
    double_ptr = numba.types.CPointer(numba.types.double)
    logp_signature = numba.types.int64(numba.types.uint64, double_ptr, double_ptr, double_ptr, numba.types.voidptr)
    expand_signature = numba.types.int64(numba.types.uint64, numba.types.uint64, double_ptr, double_ptr,
                                         numba.types.voidptr)

    @numba.cfunc(logp_signature, cache=True, error_model="numpy")
    def logp_callback(dim, x_ptr, grad_ptr, logp_ptr, user_data):
        header = numba.carray(user_data, (len(_HEADER),), np.float64)
        n = int(header[_N_DIM])
        if dim != n:
            return -1
        buf = numba.carray(user_data, (int(header[_LENGTH]),), np.float64)
        grad = numba.carray(grad_ptr, (n,))
        value = log_density(numba.carray(x_ptr, (n,)), buf, grad)
        logp_ptr[0] = value
        if not np.isfinite(value):
            return 4
        for k in range(n):
            if not np.isfinite(grad[k]):
                return 3
        return 0

    @numba.cfunc(expand_signature, cache=True, error_model="numpy")
    def expand_callback(dim, n_expanded, x_ptr, out_ptr, user_data):
        header = numba.carray(user_data, (len(_HEADER),), np.float64)
        n = int(header[_N_DIM])
        if dim != n or n_expanded != int(header[_N_EXPANDED]):
            return -1
        buf = numba.carray(user_data, (int(header[_LENGTH]),), np.float64)
        expand(numba.carray(x_ptr, (n,)), buf, numba.carray(out_ptr, (n_expanded,)))
        return 0

    return logp_callback, expand_callback


def output_layout(model: KernelModel) -> tuple[list[str], list[tuple], dict, dict]:
    """Names, shapes, dims and coords of the reported values (:func:`expand`)."""
    n = model.names
    factor, q = n["factor"], len(n["coef"])
    coef_dim = f"{factor}__coef"
    layout = [("beta", (len(n["fixed"]),), ("fixed",))]
    if model.has_sigma:
        layout.append(("sigma", (), ()))
        if n["sigma_variance"]:
            layout.append(("sigma2", (), ()))
    layout.append((f"tau_{factor}", (q,), (coef_dim,)))
    if n["tau_variance"]:
        layout.append((f"tau2_{factor}", (q,), (coef_dim,)))
    coords = {"fixed": n["fixed"], coef_dim: n["coef"]}
    if model.correlated:
        corr_dims = (f"corr_{factor}_dim_0", f"corr_{factor}_dim_1")
        layout.append((f"corr_{factor}", (q, q), corr_dims))
        coords |= dict.fromkeys(corr_dims, np.arange(q))
    names, shapes, dims = zip(*layout, strict=True)
    return list(names), list(shapes), {name: d for name, _, d in layout if d}, coords
