"""A compiled log posterior (and its gradient) for hierarchical GLMs, sampled by nutpie without a PyMC graph.

Model (the one :func:`bayeshlm.bayes.glmm.glmm_pymc_model` writes as a PyMC graph, same priors with their
normalising constants): eta_i = x_i'beta + offset_i + sum_f z_fi'u_f[j(i)], y_i | eta_i from the family,
u_fj = L_f z_fj with z_fj ~ N(0, I) (non-centred) or b_fj = c_fj + u_fj ~ N(c_fj, T_f) sampled directly
(centred: c_fj = C_fj beta, the fixed effects of the same columns plus, for an intercept, the effects of the
factor's group-level predictors at group j's values; sampled around beta', below), T_f = L_f L_f',
L_f = diag(tau_f) L_Omega,f.

Unconstrained coordinates x, in this order: the fixed effects as coefficients of the standardised columns of
X, shifted by the non-centred effects (beta = A x[:p] - shift, below; the log density is that of beta times the
constant |A|, so it differs from the PyMC graph's, which samples beta itself, by log|A| exactly); per factor: its
effects (z or b, group by group, J_f x q_f), log tau_f (or log tau_f^2 for a prior on the variance), the
q_f(q_f - 1)/2 LKJ coordinates y_f when the factor's coefficients are correlated; last, log k for the negative
binomial shape.

The shift (issue 24) removes the ridge between a non-centred factor's effects and the fixed effects of the
columns constant within its groups: moving those fixed effects by d and every u_fj by -G_fj d leaves every eta_i
unchanged, and only the N(0, I) prior of z holds the ridge, which NUTS with a diagonal mass matrix crosses slowly
(VerbAgg, (1 | id) + (1 | item): bulk ESS 300-470 of 4,000 for exactly those coefficients). So the sampled
coordinates are beta' = beta + sum_f sum_(k, a) P_fk'u_f[:, a], i.e.

    beta_k = (A x[:p])_k - sum over the entries (f, k, a, P) of P'u_f[:, a],

with, for a non-centred factor f with group-level predictors (glmm.fixed_effect_shift says which factors, by
measurement), its intercept coefficient a and k over the fixed intercept and those predictors K_f,
P_f = (G_f'G_f)^+ G_f' (G_f: J_f x |K_f|, their values per group; unweighted, as the prior of z). The map from
(beta, z, scales) to (beta', z, scales) is triangular with a unit diagonal (beta' = beta + a function of z and the
scales), so its Jacobian is 1 and the posterior is the same: the density is evaluated at beta(x) and the
gradient passes g_beta on through d beta_k / d u_f[j, a] = -P_j, added to g_u (then to z and L as every g_u).
Centred factors are not shifted themselves, and their coefficients are sampled as b'_fj = b_fj + C_fj (beta' -
beta), i.e. around the sampled beta': u_fj = b'_fj - C_fj beta' ~ N(0, T_f) (again a unit-diagonal triangular map,
b' = b + a function of the non-centred z and scales: Jacobian 1). Centred on beta itself, a centred factor would
count the shifted intercept twice: with VerbAgg's items centred and persons shifted, the persons' mean effect P'u
moves the intercept and every b_j against it, so the items' 24 b_j and the persons' z lay on a ridge (min bulk
ESS 87-95, benchmarks/results/bayes_glmm_shift.md); around beta' the b'_j are the item totals as the data see
them. The reported beta is beta, the reported coefficients of a centred factor are the graph's b.
VerbAgg, default fits, seeds 1-3: min bulk ESS 225-304 -> 497-535, 17 -> 15 gradients per draw
(benchmarks/results/bayes_glmm_shift.md, which also has the models where shifting did not help).

After the shift the data no longer see the components of a shifted factor's z_f[:, a] along its group-level
columns (H_f z, H_f = G_f P_f, the projection onto the span of G_f's columns): they keep their N(0, I) prior,
while the other components have posterior variance about 1 - r_f (r_f the factor's reliability), so with a
diagonal mass matrix NUTS crosses those rank(G_f) directions lambda_f = (1 - r_f)^-1/2 times too slowly, and the
reported beta_K = beta'_K - P u moves with them (VerbAgg's persons, r = 0.87: Anger and Gender at bulk ESS 660-810
of 4,000). So a shifted factor samples z' with z = z' + (lambda_f - 1) H_f z' (glmm.latent_scale: lambda_f in
[1, 3] from the Laplace reliability; 1 leaves z as it is): a constant linear map with Jacobian lambda_f^rank(G_f),
added to the constant, and, H_f being symmetric, the gradient in z' is the same map of the gradient in z. The
density is evaluated at the z (:func:`log_density` around :func:`_log_density`); the reported z is the graph's z.
VerbAgg (items centred, persons shifted with lambda 2.78), seeds 1-3: the fixed effects' bulk ESS 660-1,070 ->
3,480-6,420, min bulk ESS (now tau_id) 812-979 (benchmarks/results/bayes_verbagg_geometry.md).

A shifted factor with one random coefficient is also partially centred (Papaspiliopoulos, Roberts & Skold 2003):
the kernel samples z' = u / tau^w (before the scaling above), z = z' tau^-(1-w), w = 1 - r in [0.1, 1]
(glmm.partial_weights_default; 1 is non-centred). With reliable groups a non-centred z is tied to tau (z = u /
tau with u fixed by the data); z' is nearly free of it. The map's log-Jacobian -(1 - w) J log tau (h = 1/2 of
that per unit of log tau^2 for a prior on the variance) is added to the density and its gradient to log tau's;
dz' = tau^-(1-w) dz, d log tau += -(1 - w) sum_j dz_j z_j (:func:`log_density`). VerbAgg's persons (w 0.13),
seeds 1, 3, 4: min bulk ESS (tau_id) 905/1,042/790 -> 3,200-3,700 with every parameter above 3,200.

An observation-level factor (one group per row; non-centred, one coefficient, not shifted) is conditionally
centred: the kernel samples z'_j with

    z_j = tau c_j / (1 + v_j) + z'_j / sqrt(1 + v_j),   v_j = tau^2 h_j,

where l_j(u) ~ c_j u - h_j u^2 / 2 is the Gaussian approximation of group j's log-likelihood in its effect u_j,
from the score and information of its rows at the Laplace fit (glmm.conditional_centring_default), so that z' is
about N(0, I) and nearly free of tau whatever tau is: z | tau is then about N(tau c / (1 + v), 1 / (1 + v)). With
weakly informative rows (v small) this is the non-centred z shifted by tau c; with informative ones (v large)
u = tau z is about c / h + z' / sqrt(h), the centred effect. Why: non-centred, the data tie z to tau along one
direction, sum_j z_j c_j ~ tau |c|^2 (Poisson (1 | g) + (1 | obs) with exposure, 595 rows, little
overdispersion: tau_obs's posterior median 0.06, its ML estimate 0; the correlation of tau_obs with z.c / |c| in
the non-centred draws was 0.86, and z.c / |c| - tau |c| had SD 1.04), a ridge NUTS crosses slowly. The map from
(z', tau, others) to (z, tau, others) is triangular with diagonal block diag(1 / sqrt(1 + v_j)): log-Jacobian
-sum_j log(1 + v_j) / 2, added to the density. Gradient (r_j = 1 / (1 + v_j), s_j = sqrt(r_j), a_j = tau c_j r_j):
dz'_j = s_j dz_j, d log tau += sum_j (dz_j (a_j (1 - v_j) - s_j z'_j v_j) - v_j) r_j (times 1/2 for a prior on
the variance; :func:`_conditional_gradient`). Any (c_j, h_j) leave the posterior exact; these only make it
rounder. That Poisson model, default fits, seeds 1-6 (benchmarks/results/bayes_olre_geometry.md): min bulk ESS
(tau_obs) 644-914 -> 1,372-1,743 of 4,000, with target_accept 0.85 instead of 0.95 (glmm.default_target_accept)
15 instead of 31 gradients per draw, each about 1.3x the cost (19 against 13-15 us): min bulk ESS per fit CPU
second 217-306 -> 529-692 (mean 259 -> 601; at target_accept 0.8, 642-837); 0 divergences, max R-hat <= 1.0036.

Families (canonical or log links; others are sampled through the PyMC graph):

- binomial / Bernoulli, logit:  l_i = y_i eta_i - n_i log(1 + e^eta_i) (+ log C(n_i, y_i)),  dl/deta = y_i - n_i mu_i;
- Poisson, log:  l_i = y_i eta_i - e^eta_i (- log y_i!),  dl/deta = y_i - mu_i;
- negative binomial (NB2), log:  l_i = lgamma(y_i + k) - lgamma(k) + k log(k / (k + mu_i)) + y_i log(mu_i / (k + mu_i))
  (- log y_i!),  dl/deta = k (y_i - mu_i) / (k + mu_i),
  dl/dk = psi(y_i + k) - psi(k) + log(k / (k + mu_i)) + (mu_i - y_i) / (k + mu_i). For whole counts with
  M = max y <= 4 n, the rows' sums of lgamma(y_i + k) - lgamma(k) and of psi(y_i + k) - psi(k) are
  sum_{m < M} N_m log(k + m) and sum_{m < M} N_m / (k + m), N_m = #{i : y_i > m} (Gamma(y + k) = Gamma(k)
  prod_{m < y} (k + m)), from a count table packed with the data: M logs and divisions instead of n lgamma and n
  psi (salamanders, 644 rows, M = 36: C kernel 32 -> 11 us per gradient, with log(k + mu_i) taken directly instead
  of by an exp and a log1p; 8.8 us with its logs taken of products, :func:`_negative_binomial_rows`;
  benchmarks/results/bayes_nbinom_speed.md).

Chain rule to the coordinates: with g_u the gradient with respect to u_fj,
non-centred: dz = L' g_u, dL += g_u z'; centred (w = L^{-1}(b' - c)): db' = g_u - L^{-T} w, dbeta' -= C_j' db'_j,
dL += L^{-T} w w' - diag(1/L_aa) per group. The LKJ(eta) density of L_Omega and the log-Jacobian of its
transform (PyMC's CholeskyCorr, after TensorFlow Probability: row i of L_Omega is (y_i, 1) / |(y_i, 1)|, with
log-Jacobian sum_i (i + 1) log L_ii, one-based i) are written out with their gradient.

nutpie calls C callbacks (:func:`callbacks`): those of ``_glmm_kernel.c``, the same density, gradient and
reported values in the same order of floating-point operations, compiled ahead of time by ``pip install``
(:func:`extension_callbacks`), so a first fit compiles nothing (cbpp with empty caches: 29.4 -> 4.2 CPU s in a new
process, benchmarks/results/bayes_glmm_aot.md); without a C compiler at install, or when the extension reads
another buffer layout, Numba's (:func:`numba_callbacks`, compiled with ``cache=True``: 22-27 CPU s on the
first fit on a machine, loaded from the cache by later processes). The Numba functions this docstring names
(``log_density``, ``_log_density``, ``expand``, the row and prior terms) are in :mod:`.glmm_kernel_numba`, which
only a fit without the extension imports: Numba's import alone costs 0.15-0.2 CPU s.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import numpy as np

from .nuts import ExtensionCallback, nutpie_callbacks

# kernel family codes
FAMILY_CODES = {("binomial", "logit"): 0, ("bernoulli", "logit"): 0, ("poisson", "log"): 1,
                ("negative_binomial", "log"): 2}
# prior families of the scales (tau, NB shape), with PyMC's parameter names in the order the kernel reads them
SCALE_FAMILIES = {"HalfFlat": (), "HalfNormal": ("sigma",), "HalfStudentT": ("nu", "sigma"),
                  "HalfCauchy": ("beta",), "Exponential": ("lam",), "Gamma": ("alpha", "beta")}
SCALE_CODE = {name: code for code, name in enumerate(SCALE_FAMILIES)}
FIXED_FAMILIES = {"Normal": ("mu", "sigma"), "Flat": ()}

# header of the packed float64 buffer: sizes, then where each array starts
_HEADER = ("n_dim", "n_expanded", "length", "family", "n", "p", "n_factors", "shape_at", "constant",
           "at_y", "at_size", "at_offset", "at_X", "at_beta_mu", "at_beta_sd", "at_factors", "at_shape_prior",
           "at_A", "n_count_table", "at_count_table")
(_N_DIM, _N_EXPANDED, _LENGTH, _FAMILY, _N, _P, _N_FACTORS, _SHAPE_AT, _CONSTANT, _AT_Y, _AT_SIZE, _AT_OFFSET,
 _AT_X, _AT_BETA_MU, _AT_BETA_SD, _AT_FACTORS, _AT_SHAPE_PRIOR, _AT_A, _N_COUNT_TABLE,
 _AT_COUNT_TABLE) = range(len(_HEADER))
# one row per factor: sizes, form, where its data and coordinates are
_FACTOR = ("q", "J", "correlated", "centred", "eta", "at_codes", "at_Z", "at_centre", "x_effects", "x_tau",
           "x_corr", "at_prior", "at_corr", "n_shift", "at_shift", "latent_scale", "at_shift_values",
           "partial", "at_conditional")
(_F_Q, _F_J, _F_CORRELATED, _F_CENTRED, _F_ETA, _F_AT_CODES, _F_AT_Z, _F_AT_CENTRE, _F_X_EFFECTS, _F_X_TAU,
 _F_X_CORR, _F_AT_PRIOR, _F_AT_CORR, _F_N_SHIFT, _F_AT_SHIFT, _F_LATENT_SCALE, _F_AT_SHIFT_VALUES,
 _F_PARTIAL, _F_AT_CONDITIONAL) = range(len(_FACTOR))
# negative binomial: the count table is used while max y <= COUNT_TABLE_PER_ROW x the rows (:func:`count_table`);
# a table entry costs 4.7 ns, lgamma and psi of a row 19 ns (C kernel, salamanders' 644 rows with their counts scaled
# up to max y = 8 n: equal at max y = 3.9 n; benchmarks/results/bayes_nbinom_speed.md)
COUNT_TABLE_PER_ROW = 4.0


@dataclass(frozen=True)
class GLMMKernel:
    """The packed data and priors of one model, the size of its coordinates and how to name its output."""

    buffer: np.ndarray
    n_dim: int
    layout: list[tuple[str, tuple[int, ...], tuple[str, ...]]]  # reported variables: name, shape, dims
    coords: dict[str, list]
    start: np.ndarray  # a starting point (unconstrained), jittered per chain

    def unconstrained_start(self, seed: int) -> np.ndarray:
        """The starting point jittered by U(-1/2, 1/2) times each coordinate's jitter scale (nutpie sets its
        first mass matrix from the gradient there, so no coordinate may have a gradient of exactly zero)."""
        rng = np.random.default_rng(seed)
        return self.start + self.buffer[_jitter_slice(self)] * rng.uniform(-0.5, 0.5, self.n_dim)

    @property
    def n_expanded(self) -> int:
        return int(self.buffer[_N_EXPANDED])

    @property
    def n_rows(self) -> int:
        """Rows the likelihood runs over (binomial rows with the same linear predictor are merged)."""
        return int(self.buffer[_N])


def _jitter_slice(kernel: GLMMKernel) -> slice:
    at = int(kernel.buffer[_LENGTH])
    return slice(at, at + kernel.n_dim)


def pack(family: int, y, size, offset, constant: float, X, A, beta_mu, beta_sd, factors: list[dict],
         shape_prior: tuple | None, start: np.ndarray, jitter: np.ndarray, layout, coords) -> GLMMKernel:
    """Pack a model for the kernel. ``factors``: dicts with q, J, correlated, centred, eta, codes, Z (n, q),
    centre (J q x p weights C: c_j = C_j beta; empty when not centred), prior (q rows of code, a, b,
    on_variance), shift (entries (k, a, P) of the fixed-effect shift beta_k -= P'u_f[:, a], P of length J;
    empty when centred: module docstring) and optionally latent_scale (lambda) with shift_values (per entry, the
    shifted column's J group values: G' as rows) and partial (w, a non-centred factor with q = 1: module
    docstring) or conditional (rows (c_j, h_j) of the conditional centring of a non-centred factor with q = 1:
    module docstring); ``start`` and ``jitter``: the starting point and the scale of its
    per-chain jitter; ``A``: beta = A x[:p] - shift (the fixed effects from the coefficients of the standardised
    columns of X, which NUTS samples: far better conditioned). For the negative binomial the count table of ``y``
    (:func:`count_table`) is packed too, or n_count_table = -1 (lgamma and psi row by row)."""
    n, p = X.shape
    arrays, at = [], [len(_HEADER)]

    def put(values) -> int:
        values = np.asarray(values, dtype=float).ravel()
        where = at[0]
        arrays.append(values)
        at[0] += len(values)
        return where

    positions = {"at_y": put(y), "at_size": put(size), "at_offset": put(offset), "at_X": put(X),
                 "at_beta_mu": put(beta_mu), "at_beta_sd": put(beta_sd), "at_A": put(A)}
    counts = count_table(y) if family == FAMILY_CODES["negative_binomial", "log"] else None
    positions["n_count_table"] = -1 if counts is None else len(counts)  # -1: lgamma and psi row by row
    positions["at_count_table"] = put(counts if counts is not None else [])
    x_at = p
    rows = []
    for f in factors:
        q, J = f["q"], f["J"]
        if "conditional" in f and (f["centred"] or q != 1 or f.get("partial", 1.0) != 1.0
                                   or np.shape(f["conditional"]) != (J, 2)):
            raise ValueError("Conditional centring needs a non-centred factor with one coefficient, not partially "
                             f"centred, and a (J, 2) table of (c_j, h_j); got shape {np.shape(f['conditional'])}.")
        row = {"q": q, "J": J, "correlated": f["correlated"], "centred": f["centred"], "eta": f["eta"],
               "at_codes": put(f["codes"]), "at_Z": put(f["Z"]), "at_centre": put(f["centre"]),
               "x_effects": x_at, "x_tau": x_at + J * q, "x_corr": x_at + J * q + q,
               "at_prior": put(f["prior"]), "at_corr": put(correlation_positions(q)),
               "n_shift": len(f["shift"]), "at_shift": put(_shift_rows(f["shift"], J)),
               "latent_scale": f.get("latent_scale", 1.0),
               "at_shift_values": put(np.asarray(f.get("shift_values", np.zeros((len(f["shift"]), J))))),
               "partial": f.get("partial", 1.0),
               "at_conditional": put(f["conditional"]) if "conditional" in f else 0}
        x_at += J * q + q + (q * (q - 1) // 2 if f["correlated"] else 0)
        rows.append(row)
    positions["at_factors"] = put(np.array([[r[name] for name in _FACTOR] for r in rows]))
    shape_at = -1
    if shape_prior is not None:
        shape_at, x_at = x_at, x_at + 1
    positions["at_shape_prior"] = put(np.asarray(shape_prior if shape_prior is not None else (0, 1, 1, 0), float))
    n_dim = x_at
    length = at[0]
    n_expanded = sum(int(np.prod(shape)) for _, shape, _ in layout)
    header = {"n_dim": n_dim, "n_expanded": n_expanded, "length": length, "family": family, "n": n, "p": p,
              "n_factors": len(rows), "shape_at": shape_at, "constant": constant, **positions}
    head = np.array([float(header[name]) for name in _HEADER])
    buffer = np.concatenate([head, *arrays, np.asarray(jitter, dtype=float)])
    return GLMMKernel(buffer, n_dim, layout, coords, np.asarray(start, dtype=float))


def count_table(y) -> np.ndarray | None:
    """N_m = #{i : y_i > m} for m = 0, ..., max y - 1, from which the negative binomial kernel sums the rows'
    lgamma(y_i + k) - lgamma(k) and psi(y_i + k) - psi(k) (:func:`_count_table_terms`); None when a count is not
    a whole number >= 0 (the family refuses those to a relative 1e-8; the table needs them exact) or when
    max y > COUNT_TABLE_PER_ROW n (then lgamma and psi row by row cost less)."""
    y = np.asarray(y, dtype=float)
    if not np.all((y >= 0) & (np.floor(y) == y)) or (len(y) and y.max() > COUNT_TABLE_PER_ROW * len(y)):
        return None
    at_least = len(y) - np.cumsum(np.bincount(y.astype(np.int64)))  # entry m: #{y_i > m}
    return at_least[:-1].astype(float)


def _shift_rows(entries, J: int) -> np.ndarray:
    """The shift entries (k, a, P) of one factor as rows (k, a, P_1, ..., P_J) of the packed buffer."""
    rows = np.zeros((len(entries), 2 + J))
    for row, (k, a, weights) in zip(rows, entries):
        row[0], row[1], row[2:] = k, a, weights
    return rows


def correlation_positions(q: int) -> np.ndarray:
    """(q, q) table: which entry of the LKJ coordinate vector fills L[i, k] (i > k; -1 elsewhere), in the
    order of PyMC's CholeskyCorr transform (TensorFlow Probability's ``fill_triangular`` spiral, lower form)."""
    m = q * (q - 1) // 2
    x = np.arange(m)
    n = q - 1
    filled = np.tril(np.concatenate([x[n:], x[::-1]]).reshape(n, n)) if n else np.zeros((0, 0), int)
    table = -np.ones((q, q), dtype=int)
    for r in range(n):
        for c in range(r + 1):
            table[r + 1, c] = filled[r, c]
    return table


@functools.cache
def callbacks():
    """The log-density and reported-values C callbacks nutpie calls with the packed buffer as user data: the
    ahead-of-time compiled extension's when it is installed and reads this module's layout
    (:func:`extension_callbacks`; nothing to compile), else Numba's (:func:`numba_callbacks`)."""
    return extension_callbacks() or numba_callbacks()


