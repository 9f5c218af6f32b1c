"""A compiled log-posterior for the commonest models: one grouping factor, or two nested ones (three-level
models), their effects integrated out, plus any crossed factors whose effects are sampled.

For a model whose integrated chain is one factor (two-level) or a factor nested in another (three-level), with
q_l random coefficients per factor in one LKJ block or with independent SDs, and a homogeneous σ² or known
level-1 variances (in two-level models also a σ² per stratum or AR(1) errors, :func:`.kernel_numba._level1_weights`),
the log posterior density and its gradient are written out by hand in :mod:`.kernel_numba` and compiled by
Numba with an on-disk cache. nutpie samples them directly, so a fit skips the PyTensor -> Numba compile of the
model graph (65-90 s with a cold cache, 30-50 s warm for nutpie here; see :mod:`.sampling`): the kernel
compiles once per machine (only the entry point the model needs: two or three levels, crossed or not) and loads
from the cache in a fraction of a second. The commonest kind, two levels without sampled factors and with one σ² or
known variances, is also compiled ahead of time by ``pip install`` (``_two_level_kernel.c``, the same operations in
the same order: :func:`extension_callbacks`), so its first fit compiles nothing and does not import Numba (0.15-0.2
CPU s): this module holds the model, the buffer layout and the naming of the draws, :mod:`.kernel_numba` the
Numba code, imported by :func:`numba_callbacks` on first call. The algebra is written there as named block
operations on batches of groups (``_integrate_level``, ``_integrate_top``, ``_integrate_child``,
``_pass_to_parent``, ...); Numba compiles every function it calls again into each caller, so the call tree is
kept shallow, and the reported values are computed from the unconstrained draws after sampling
(:func:`constrained_draws`), not compiled.
The density is the one :func:`~.build.build_model` writes as a PyMC graph -- same likelihood, same priors with
their normalising constants -- and the test suite checks the two agree to rounding error at random points.

In a crossed design the effects of the other factors are sampled (:mod:`.build`): they enter the integrated
likelihood as coefficients of extra columns of X (their indicator-times-Z columns, which the sufficient
statistics already carry), c = [β, u_1, u_2, ...], centred (b_j = γ_c + u_j ~ N(γ_c, T_f) the coordinates of
x, γ_c the fixed effects the coefficients are centred on, :func:`~.plan.centring`, or 0) or non-centred
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
priors and the chain rule from ∂/∂c to their coordinates are in :func:`.kernel_numba._sampled_terms`.

The correlation factor L_Ω is built from tanh(y) as canonical partial correlations (Lewandowski, Kurowicka &
Joe 2009; the Stan reference manual's "Cholesky factors of correlation matrices" transform), with the LKJ
density of L_Ω, Σ_i (2η - 2 + q - i) log L_Ω[i,i] (one-based i, as PyMC's LKJCorr), and the transform's
log-Jacobian Σ_{i>k} [log(1 - z_ik²) + 1/2 log(1 - Σ_{l<k} L_Ω[i,l]²)].
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass

import numpy as np

from ..design import Design
from .nuts import ExtensionCallback, nutpie_callbacks
from .priors import PriorSet

# Prior families the kernel evaluates, with the parameter names PyMC uses for them (others: the PyMC graph)
FIXED_FAMILIES = {"Normal": ("mu", "sigma"), "Flat": ()}
SCALE_FAMILIES = {"HalfFlat": (), "HalfNormal": ("sigma",), "HalfStudentT": ("nu", "sigma"),
                  "HalfCauchy": ("beta",), "Exponential": ("lam",)}
_SCALE_CODE = {name: code for code, name in enumerate(SCALE_FAMILIES)}


# Layout of the packed buffer the compiled functions read (one float64 array): the header, one row of
# _LEVEL_FIELDS per integrated level (level 1 all zero in two-level models), the start of every array of
# _ARRAYS (and the end of the last), then the arrays. p counts the fixed effects, p_ext adds the sampled
# factors' effects (the columns of X the sufficient statistics are extended by); "sampled" holds a row per
# sampled factor, and "centre" per sampled effect (p_ext - p of them) the index of the fixed effect it is
# centred on, or -1. The compiled code reads them through the accessors _level_field, _array and _level_stats.
# The level-1 errors: R^{-1} = Σ_k w_k W_k over n_components fixed row sets (:mod:`.marginal`), every statistic
# kept per component (leading axis); n_level1 log σ coordinates (0 with known variances, 1, or one per stratum),
# and for AR(1) errors (ar1 = 1) the coordinate of φ, last in x.
_HEADER = ("levels", "p", "p_ext", "n_sampled", "n_scale", "has_sigma", "n_obs", "logdet_V", "sigma_variance",
           "n_components", "n_level1", "ar1", "n_pairs", "n_dim", "length")
(_LEVELS, _P, _P_EXT, _N_SAMPLED, _N_SCALE, _HAS_SIGMA, _N_OBS, _LOGDET_V, _SIGMA_VARIANCE, _N_COMPONENTS,
 _N_LEVEL1, _AR1, _N_PAIRS, _N_DIM, _LENGTH) = range(len(_HEADER))
_LEVEL_FIELDS = ("q", "J", "correlated", "eta", "tau_variance")
(_L_Q, _L_J, _L_CORRELATED, _L_ETA, _L_TAU_VARIANCE) = range(len(_LEVEL_FIELDS))
_LEVELS_AT = len(_HEADER)
# per level l its statistics ZtZ<l> (K, q, q, J), ZtX<l> (K, q, p_ext, J), Zty<l> (K, q, J), K components,
# groups last; then the level-0 x level-1 cross products and each level-0 group's parent (three-level models
# only), and the whole-sample sums per component
_ARRAYS = ("ZtZ0", "ZtX0", "Zty0", "ZtZ1", "ZtX1", "Zty1", "Z0tZ1", "parent", "XtX", "Xty", "yty",
           "rows_per_component", "beta_mu", "beta_sd", "scale_code", "scale_a", "scale_b", "scale_on_variance",
           "sampled", "centre")
(_ZTZ0, _ZTX0, _ZTY0, _ZTZ1, _ZTX1, _ZTY1, _Z0TZ1, _PARENT, _XTX, _XTY, _YTY, _ROWS, _BETA_MU, _BETA_SD,
 _SCALE_CODE_AT, _SCALE_A, _SCALE_B, _SCALE_ON_VARIANCE, _SAMPLED_AT, _CENTRE) = range(len(_ARRAYS))
_ARRAYS_AT = _LEVELS_AT + 2 * len(_LEVEL_FIELDS)
# the columns of a row of "sampled": its number of coefficients and of groups, correlated (one LKJ block) or
# not, centred (u ~ N(0, T)) or non-centred (u = L z), the LKJ eta, and whether τ² is reported
_SAMPLED = ("q", "J", "correlated", "centred", "eta", "tau_variance")
(_S_Q, _S_J, _S_CORRELATED, _S_CENTRED, _S_ETA, _S_TAU_VARIANCE) = range(len(_SAMPLED))


@dataclass(frozen=True)
class KernelModel:
    """What the compiled kernel needs: its data and priors packed into one float64 buffer (see the layout
    above), and how to name its output."""

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

    @property
    def variant(self) -> tuple:
        """Which compiled entry point the model needs: (number of integrated levels, sampled factors or not),
        and the level-1 error model when it is not one σ² or known variances ('strata' or 'ar1')."""
        kind = self.names["level1"]["kind"]
        return (len(self.levels), bool(self.sampled)) + ((kind,) if kind in ("strata", "ar1") else ())

    def unconstrained_start(self, seed: int) -> np.ndarray:
        """A starting point: least-squares β, sampled effects u at zero, log σ from the residual SD of β, log τ at
        a quarter of the outcome's SD, zero correlations; the scales jittered by U(-1/2, 1/2)."""
        d = self.data
        p = len(self.names["fixed"])
        XtX, Xty = d["rows_XtX"][:p, :p], d["rows_Xty"][:p]
        beta = np.linalg.lstsq(XtX + 1e-9 * np.eye(p), Xty, rcond=None)[0]
        ee = float(d["rows_yty"] - 2 * beta @ Xty + beta @ XtX @ beta)
        sd = math.sqrt(max(ee, 1e-12) / max(float(d["n_obs"]), 1.0))
        n_effects = d["rows_XtX"].shape[0] - p
        n_tau = sum(len(factor["coef"]) for factor in self.levels + self.sampled)
        rng = np.random.default_rng(seed)
        scales = np.log(np.r_[np.full(self.names["level1"]["n_sigma"], sd), np.full(n_tau, d["start_tau"])])
        scales = scales + rng.uniform(-0.5, 0.5, len(scales))
        centre = d["centre"].astype(int)
        effects = np.where(centre >= 0, beta[np.maximum(centre, 0)], 0.0)  # b_j = γ_c + u_j at u_j = 0
        return np.r_[beta, effects, scales, np.zeros(self.n_dim - p - n_effects - len(scales))]


