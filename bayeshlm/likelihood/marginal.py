"""REML / ML with structured level-1 errors, by the marginal covariance of each top-level group.

Heterogeneous level-1 variances and autocorrelated errors break the two tricks of the profiled engine
(sigma^2 multiplying the whole residual covariance, and per-group sufficient statistics), so these models
use the marginal form of the model (Pinheiro & Bates 2000, sec. 5.1; R&B 2002, eq. 14.65):

    y_j ~ N(X_j beta, sigma^2 V_j),   V_j = sum_f Z_fj Lambda_f Lambda_f' Z_fj' (within the groups of f) + R_j,
    R_j = W_j^{1/2} C_j(phi) W_j^{1/2},

for each group j of the outermost grouping factor. W_j holds the relative level-1 variances
w_i = sigma_i^2 / sigma^2: exp(2 delta_s) for stratum s of a ``varIdent`` model (delta_ref = 0; P&B 2000,
sec. 5.2.1) times exp(sum_m alpha_m C_mi) for the log-linear model ln sigma_i^2 = alpha_0 + sum_m alpha_m C_mi
(R&B 2002, eq. 5.36; sigma^2 = exp(alpha_0)). C_j(phi) is the identity, or phi^|t - t'| between rows of the
same innermost group (AR(1): P&B 2000, sec. 5.3.1; R&B 2002, eq. 6.31).

sigma^2 is profiled out as in the plain engine: with beta = (X'V^{-1}X)^{-1} X'V^{-1}y (GLS) and
r^2 = (y - X beta)'V^{-1}(y - X beta),

    ML:   -2 log L   = log|V| + n [1 + log(2 pi r^2 / n)]
    REML: -2 log L_R = log|V| + log|X'V^{-1}X| + (n - p) [1 + log(2 pi r^2 / (n - p))]

(nlme's REML criterion, like lme4's, omits log|X'X|). Groups are padded to a few common sizes and
factorised together (batched Cholesky), so no Python loop runs over groups. The criterion is minimised
over (theta, variance-function parameters, transformed phi) by L-BFGS-B with numerical gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import minimize

from ..design import Design
from ..errors import OptionError
from .params import Parameterization

LOG_2PI = float(np.log(2.0 * np.pi))
BUCKET_RATIO = 1.25  # groups whose sizes differ by at most this factor are padded to one size


@dataclass(frozen=True)
class Batch:
    """Groups padded to a common size s: ``rows[g, i]`` is the data row of position i of group g (-1: pad)."""

    rows: np.ndarray  # (G, s)
    valid: np.ndarray  # (G, s) bool
    X: np.ndarray  # (G, s, p), zero in pads
    y: np.ndarray  # (G, s)
    Z: tuple[np.ndarray, ...]  # per design factor (G, s, q_f), zero in pads
    same: tuple[np.ndarray | None, ...]  # per factor: (G, s, s) same-group mask (None for the outermost)
    codes: tuple[np.ndarray, ...]  # per factor: (G, s) group code of each row (-1 in pads)


def group_batches(block_codes: np.ndarray, n_blocks: int) -> list[np.ndarray]:
    """Row positions of each group, grouped into batches of similar size, as (G, s) arrays padded with -1."""
    order = np.argsort(block_codes, kind="stable")
    sizes = np.bincount(block_codes, minlength=n_blocks)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    by_size = np.argsort(sizes, kind="stable")
    buckets: list[list[int]] = []
    for block in by_size:
        if buckets and sizes[block] <= BUCKET_RATIO * sizes[buckets[-1][0]]:
            buckets[-1].append(block)
        else:
            buckets.append([block])
    out = []
    for blocks in buckets:
        s = int(sizes[blocks].max())
        rows = np.full((len(blocks), s), -1, dtype=np.int64)
        mask = np.arange(s) < sizes[blocks][:, None]
        rows[mask] = np.concatenate([order[starts[b]:starts[b] + sizes[b]] for b in blocks])
        out.append(rows)
    return out


def gather(values: np.ndarray, rows: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """values[rows] with ``fill`` where rows == -1 (pads)."""
    out = values[np.maximum(rows, 0)]
    pad = rows < 0
    if pad.any():
        out = out.copy()
        out[pad] = fill
    return out


class StructuredDeviance:
    """(theta, variance parameters, transformed phi) -> REML criterion or ML deviance of ``design``."""

    def __init__(self, design: Design, method: str):
        chain = design.chain
        if not chain:
            raise OptionError("Level-1 error structures (level1_variance, correlation) need nested grouping factors "
                              "(one chain, e.g. occasions in children in schools); this model's factors are crossed.")
        self.design = design
        self.reml = method == "reml"
        self.params = Parameterization(design)
        self.residual = design.residual
        self.evaluations = 0
        top = chain[-1]
        self.batches = [self._batch(rows, top.name) for rows in group_batches(top.codes, top.n_groups)]
        r = self.residual
        self.n_strata = 0 if r.strata is None else len(r.strata_levels) - 1
        self.n_alpha = 0 if r.C is None else r.C.shape[1]
        self.has_phi = r.structure.correlation is not None
        self.size = self.params.size + self.n_strata + self.n_alpha + self.has_phi
        if r.time is not None:
            unit = design.factor(r.unit)
            self._lags = [np.abs(gather(r.time, b.rows)[:, :, None] - gather(r.time, b.rows)[:, None, :])
                          for b in self.batches]
            if r.structure.correlation == "ar1":  # whole steps (t / k may round): phi < 0 needs integer powers
                self._lags = [np.rint(lag) for lag in self._lags]
            self._same_unit = [self._same_mask(gather(unit.codes, b.rows, -1), b.valid, pads_on_diagonal=True)
                               for b in self.batches]

    def _batch(self, rows: np.ndarray, top: str) -> Batch:
        d = self.design
        valid = rows >= 0
        codes = tuple(gather(f.codes, rows, -1) for f in d.factors)
        same = tuple(None if f.name == top else self._same_mask(c, valid) for f, c in zip(d.factors, codes))
        return Batch(rows=rows, valid=valid, X=gather(d.X, rows), y=gather(d.y, rows),
                     Z=tuple(gather(f.Z, rows) for f in d.factors), same=same, codes=codes)

    @staticmethod
    def _same_mask(codes: np.ndarray, valid: np.ndarray, pads_on_diagonal: bool = False) -> np.ndarray:
        same = (codes[:, :, None] == codes[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        if pads_on_diagonal:
            idx = np.arange(codes.shape[1])
            same[:, idx, idx] = True
        return same

    # --- parameters ------------------------------------------------------------------------------
    def extra_names(self) -> list[str]:
        r = self.residual
        names = []
        if self.n_strata:
            names += [f"log sd ratio {r.strata_levels.name}={level}" for level in r.strata_levels[1:]]
        names += [f"alpha {name}" for name in r.C_names]
        if self.has_phi:
            names.append("atanh phi" if r.structure.correlation == "ar1" else "logit phi")
        return names

    def unpack(self, x: np.ndarray):
        """Lambda per factor, log SD ratios delta (reference first, = 0), alphas, phi."""
        k = self.params.size
        delta = np.concatenate([[0.0], x[k:k + self.n_strata]])
        alpha = x[k + self.n_strata:k + self.n_strata + self.n_alpha]
        phi = None
        if self.has_phi:
            z = x[-1]
            phi = np.tanh(z) if self.residual.structure.correlation == "ar1" else 1.0 / (1.0 + np.exp(-z))
        return self.params.lambdas(x), delta, alpha, phi

    def relative_variances(self, delta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """w_i = sigma_i^2 / sigma^2 for every row."""
        r = self.residual
        log_w = np.zeros(self.design.n_obs)
        if r.strata is not None:
            log_w += 2.0 * delta[r.strata]
        if r.C is not None:
            log_w += r.C @ alpha
        return np.exp(log_w)

    @property
    def start(self) -> np.ndarray:
        return np.concatenate([self.params.start, np.zeros(self.size - self.params.size)])

    # --- criterion -------------------------------------------------------------------------------
    def covariances(self, x: np.ndarray) -> list[np.ndarray]:
        """V_j / sigma^2 per batch, (G, s, s), with the identity in pad rows."""
        lambdas, delta, alpha, phi = self.unpack(x)
        w = self.relative_variances(delta, alpha)
        out = []
        for k, b in enumerate(self.batches):
            wb = gather(w, b.rows, 1.0)
            if phi is None:
                V = np.zeros(b.rows.shape + (b.rows.shape[1],))
                idx = np.arange(b.rows.shape[1])
                V[:, idx, idx] = wb
            else:
                sqrt_w = np.sqrt(wb)
                V = np.where(self._same_unit[k], phi ** self._lags[k], 0.0) * sqrt_w[:, :, None] * sqrt_w[:, None, :]
            for Z, same, lam in zip(b.Z, b.same, lambdas):
                ZL = Z @ lam
                block = ZL @ ZL.swapaxes(1, 2)
                V += block if same is None else block * same
            out.append(V)
        return out

    def factorize(self, x: np.ndarray) -> MarginalFactorization:
        return MarginalFactorization(self.batches, self.covariances(x), self.design.n_fixed)

    def criterion(self, fac: MarginalFactorization) -> float:
        return profiled_criterion(fac, self.design.n_obs, self.reml)

    def __call__(self, x: np.ndarray) -> float:
        self.evaluations += 1
        try:
            return float(self.criterion(self.factorize(x)))
        except np.linalg.LinAlgError:
            return np.inf


def profiled_criterion(fac: MarginalFactorization, n: int, reml: bool) -> float:
    """-2 log L (ML) or -2 log L_R (REML) with sigma^2 profiled out (module docstring)."""
    p = len(fac.beta)
    if fac.r2 <= 0 or not np.isfinite(fac.logdet_z):
        return np.inf
    if reml:
        return fac.logdet_z + fac.logdet_x + (n - p) * (1.0 + LOG_2PI + np.log(fac.r2 / (n - p)))
    return fac.logdet_z + n * (1.0 + LOG_2PI + np.log(fac.r2 / n))


class MarginalFactorization:
    """Batched Cholesky factors of V_j and the GLS quantities of one parameter value."""

    def __init__(self, batches: list[Batch], covariances: list[np.ndarray], p: int):
        self.batches = batches
        self.chol = [np.linalg.cholesky(V) for V in covariances]
        self.logdet_z = float(sum(2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum() for L in self.chol))
        cross = np.zeros((p + 1, p + 1))
        for b, L in zip(batches, self.chol):
            W = solve_triangular(L, np.concatenate([b.X, b.y[:, :, None]], axis=2), lower=True)
            cross += np.einsum("gsa,gsb->ab", W, W)
        self._A = cross[:p, :p]
        chol_a = np.linalg.cholesky(self._A)
        self.beta = np.linalg.solve(self._A, cross[:p, p])
        self.r2 = float(cross[p, p] - cross[:p, p] @ self.beta)
        self.logdet_x = float(2.0 * np.log(np.diag(chol_a)).sum())

    def fixed_cov_relative(self) -> np.ndarray:
        """(X'V^{-1}X)^{-1}, to be multiplied by sigma^2."""
        return np.linalg.inv(self._A)

    def _solve(self, L: np.ndarray, B: np.ndarray) -> np.ndarray:
        return solve_triangular(L.swapaxes(1, 2), solve_triangular(L, B, lower=True), lower=False)

    def precision_residuals(self, n: int) -> np.ndarray:
        """V^{-1}(y - X beta) per data row (relative to sigma^2)."""
        out = np.zeros(n)
        for b, L in zip(self.batches, self.chol):
            e = (b.y - b.X @ self.beta)[:, :, None]
            out[b.rows[b.valid]] = self._solve(L, e)[:, :, 0][b.valid]
        return out

    def projected_information(self, factor: int, n_groups: int) -> np.ndarray:
        """sum over row pairs (i, k) of one group of ``factor``: Z_i (V^{-1})_ik Z_k', per group, (J, q, q)."""
        q = self.batches[0].Z[factor].shape[2]
        out = np.zeros((n_groups, q, q))
        for b, L in zip(self.batches, self.chol):
            s = b.rows.shape[1]
            Vinv = self._solve(L, np.broadcast_to(np.eye(s), L.shape))
            same = b.same[factor]
            H = (Vinv if same is None else Vinv * same) @ b.Z[factor]
            outer = b.Z[factor][:, :, :, None] * H[:, :, None, :]
            codes = b.codes[factor][b.valid]
            np.add.at(out, codes, outer[b.valid])
        return out


PHI_STUCK = 1e-3  # a transformed phi* that moved less than this from its start is checked from a second start


def _optimise(objective: StructuredDeviance, start: np.ndarray, maxiter: int):
    """L-BFGS-B with 3-point numerical gradients, then a second pass from the end point, which sharpens the
    quasi-Newton estimate."""
    result = minimize(objective, start, method="L-BFGS-B", jac="3-point",
                      options={"ftol": 1e-14, "gtol": 1e-7, "maxiter": maxiter, "maxls": 50})
    again = minimize(objective, result.x, method="L-BFGS-B", jac="3-point",
                     options={"ftol": 1e-15, "gtol": 1e-8, "maxiter": maxiter, "maxls": 50})
    return again if again.fun <= result.fun else result


def _largest_slope(objective: StructuredDeviance, x: np.ndarray, value: float, step: float = 1e-5) -> float:
    """max_k |d criterion / d x_k| at ``x`` by central differences (0 at an interior minimum)."""
    if not np.isfinite(value):
        return np.inf
    slopes = []
    for k in range(len(x)):
        e = np.zeros_like(x)
        e[k] = step
        slopes.append((objective(x + e) - objective(x - e)) / (2.0 * step))
    slopes = np.abs(np.array(slopes))
    return float(np.max(slopes)) if np.all(np.isfinite(slopes)) else np.inf


def fit_structured(standard: Design, method: str, *, start=None, maxiter: int = 1000, scaling, design: Design):
    """Fit a model with a level-1 error structure (see the module docstring) on the standardised design
    ``standard`` (:mod:`bayeshlm.design.scaling`); returns a StructuredFit of the user's ``design``.
    ``start`` is on the user's scale."""
    from .fit import GRADIENT_TOL, ProfiledDeviance, _minimize, end_point_message
    from .result import StructuredFit, theta_to_standard

    objective = StructuredDeviance(standard, method)
    if start is None:
        plain = ProfiledDeviance(standard, method)
        theta = _minimize(plain, plain.params.start, maxiter).x
        start = np.concatenate([theta, objective.start[objective.params.size:]])
    else:
        start = np.asarray(start, dtype=float)
        if start.shape != (objective.size,):
            names = objective.params.names() + objective.extra_names()
            raise OptionError(f"start must hold {objective.size} values ({', '.join(names)}); "
                              f"got shape {start.shape}.")
        start = theta_to_standard(objective, scaling, start)
    result = _optimise(objective, start, maxiter)
    if objective.has_phi and abs(result.x[-1] - start[-1]) < PHI_STUCK:
        # phi* did not move from its start: that may be a stationary point of phi^|t - t'| rather than a
        # minimum, so start again on the other side of it and keep the better end point
        other = result.x.copy()
        other[-1] = start[-1] - 1.0 if result.x[-1] >= start[-1] else start[-1] + 1.0
        second = _optimise(objective, other, maxiter)
        if second.fun < result.fun:
            result = second
    converged = bool(result.success) or result.status == 2
    message = str(result.message)
    slope = _largest_slope(objective, result.x, result.fun)
    if converged and not slope <= GRADIENT_TOL:
        converged, message = False, end_point_message(slope)
    return StructuredFit(objective, objective.params.canonical(result.x), converged=converged,
                         optimizer_message=message, n_evaluations=objective.evaluations,
                         scaling=scaling, design=design)