def layout() -> tuple:
    """What the compiled extension must read as this module packs it: the header and factor-row fields, the
    family codes and the scale prior families by code (with PyMC's parameter names in the order read)."""
    return (_HEADER, _FACTOR, tuple((family, link, code) for (family, link), code in FAMILY_CODES.items()),
            tuple(SCALE_FAMILIES.items()))


@functools.cache
def extension_callbacks() -> tuple[ExtensionCallback, ExtensionCallback] | None:
    """The callbacks of ``_glmm_kernel.c`` (built by ``pip install``: the same log density, gradient and reported
    values as :func:`log_density` and :func:`expand`, in the same order of operations), or None when the
    extension is not installed (no C compiler at install time) or its LAYOUT is not :func:`layout`."""
    try:
        from . import _glmm_kernel
    except ImportError:
        return None
    if _glmm_kernel.LAYOUT != layout():
        return None
    return nutpie_callbacks(*_glmm_kernel.callbacks())


def numba_callbacks():
    """Numba's C callbacks of the same density (:func:`numba_callbacks`): importing that module
    loads Numba, which a fit on the C extension never does."""
    from .glmm_kernel_numba import numba_callbacks as compiled

    return compiled()


_DOUBLE_PTR = ctypes.POINTER(ctypes.c_double)