def _pack(data: dict, header: dict, levels: list[dict]) -> np.ndarray:
    arrays = [np.asarray(data[name], dtype=float).ravel() for name in _ARRAYS]
    starts = np.cumsum([_ARRAYS_AT + len(_ARRAYS) + 1] + [len(a) for a in arrays])
    header = dict(header, length=int(starts[-1]))
    rows = [[float(level[name]) for name in _LEVEL_FIELDS] for level in levels]
    rows += [[0.0] * len(_LEVEL_FIELDS)] * (2 - len(levels))
    return np.concatenate([np.array([float(header[name]) for name in _HEADER]), np.ravel(rows),
                           starts.astype(float), *arrays])


def _groups_last(values: np.ndarray) -> np.ndarray:
    """(K, J, ...) per-component, per-group statistics as (K, ..., J)."""
    return np.ascontiguousarray(np.moveaxis(values, 1, -1))


def _one_block_or_none(f) -> bool:
    """The kernel's covariance forms: one LKJ block over all coefficients, or independent coefficients."""
    return len(f.blocks) == 1 or all(len(b) == 1 for b in f.blocks)


def kernel_model(design: Design, priors: PriorSet, stats, chain: tuple[str, ...], sampled: tuple[str, ...],
                 parameterization: dict[str, str], centre_on: dict[str, list[int]], strata,
                 ar1) -> KernelModel | None:
    """The :class:`KernelModel` of a model the kernel covers (module docstring), else None (the PyMC graph
    is sampled instead): one or two integrated factors, any number of sampled ones (crossed designs), per factor
    one LKJ block or none, and prior families in :data:`FIXED_FAMILIES` / :data:`SCALE_FAMILIES` with their
    usual parameter names; a level-1 variance per stratum (``strata``, a log-linear model included) or AR(1)
    errors (``ar1``) in two-level models without sampled factors."""
    structured = strata is not None or ar1 is not None
    if not 1 <= len(chain) <= 2 or stats is None or structured and (len(chain) > 1 or sampled):
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
    level1 = _level1_model(strata, ar1, has_sigma)
    n_sigma = level1["n_sigma"]
    scale_entries = [(priors.sigma, n_sigma, k) for k in range(n_sigma)] + [
        (priors.tau[f.name], f.n_coef, k) for f in factors + crossed for k in range(f.n_coef)]
    if any(set(prior.params) != set(SCALE_FAMILIES.get(prior.dist, ["?"])) for prior, _, _ in scale_entries):
        return None
    scale_table = _scale_prior_table(scale_entries)

    def describe(f) -> dict:
        return {"factor": f.name, "coef": list(f.coef_names), "tau_variance": priors.tau[f.name].on == "variance",
                "correlated": correlated[f.name], "eta": float(priors.corr[f.name].eta) if correlated[f.name] else 1.0}

    levels = [describe(f) for f in factors]
    sampled_factors = [describe(f) | {"groups": [str(v) for v in f.levels],
                                      "centred": parameterization[f.name] == "centred"} for f in crossed]
    data = _kernel_data(design, priors, stats, factors, crossed, centre_on, sampled_factors,
                        ar1 is not None) | scale_table
    names = {"fixed": list(design.fixed_names), "levels": levels, "sampled": sampled_factors,
             "sigma_variance": has_sigma and priors.sigma.on == "variance", "level1": level1}
    n_corr = sum(len(f["coef"]) * (len(f["coef"]) - 1) // 2 for f in levels + sampled_factors if f["correlated"])
    p_ext = data["rows_XtX"].shape[0]
    n_dim = p_ext + len(scale_entries) + n_corr + (ar1 is not None)
    header = {"levels": len(factors), "p": len(design.fixed_names), "p_ext": p_ext,
              "n_sampled": len(sampled_factors), "n_scale": len(scale_entries), "has_sigma": has_sigma,
              "n_obs": data["n_obs"], "logdet_V": data["logdet_V"], "sigma_variance": names["sigma_variance"],
              "n_components": len(data["yty"]), "n_level1": n_sigma, "ar1": ar1 is not None,
              "n_pairs": 0 if ar1 is None else ar1.n_pairs, "n_dim": n_dim}
    level_rows = [{"q": f.n_coef, "J": f.n_groups, **describe(f)} for f in factors]
    return KernelModel(n_dim, data, _pack(data, header, level_rows), names, has_sigma)


def _level1_model(strata, ar1, has_sigma: bool) -> dict:
    """The level-1 error model as the kernel and the output need it: kind ('known', 'homogeneous', 'strata' or
    'ar1'), the number of σ coordinates, and for strata their labels and the log-linear terms and map."""
    if strata is not None:
        return {"kind": "strata", "n_sigma": len(strata.labels), "labels": list(strata.labels),
                "terms": list(strata.terms), "solve": strata.solve}
    kind = "ar1" if ar1 is not None else "homogeneous" if has_sigma else "known"
    return {"kind": kind, "n_sigma": int(has_sigma), "labels": [], "terms": [], "solve": None}


def _scale_prior_table(scale_entries: list) -> dict[str, np.ndarray]:
    """Per scale (σ, then each factor's τ's) its prior family code, first and last parameter, and whether the
    prior is on the variance."""
    n_scale = len(scale_entries)
    code, first, second = np.zeros(n_scale, dtype=np.int64), np.ones(n_scale), np.ones(n_scale)
    on_variance = np.zeros(n_scale, dtype=np.int64)
    for i, (prior, size, k) in enumerate(scale_entries):
        values = [np.broadcast_to(prior.params[name], (size,))[k] for name in SCALE_FAMILIES[prior.dist]]
        code[i], on_variance[i] = _SCALE_CODE[prior.dist], prior.on == "variance"
        if values:
            first[i], second[i] = values[0], values[-1]
    return {"scale_code": code, "scale_a": first, "scale_b": second, "scale_on_variance": on_variance}


def _kernel_data(design: Design, priors: PriorSet, stats, factors: list, crossed: list, centre_on: dict,
                 sampled_factors: list[dict], ar1_errors: bool) -> dict[str, np.ndarray]:
    """The arrays of the buffer (groups last, for the kernel's vectorised loops) but the scale priors."""
    a = stats.arrays
    p = len(design.fixed_names)
    q0 = factors[0].n_coef
    two = len(factors) == 2
    # the sums over all rows (for starting values): component 0 of AR(1) errors, the sum of the strata
    rows_XtX, rows_Xty, rows_yty = (np.asarray(a[k])[0] if ar1_errors else np.sum(a[k], axis=0)
                                    for k in ("XtX", "Xty", "yty"))
    fixed = [priors.fixed[name] for name in design.fixed_names]
    flat = fixed[0].dist == "Flat"
    centre = [np.tile(centre_on.get(f.name, [-1] * f.n_coef), f.n_groups) for f in crossed]
    return {
        "ZtZ0": _groups_last(a["Z0tZ"][..., :q0]), "ZtX0": _groups_last(a["Z0tX"]),
        "Zty0": _groups_last(a["Z0ty"]), "Z0tZ1": _groups_last(a["Z0tZ"][..., q0:]),
        "parent": stats.parents[0] if two else np.zeros(0),
        "ZtZ1": _groups_last(a["Z1tZ"]) if two else np.zeros(0),
        "ZtX1": _groups_last(a["Z1tX"]) if two else np.zeros(0),
        "Zty1": _groups_last(a["Z1ty"]) if two else np.zeros(0),
        "XtX": np.ascontiguousarray(a["XtX"]), "Xty": np.ascontiguousarray(a["Xty"]),
        "yty": np.atleast_1d(np.asarray(a["yty"], dtype=float)),
        "rows_per_component": np.asarray(a.get("rows_per_component", np.zeros(len(a["yty"]))), dtype=float),
        "rows_XtX": rows_XtX, "rows_Xty": rows_Xty, "rows_yty": float(rows_yty),
        "n_obs": float(a["n_obs"]), "logdet_V": float(a.get("logdetV", 0.0)),
        "beta_mu": np.zeros(p) if flat else np.array([float(pr.params["mu"]) for pr in fixed]),
        "beta_sd": np.full(p, np.inf) if flat else np.array([float(pr.params["sigma"]) for pr in fixed]),
        "sampled": np.array([[len(f["coef"]), len(f["groups"]), f["correlated"], f["centred"], f["eta"],
                              f["tau_variance"]] for f in sampled_factors], dtype=float).reshape(-1, len(_SAMPLED)),
        "centre": np.concatenate(centre) if centre else np.zeros(0),
        "start_tau": 0.25 * _outcome_sd(float(a["n_obs"]), rows_XtX, rows_Xty, float(rows_yty)),
    }


def _outcome_sd(n: float, XtX: np.ndarray, Xty: np.ndarray, yty: float) -> float:
    mean = Xty[0] / n if XtX[0, 0] == n else 0.0  # first X column all ones: Σy
    return math.sqrt(max(yty / n - mean**2, 1e-12))


@functools.cache
def c_callbacks(levels: int, crossed: bool, level1: str = "homogeneous"):
    """The C callbacks nutpie calls for a model of this kind (see :func:`numba_callbacks`): for the two-level
    model without sampled factors and with one σ² or known variances, those of the ahead-of-time compiled
    extension when it is installed (:func:`extension_callbacks`; no compile on a first fit), else Numba's."""
    if (levels, crossed, level1) == (1, False, "homogeneous"):
        compiled = extension_callbacks()
        if compiled is not None:
            return compiled
    return numba_callbacks(levels, crossed, level1)


@functools.cache
def extension_callbacks() -> tuple[ExtensionCallback, ExtensionCallback] | None:
    """The log-density and reported-values callbacks of the two-level kernel compiled ahead of time
    (``_two_level_kernel.c``, built by ``pip install``: the same density and gradient as Numba's
    ``logp_two_level``, in the same order of operations), or None when the extension is not installed (no C
    compiler at install time) or reads another buffer layout than this module packs."""
    try:
        from . import _two_level_kernel
    except ImportError:
        return None
    if _two_level_kernel.LAYOUT != (_HEADER, _LEVEL_FIELDS, _ARRAYS):
        return None
    return nutpie_callbacks(*_two_level_kernel.callbacks())


def numba_callbacks(levels: int, crossed: bool, level1: str = "homogeneous"):
    """Numba's C callbacks of a model of this kind (:func:`.kernel_numba.numba_callbacks`: ``levels`` integrated
    factors, sampled factors or not, level-1 errors 'homogeneous', 'strata' or 'ar1'), compiled on first use and
    cached on disk. Importing :mod:`.kernel_numba` loads Numba, which a fit on the extension never does."""
    from .kernel_numba import numba_callbacks as compiled

    return compiled(levels, crossed, level1)


def log_density_and_gradient(model: KernelModel, callbacks=None):
    """``f(x) -> (log density, gradient)`` of ``model``, through the C callback nutpie calls (or through the
    first of ``callbacks``, e.g. ``numba_callbacks(*model.variant)``)."""
    logp = (callbacks or c_callbacks(*model.variant))[0].ctypes
    double_ptr = ctypes.POINTER(ctypes.c_double)
    buffer = model.buffer.ctypes.data_as(ctypes.c_void_p)

    def evaluate(x):
        x = np.ascontiguousarray(x, dtype=float)
        grad, value = np.empty(model.n_dim), np.empty(1)
        logp(model.n_dim, x.ctypes.data_as(double_ptr), grad.ctypes.data_as(double_ptr),
             value.ctypes.data_as(double_ptr), buffer)
        return float(value[0]), grad

    return evaluate


# --- naming the draws --------------------------------------------------------------------------------------------
def correlation_factor_draws(y: np.ndarray, q: int) -> np.ndarray:
    """L_Ω (..., q, q) from the canonical partial correlations tanh(y) (..., q(q-1)/2), as
    :func:`.kernel_numba._correlation_factor` does for one point."""
    z = np.tanh(y)
    L = np.zeros((*y.shape[:-1], q, q))
    L[..., 0, 0] = 1.0
    pos = 0
    for i in range(1, q):
        rest = np.ones(y.shape[:-1])
        for k in range(i):
            L[..., i, k] = z[..., pos] * np.sqrt(rest)
            rest = rest - L[..., i, k] ** 2
            pos += 1
        L[..., i, i] = np.sqrt(rest)
    return L


def constrained_draws(model: KernelModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """The posterior variables at unconstrained draws ``x`` (..., n_dim), named and shaped as in the PyMC graph
    of :func:`~.build.build_model` (:func:`output_layout`): ``beta``, ``sigma`` [``sigma2``], per factor
    ``tau_<factor>`` [``tau2_<factor>``] ``corr_<factor>``, and ``u_<factor>`` and ``coef_<factor>`` (centred) or
    ``z_<factor>`` (non-centred) of sampled factors."""
    p, p_ext = len(model.names["fixed"]), model.data["rows_XtX"].shape[0]
    out = {"beta": x[..., :p]} | _level1_draws(model, x, p_ext)
    at = p_ext + model.names["level1"]["n_sigma"]
    factors = model.levels + model.sampled
    y_at = at + sum(len(f["coef"]) for f in factors)
    effects_at = p
    for factor in factors:
        name, q = factor["factor"], len(factor["coef"])
        tau = np.exp(x[..., at:at + q])
        at += q
        out[f"tau_{name}"] = tau
        if factor["tau_variance"]:
            out[f"tau2_{name}"] = tau**2
        L_omega = np.broadcast_to(np.eye(q), (*x.shape[:-1], q, q))
        if factor["correlated"]:
            L_omega = correlation_factor_draws(x[..., y_at:y_at + q * (q - 1) // 2], q)
            y_at += q * (q - 1) // 2
            out[f"corr_{name}"] = L_omega
        if "groups" in factor:
            J = len(factor["groups"])
            coords = x[..., effects_at:effects_at + J * q].reshape(*x.shape[:-1], J, q)
            out |= _sampled_effects(model, factor, coords, out["beta"], tau[..., :, None] * L_omega, effects_at - p)
            effects_at += J * q
    return out


def _level1_draws(model: KernelModel, x: np.ndarray, at: int) -> dict[str, np.ndarray]:
    """σ [σ²]; per stratum σ_k [σ_k²] with σ the reference stratum's (or exp(α_0/2) and the log-linear α's);
    with AR(1) errors φ as well. As in the PyMC graph (:func:`~.build._level1_sd`, :func:`~.build._ar1_weights`)."""
    level1, variance = model.names["level1"], model.names["sigma_variance"]
    if level1["kind"] == "strata":
        strata = np.exp(x[..., at:at + level1["n_sigma"]])
        out = {"sigma_strata": strata} | ({"sigma2_strata": strata**2} if variance else {})
        if not level1["terms"]:
            return out | {"sigma": strata[..., 0]}
        alpha = 2.0 * np.log(strata) @ np.asarray(level1["solve"]).T
        return out | {"alpha": alpha, "sigma": np.exp(alpha[..., 0] / 2.0)}
    if not model.has_sigma:
        return {}
    out = {"sigma": np.exp(x[..., at])} | ({"sigma2": np.exp(2.0 * x[..., at])} if variance else {})
    return out | ({"phi": np.tanh(0.5 * x[..., -1])} if level1["kind"] == "ar1" else {})


def _sampled_effects(model: KernelModel, factor: dict, coords: np.ndarray, beta: np.ndarray, L: np.ndarray,
                     first: int) -> dict[str, np.ndarray]:
    """u and the sampled coordinates (b centred: u_j = b_j - γ_c; z non-centred: u_j = L z_j) of one factor."""
    name = factor["factor"]
    if not factor["centred"]:
        return {f"u_{name}": np.einsum("...ad,...jd->...ja", L, coords), f"z_{name}": coords}
    centre = model.data["centre"][first:first + coords.shape[-2] * coords.shape[-1]].astype(int)
    centre = centre.reshape(coords.shape[-2:])
    gamma = np.where(centre >= 0, beta[..., None, None, :].take(np.maximum(centre, 0).ravel(), axis=-1).reshape(
        *beta.shape[:-1], *centre.shape), 0.0)
    return {f"u_{name}": coords - gamma, f"coef_{name}": coords}


def constrained(model: KernelModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """The posterior variables at one unconstrained point ``x`` (see :func:`constrained_draws`)."""
    names = output_layout(model)[0]
    values = constrained_draws(model, np.asarray(x, dtype=float)[None])
    return {name: values[name][0] for name in names}


def output_layout(model: KernelModel) -> tuple[list[str], list[tuple], dict, dict]:
    """Names, shapes, dims and coords of the reported values (:func:`constrained_draws`), as in the PyMC graph."""
    layout = [("beta", (len(model.names["fixed"]),), ("fixed",))]
    coords = {"fixed": model.names["fixed"]}
    level1, variance = model.names["level1"], model.names["sigma_variance"]
    if level1["kind"] == "strata":
        coords["stratum"] = level1["labels"]
        layout += [(name, (len(level1["labels"]),), ("stratum",))
                   for name in ("sigma_strata", "sigma2_strata")[:1 + variance]]
        if level1["terms"]:
            coords["variance_term"] = level1["terms"]
            layout.append(("alpha", (len(level1["terms"]),), ("variance_term",)))
        layout.append(("sigma", (), ()))
    elif model.has_sigma:
        layout += [(name, (), ()) for name in ("sigma", "sigma2")[:1 + variance]]
        if level1["kind"] == "ar1":
            layout.append(("phi", (), ()))
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