def log_density_and_gradient(kernel: GLMMKernel, chosen=None):
    """``f(x) -> (log density, gradient)`` through the log-density callback nutpie calls (for checks): the first
    of ``chosen`` (e.g. ``numba_callbacks()``), by default of :func:`callbacks`."""
    logp = (chosen or callbacks())[0].ctypes
    buffer = kernel.buffer.ctypes.data_as(ctypes.c_void_p)

    def evaluate(x):
        x = np.ascontiguousarray(x, dtype=float)
        if x.shape != (kernel.n_dim,):
            raise ValueError(f"x has shape {x.shape}; the kernel has {kernel.n_dim} coordinates.")
        grad, value = np.empty(kernel.n_dim), np.empty(1)
        logp(kernel.n_dim, x.ctypes.data_as(_DOUBLE_PTR), grad.ctypes.data_as(_DOUBLE_PTR),
             value.ctypes.data_as(_DOUBLE_PTR), buffer)
        return float(value[0]), grad

    return evaluate


def reported(kernel: GLMMKernel, x: np.ndarray, chosen=None) -> dict[str, np.ndarray]:
    """The reported values at unconstrained ``x``, by name, through the reported-values callback (the second of
    ``chosen``, by default of :func:`callbacks`)."""
    x = np.ascontiguousarray(x, dtype=float)
    if x.shape != (kernel.n_dim,):
        raise ValueError(f"x has shape {x.shape}; the kernel has {kernel.n_dim} coordinates.")
    flat = np.empty(kernel.n_expanded)
    code = (chosen or callbacks())[1].ctypes(kernel.n_dim, kernel.n_expanded, x.ctypes.data_as(_DOUBLE_PTR),
                                             flat.ctypes.data_as(_DOUBLE_PTR),
                                             kernel.buffer.ctypes.data_as(ctypes.c_void_p))
    if code != 0:
        raise RuntimeError(f"The reported-values callback returned {code}.")
    out, at = {}, 0
    for name, shape, _ in kernel.layout:
        size = int(np.prod(shape))
        out[name] = flat[at:at + size].reshape(shape)
        at += size
    return out


def nutpie_model(kernel: GLMMKernel):
    """nutpie's view of ``kernel``: its C callbacks (chains in parallel, no Python in the loop) and its reported
    variables."""
    from .nuts import CallbackModel

    logp, expand_values = callbacks()  # loaded (or compiled) now, so the fit times compilation apart from sampling
    return CallbackModel(names=tuple(name for name, _, _ in kernel.layout),
                         shapes=tuple(tuple(shape) for _, shape, _ in kernel.layout),
                         dims={name: tuple(dims) for name, _, dims in kernel.layout if dims}, coords=kernel.coords,
                         n_dim=kernel.n_dim, start=kernel.unconstrained_start, logp_address=logp.address,
                         expand_address=expand_values.address, data_address=kernel.buffer.ctypes.data,
                         owner=kernel)
